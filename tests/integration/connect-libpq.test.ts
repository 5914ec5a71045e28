/**
 * Topology: one real server (TCP on 127.0.0.1 and a Unix socket in its folder).
 * Scenario: connecting like psql would, with libpq's conventions: key=value strings, a Unix socket by its folder,
 * ?host= and ?port= in a URL, the PG* variables, a password file (PGPASSFILE, and ~/.pgpass through HOME; ignored when
 * others can read it), a service file (service=, ?service=, PGSERVICE), and unknown keywords refused before anything
 * is sent; then `pgmesh check` from the command line with a key=value string and a .pgpass password.
 * Without the code under test: key=value strings were refused, PG* variables, password and service files ignored,
 * ?host=/?port=/?service= silently dropped (a URL went to localhost:5432), and unknown keywords such as search_path
 * were sent to the server as settings.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { silentLogger } from '../../src/core/logger.ts';
import { PgmeshError } from '../../src/core/errors.ts';
import { connectionError, openSql } from '../../src/pg/connect.ts';
import type { Env } from '../../src/pg/dsn.ts';
import { assertNoSecret, pgmesh } from '../support/cli.ts';
import { withServer } from '../support/cluster.ts';

/** Where the session comes from: a socket has no client address. */
async function probe(dsn: string, env: Env): Promise<{ user: string; db: string; socket: boolean }> {
  const sql = openSql(dsn, { node: 'n1', applicationName: 'pgmesh test', logger: silentLogger, env, connectTimeoutS: 10 });
  try {
    const rows = await sql.unsafe<{ user: string; db: string; socket: boolean }[]>(
      'SELECT current_user AS "user", pg_catalog.current_database() AS db, pg_catalog.inet_client_addr() IS NULL AS socket',
    );
    const row = rows[0];
    assert.ok(row);
    return { ...row };
  } catch (error) {
    throw connectionError(error, 'n1', dsn);
  } finally {
    await sql.end({ timeout: 1 }).catch(() => undefined);
  }
}

async function rejection(work: () => Promise<unknown>): Promise<PgmeshError> {
  try {
    await work();
  } catch (error) {
    assert.ok(error instanceof PgmeshError, `not a PgmeshError: ${String(error)}`);
    return error;
  }
  assert.fail('connected, and should not have');
}

test('libpq conventions: key=value, sockets, ?host=/?port=, PG* variables, password and service files, unknown keywords', { timeout: 120_000 }, async () => {
  const home = mkdtempSync(join(tmpdir(), 'pgmesh-libpq-'));
  try {
    await withServer('libpq', async (server, sql) => {
      await sql`CREATE DATABASE app`;
      const env: Env = { HOME: home };
      const tcp = { user: 'postgres', db: 'app', socket: false };
      const pw = server.password;
      const socketDir = dirname(server.dataDir);

      // key=value, quoted values included.
      assert.deepEqual(await probe(`host=127.0.0.1 port=${server.port} user=postgres dbname='app' password='${pw}'`, env), tcp);
      // A Unix socket by its folder, in both forms.
      assert.deepEqual(await probe(`host=${socketDir} port=${server.port} user=postgres dbname=app password=${pw}`, env), { ...tcp, socket: true });
      assert.deepEqual(await probe(`postgres://postgres:${pw}@${encodeURIComponent(socketDir)}:${server.port}/app`, env), { ...tcp, socket: true });
      assert.deepEqual(await probe(`postgresql:///app?host=${encodeURIComponent(socketDir)}&port=${server.port}&user=postgres&password=${pw}`, env), { ...tcp, socket: true });
      // ?host= and ?port= win over the URL's host and port, as in libpq.
      assert.deepEqual(await probe(`postgres://postgres:${pw}@db.invalid:1/app?host=127.0.0.1&port=${server.port}`, env), tcp);

      // The PG* variables: an empty string takes everything from them.
      const pgEnv = { ...env, PGHOST: '127.0.0.1', PGPORT: String(server.port), PGUSER: 'postgres', PGPASSWORD: pw, PGDATABASE: 'app' };
      assert.deepEqual(await probe('', pgEnv), tcp);
      assert.deepEqual(await probe('dbname=postgres', pgEnv), { ...tcp, db: 'postgres' });
      assert.deepEqual(await probe('', { ...pgEnv, PGHOST: socketDir }), { ...tcp, socket: true });

      // A password file: PGPASSFILE, then ~/.pgpass; ignored (and the login fails) when others may read it.
      const noPassword = `host=127.0.0.1 port=${server.port} user=postgres dbname=app`;
      const passfile = join(home, 'passwords');
      writeFileSync(passfile, `# host:port:database:user:password\n127.0.0.1:${server.port}:*:postgres:${pw}\n`, { mode: 0o600 });
      assert.deepEqual(await probe(noPassword, { ...env, PGPASSFILE: passfile }), tcp);
      assert.deepEqual(await probe(`${noPassword} passfile=${passfile}`, env), tcp);
      writeFileSync(join(home, '.pgpass'), `*:*:app:postgres:${pw}\n`, { mode: 0o600 });
      assert.deepEqual(await probe(noPassword, env), tcp);
      assert.deepEqual(await probe(`host=${socketDir} port=${server.port} user=postgres dbname=app`, env), { ...tcp, socket: true });
      chmodSync(join(home, '.pgpass'), 0o644);
      const open = await rejection(() => probe(noPassword, env));
      assert.equal(open.code, 'AUTH_FAILED');
      assertNoSecret(open.message, [pw], 'the login error');

      // A service file: service=, ?service=, PGSERVICE; the string wins over the service.
      const services = join(home, 'services.conf');
      writeFileSync(services, `# test services\n[n1]\nhost=127.0.0.1\nport=${server.port}\nuser=postgres\npassword=${pw}\ndbname=app\n\n[other]\nhost=db.invalid\n`);
      const serviceEnv = { ...env, PGSERVICEFILE: services };
      assert.deepEqual(await probe('service=n1', serviceEnv), tcp);
      assert.deepEqual(await probe('postgres:///?service=n1', serviceEnv), tcp);
      assert.deepEqual(await probe('', { ...serviceEnv, PGSERVICE: 'n1' }), tcp);
      assert.deepEqual(await probe('service=n1 dbname=postgres', serviceEnv), { ...tcp, db: 'postgres' });
      writeFileSync(join(home, '.pg_service.conf'), `[n1]\nhost=127.0.0.1\nport=${server.port}\nuser=postgres\npassword=${pw}\n`);
      assert.deepEqual(await probe('service=n1', env), { ...tcp, db: 'postgres' });
      const missing = await rejection(() => probe('service=nope', serviceEnv));
      assert.match(missing.message, /names service nope, which is not defined in .*services\.conf/);

      // Unknown keywords are refused before anything is sent (before: sent to the server as settings).
      for (const [dsn, expected] of [
        [`postgres://postgres:${pw}@127.0.0.1:${server.port}/app?search_path=evil`, /unknown keyword "search_path"/],
        [`host=127.0.0.1 port=${server.port} user=postgres password=${pw} sslrootcrt=/ca.pem`, /unknown keyword "sslrootcrt"/],
        [`host=127.0.0.1 port=${server.port} user=postgres password=${pw} require_auth=scram-sha-256`, /sets require_auth: pgmesh does not support require_auth/],
      ] as const) {
        const refused = await rejection(() => probe(dsn, env));
        assert.equal(refused.code, 'CONFIG_INVALID');
        assert.match(refused.message, expected);
        assertNoSecret(refused.message, [pw], 'the refusal');
      }
    });
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test('pgmesh check with a key=value connection string and its password in a .pgpass file', { timeout: 120_000 }, async () => {
  const home = mkdtempSync(join(tmpdir(), 'pgmesh-libpq-cli-'));
  try {
    await withServer('libpqcli', async (server) => {
      writeFileSync(join(home, '.pgpass'), `127.0.0.1:${server.port}:postgres:postgres:${server.password}\n`, { mode: 0o600 });
      const config = join(home, 'cluster.json');
      writeFileSync(config, JSON.stringify({ nodes: [{ name: 'n1', dsn: `host=127.0.0.1 port=${server.port} user=postgres dbname=postgres` }] }));
      const check = await pgmesh(['check'], { config, env: { HOME: home } });
      assert.match(check.stdout, /^n1: ok/m, check.output);
      assertNoSecret(check.output, [server.password], 'pgmesh check');
    });
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});
