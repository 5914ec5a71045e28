/**
 * Connection strings carry passwords. Whatever pgmesh prints about a connection (endpoints, redacted strings,
 * driver errors, "this is not a valid connection string") must never contain the password, including for strings
 * that do not parse.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { defaultSocketDirectory, describeEndpoint, dsnPassword, dsnProblem, dsnTarget, redactDsn, resolveConnection, scrubSecrets, withoutPassword } from '../../src/pg/dsn.ts';

/** No PG* variable of the machine running the tests. */
const NO_ENV = { HOME: '/nonexistent' };

const SECRET = 'S3cr3t-pw';

test('redactDsn hides the password of a URL, in the user information and in the query', () => {
  assert.equal(redactDsn(`postgres://app:${SECRET}@db1.example:5432/app`), 'postgres://app:*****@db1.example:5432/app');
  assert.equal(
    redactDsn(`postgresql://app:p%40ss@db1:5432/app?sslmode=require&password=${SECRET}`),
    'postgresql://app:*****@db1:5432/app?sslmode=require&password=*****',
  );
  assert.equal(redactDsn('postgres://app@db1/app'), 'postgres://app@db1/app');
});

test('redactDsn hides the password of a key=value string, quoted or not', () => {
  assert.equal(redactDsn(`host=db1 password=${SECRET} dbname=app`), 'host=db1 password=***** dbname=app');
  assert.equal(redactDsn(`host=db1 password = 'with \\' quote and space' user=x`), 'host=db1 password = ***** user=x');
  assert.equal(redactDsn('host=db1 user=app'), 'host=db1 user=app');
});

test('redactDsn hides the password of a URL that does not parse', () => {
  for (const dsn of [
    `postgres://app:${SECRET}@db1:notaport/app`,
    `postgres://app:${SECRET}@h1:5432,h2:5433/app`,
    `postgres://app:${SECRET}@/app?host=/tmp`,
    `postgres://app@db1:x/app?password=${SECRET}`,
  ]) {
    const out = redactDsn(dsn);
    assert.ok(!out.includes(SECRET), `${out} shows the password`);
    assert.match(out, /\*\*\*\*\*/);
  }
});

test('describeEndpoint names host, port and database, never the user information', () => {
  assert.equal(describeEndpoint(`postgres://app:${SECRET}@db1.example:6432/sales`, NO_ENV), 'db1.example:6432/sales');
  // libpq's default database is the user's name.
  assert.equal(describeEndpoint('postgres://app@db1', NO_ENV), 'db1:5432/app');
  assert.equal(describeEndpoint(`postgresql://u:${SECRET}@[::1]:6543/db`, NO_ENV), '[::1]:6543/db');
  // Several hosts are refused (a node is one server): shown as given, marked invalid.
  assert.equal(describeEndpoint(`postgres://u:${SECRET}@h1:5432,h2:5433/db`, NO_ENV), 'h1:5432,h2:5433 (invalid connection string)');
  assert.equal(describeEndpoint(`host=db2 port=5433 dbname=app password=${SECRET}`, NO_ENV), 'db2:5433/app');
  // No host: the Unix socket, as libpq.
  assert.equal(describeEndpoint('user=app', NO_ENV), `${defaultSocketDirectory(5432)}:5432/app`);
  const broken = describeEndpoint(`postgres://u:${SECRET}@db1:notaport/app`, NO_ENV);
  assert.equal(broken, 'db1:notaport (invalid connection string)');
});

test('dsnPassword finds the password wherever a connection string keeps it', () => {
  assert.equal(dsnPassword(`postgres://app:${SECRET}@db1/app`), SECRET);
  assert.equal(dsnPassword('postgres://app:p%40ss%2Fw@db1/app'), 'p@ss/w');
  assert.equal(dsnPassword(`postgres://app:${SECRET}@db1:notaport/app`), SECRET);
  assert.equal(dsnPassword(`postgres://app@db1/app?password=${SECRET}`), SECRET);
  assert.equal(dsnPassword(`host=db1 password=${SECRET}`), SECRET);
  assert.equal(dsnPassword(`host=db1 password='a \\'b' user=x`), "a 'b");
  assert.equal(dsnPassword('postgres://app@db1/app'), undefined);
  assert.equal(dsnPassword('host=db1'), undefined);
});

test('dsnProblem accepts what pgmesh can use and explains the rest without repeating the string', () => {
  for (const ok of [
    'postgres://app@db1:5432/app',
    `postgresql://app:${encodeURIComponent('p@ss:/?#% w')}@db1/app?sslmode=require`,
    'postgres://db1',
    'postgres://app@[::1]:5432/app',
    `postgres://app@db1/app?password=${SECRET}&sslmode=verify-full&sslrootcert=/etc/ca.pem`,
    `host=db1 port=5432 dbname=app user=app password='${SECRET} x'`,
    'postgres:///app?host=/var/run/postgresql&port=5433',
  ]) {
    assert.equal(dsnProblem(ok, NO_ENV), undefined, ok);
  }
  const cases: [string, RegExp][] = [
    [`db1.example:5432`, /not a connection string.*key=value.*postgres:\/\//],
    [`postgres://app:${SECRET}@db1:notaport/app`, /not a valid URL; percent-encode.*port is a number/],
    [`postgres://app:pa/${SECRET}@db1/app`, /not a valid URL/],
    [`postgres://app:${SECRET}@h1:5432,h2:5433/app`, /^names several hosts \(a list with ","\); a node is one server: give one host:port$/],
    [`host=h1,h2 password=${SECRET}`, /^names several servers in host/],
    [`postgres://app:${SECRET}%ZZ@db1/app`, /^has a % in its password that is not followed by two hexadecimal digits; write a % itself as %25$/],
    [`postgres://app:${SECRET}@db1/app?sslmode=bogus`, /^has sslmode=bogus, which pgmesh does not support; use one of disable, allow, prefer, require, verify-ca, verify-full$/],
    [`postgres://app:${SECRET}@db1/app?password=${SECRET}`, /^gives a password twice/],
    // Run-time settings are not connection keywords: libpq refuses them, and so does pgmesh (the driver sent them).
    [`postgres://app:${SECRET}@db1/app?DateStyle=German`, /^has the unknown keyword "DateStyle"; libpq's keywords that pgmesh honours are host, /],
    [`host=db1 password=${SECRET} bogus=1`, /^has the unknown keyword "bogus"/],
    [`postgres://app@db1/app?sslcrl=/etc/crl.pem`, /^sets sslcrl: pgmesh does not support certificate revocation lists/],
    [`postgres://app@db1/app?password=${SECRET}%ZZ`, /^has a % in its query \(\?password=\) that is not followed by two hexadecimal digits/],
    [`host=db1 password='${SECRET}`, /^has an unterminated quoted value for password/],
    [`host=db1 ${SECRET}`, /without "=" after it/],
    [`host=db1 port=99999`, /^has port 99999/],
  ];
  for (const [dsn, expected] of cases) {
    const problem = dsnProblem(dsn, NO_ENV);
    assert.match(problem ?? '(accepted)', expected, dsn);
    assert.ok(!problem?.includes(SECRET), problem);
  }
});

test('dsnTarget: the host as written (an IPv6 address without brackets), the port, or a Unix socket', () => {
  const target = (dsn: string) => dsnTarget(resolveConnection(dsn, NO_ENV));
  assert.deepEqual(target('postgres://app@[::1]:6543/app'), { host: '::1', port: 6543 });
  assert.deepEqual(target('postgres://app@db1/app'), { host: 'db1', port: 5432 });
  assert.deepEqual(target('postgres://app@%2Fvar%2Frun%2Fpostgresql:5433/app'), {
    host: '/var/run/postgresql',
    port: 5433,
    path: '/var/run/postgresql/.s.PGSQL.5433',
  });
  assert.deepEqual(target('host=/srv/pg port=5434 dbname=app'), { host: '/srv/pg', port: 5434, path: '/srv/pg/.s.PGSQL.5434' });
  assert.deepEqual(target('postgres://app@db1/app?host=db2&port=6000'), { host: 'db2', port: 6000 });
  assert.deepEqual(target('host=db1.example hostaddr=10.0.0.5'), { host: '10.0.0.5', port: 5432 });
});

test('libpq\'s precedence: the string, then the environment, then the defaults; passwords decoded as libpq does', () => {
  const env = { HOME: '/nonexistent', PGHOST: 'envhost', PGPORT: '6001', PGUSER: 'envuser', PGDATABASE: 'envdb', PGPASSWORD: 'envpw', PGSSLMODE: 'require', PGCONNECT_TIMEOUT: '7' };
  const fromEnv = resolveConnection('', env);
  assert.deepEqual(
    [fromEnv.host, fromEnv.port, fromEnv.user, fromEnv.dbname, fromEnv.password, fromEnv.sslmode, fromEnv.connectTimeoutS],
    ['envhost', 6001, 'envuser', 'envdb', 'envpw', 'require', 7],
  );
  const given = resolveConnection('postgres://app:p%2Bw@db1:5432/app?sslmode=disable', env);
  assert.deepEqual([given.host, given.port, given.user, given.dbname, given.password, given.sslmode], ['db1', 5432, 'app', 'app', 'p+w', 'disable']);
  // As libpq reads a query: percent-escapes only, a "+" is a "+".
  assert.equal(resolveConnection('postgres://app@db1/app?password=a+b%26c', NO_ENV).password, 'a+b&c');
  assert.equal(resolveConnection("host=db1 password='a \\'b c'", NO_ENV).password, "a 'b c");
  assert.equal(resolveConnection('host=db1', NO_ENV).sslmode, 'prefer');
  assert.match(dsnProblem('host=db1', { ...NO_ENV, PGSSLMODE: 'bogus' }) ?? '', /sslmode=bogus/);
  assert.match(dsnProblem('host=db1', { ...NO_ENV, PGREQUIREAUTH: 'scram-sha-256' }) ?? '', /PGREQUIREAUTH set in the environment.*unset it/);
});

test('withoutPassword keeps everything but the password, in both forms', () => {
  assert.equal(withoutPassword(`postgres://app:${SECRET}@db1:5432/app?sslmode=require`), 'postgres://app@db1:5432/app?sslmode=require');
  assert.equal(withoutPassword(`postgres://app@db1/app?password=${SECRET}&sslmode=require`), 'postgres://app@db1/app?sslmode=require');
  assert.equal(withoutPassword(`postgres://:${SECRET}@db1/app`), 'postgres://db1/app');
  assert.equal(withoutPassword(`host=db1 password='${SECRET} x' dbname='my db'`), "host=db1 dbname='my db'");
});

test('scrubSecrets removes given secrets and passwords inside URLs', () => {
  assert.equal(scrubSecrets(`failed for ${SECRET} twice: ${SECRET}`, [SECRET]), 'failed for ***** twice: *****');
  // Too short to hide without mangling the message.
  assert.equal(scrubSecrets('a b', ['a']), 'a b');
  assert.equal(scrubSecrets(`connect to postgres://app:${SECRET}@db1/app failed`, []), 'connect to postgres://app:*****@db1/app failed');
  // A password with an unencoded "@" must not leave its tail behind.
  assert.ok(!scrubSecrets(`postgres://app:se@cret-tail@db1/app`, []).includes('cret-tail'));
});

test('property: a URL password never survives redactDsn or describeEndpoint', () => {
  fc.assert(
    fc.property(fc.string({ minLength: 6, maxLength: 30, unit: 'grapheme' }), fc.constantFrom('db1', 'h1:5432,h2:5433', '[::1]:5'), (password, host) => {
      const encoded = encodeURIComponent(password);
      // What may legitimately be printed; a password that is a piece of it proves nothing.
      const visible = `postgres://app:*****@${host}/app ${host}:5432/app`;
      fc.pre(!visible.includes(password) && !visible.includes(encoded));
      const dsn = `postgres://app:${encoded}@${host}/app`;
      for (const out of [redactDsn(dsn), describeEndpoint(dsn, NO_ENV), withoutPassword(dsn)]) {
        assert.ok(!out.includes(encoded) && !out.includes(password), `${out} shows ${password}`);
      }
      assert.equal(dsnPassword(dsn), password);
    }),
    { numRuns: 300 },
  );
});
