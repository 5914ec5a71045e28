/**
 * Connection strings carry passwords. Whatever pgmesh prints about a connection (endpoints, redacted strings,
 * driver errors, "this is not a valid connection string") must never contain the password, including for strings
 * that do not parse.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { describeEndpoint, dsnPassword, dsnProblem, dsnTarget, redactDsn, scrubSecrets, splitQueryPassword } from '../../src/pg/dsn.ts';

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
  assert.equal(describeEndpoint(`postgres://app:${SECRET}@db1.example:6432/sales`), 'db1.example:6432/sales');
  assert.equal(describeEndpoint('postgres://db1'), 'db1:5432/postgres');
  assert.equal(describeEndpoint(`postgresql://u:${SECRET}@[::1]:6543/db`), '[::1]:6543/db');
  // postgres.js accepts several hosts; show them all.
  assert.equal(describeEndpoint(`postgres://u:${SECRET}@h1:5432,h2:5433/db`), 'h1:5432,h2:5433/db');
  assert.equal(describeEndpoint(`host=db2 port=5433 dbname=app password=${SECRET}`), 'db2:5433/app');
  assert.equal(describeEndpoint('user=app'), 'localhost:5432/postgres');
  const broken = describeEndpoint(`postgres://u:${SECRET}@db1:notaport/app`);
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
    `postgres://app@db1/app?password=${SECRET}&sslmode=verify-full`,
  ]) {
    assert.equal(dsnProblem(ok), undefined, ok);
  }
  const cases: [string, RegExp][] = [
    [`host=db1 password=${SECRET}`, /key=value form.*postgres:\/\/user:password@host:port\/dbname/],
    [`db1.example:5432`, /not a connection string.*postgres:\/\//],
    [`postgres://app:${SECRET}@db1:notaport/app`, /not a valid URL; percent-encode.*port is a number/],
    [`postgres://app:pa/${SECRET}@db1/app`, /not a valid URL/],
    [`postgres://app:${SECRET}@h1:5432,h2:5433/app`, /^names several hosts \(a list with ","\); a node is one server: give one host:port$/],
    [`postgres://app:${SECRET}%ZZ@db1/app`, /^has a % in its password that is not followed by two hexadecimal digits; write a % itself as %25$/],
    [`postgres://app:${SECRET}@db1/app?sslmode=bogus`, /^has sslmode=bogus, which is not an sslmode; use one of disable, allow, prefer, require, verify-ca, verify-full$/],
    [`postgres://app:${SECRET}@db1/app?password=${SECRET}`, /^gives a password twice/],
    [`postgres://app:${SECRET}@db1/app?DateStyle=German`, /^sets DateStyle in its query, which pgmesh sets itself/],
    [`postgres://app@db1/app?password=${SECRET}%ZZ`, /^has a % in its query \(\?password=\) that is not followed by two hexadecimal digits/],
  ];
  for (const [dsn, expected] of cases) {
    const problem = dsnProblem(dsn);
    assert.match(problem ?? '(accepted)', expected, dsn);
    assert.ok(!problem?.includes(SECRET), problem);
  }
});

test('dsnTarget: the host as written (an IPv6 address without brackets), the port, or a Unix socket', () => {
  assert.deepEqual(dsnTarget('postgres://app@[::1]:6543/app'), { host: '::1', port: 6543 });
  assert.deepEqual(dsnTarget('postgres://app@db1/app'), { host: 'db1', port: 5432 });
  assert.deepEqual(dsnTarget('postgres://app@%2Fvar%2Frun%2Fpostgresql:5433/app'), {
    host: '/var/run/postgresql',
    port: 5433,
    path: '/var/run/postgresql/.s.PGSQL.5433',
  });
});

test('a password given as ?password= is taken out of the URL the driver sees (which would send it as a setting)', () => {
  assert.deepEqual(splitQueryPassword(`postgres://app@db1/app?sslmode=require&password=${encodeURIComponent('a&b c')}`), {
    dsn: 'postgres://app@db1/app?sslmode=require',
    password: 'a&b c',
  });
  assert.deepEqual(splitQueryPassword('postgres://app@db1/app'), { dsn: 'postgres://app@db1/app', password: undefined });
  // As libpq reads it: percent-escapes only, a "+" is a "+".
  assert.deepEqual(splitQueryPassword('postgres://app@db1/app?password=a+b&application_name=x'), { dsn: 'postgres://app@db1/app?application_name=x', password: 'a+b' });
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
      for (const out of [redactDsn(dsn), describeEndpoint(dsn)]) {
        assert.ok(!out.includes(encoded) && !out.includes(password), `${out} shows ${password}`);
      }
      assert.equal(dsnPassword(dsn), password);
    }),
    { numRuns: 300 },
  );
});
