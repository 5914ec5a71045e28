/**
 * Topology: one real server, first without TLS, then with TLS (a CA, a server certificate for "localhost" and
 * 127.0.0.1, and a client certificate, all generated here with openssl); roles that log in with a password sent in
 * clear (pg_hba "password") and with a client certificate (pg_hba "cert"); and a fake server that asks for a
 * password in clear, as an attacker on the path would.
 * Scenarios: sslmode as libpq means it. Default prefer: TLS when the server offers it, plain otherwise; require
 * refused by a server without TLS; verify-full accepted with the right CA and refused with another CA or a name the
 * certificate does not carry, where verify-ca (chain only) connects; a client certificate logs in; a password is not
 * sent in clear on a connection without TLS unless PGMESH_ALLOW_CLEARTEXT_PASSWORD=1, and the fake server receives
 * no byte of it.
 * Without the code under test: every connection was plain text (postgres.js's default) even to a server offering TLS;
 * sslrootcert, sslcert and sslkey were sent to the server as settings ("unrecognized configuration parameter");
 * require against a server without TLS failed obscurely; and the driver answered any request for the password in
 * clear, so the fake server read it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/core/logger.ts';
import { PgmeshError } from '../../src/core/errors.ts';
import { serverUser } from '../../src/embedded/server-user.ts';
import type { EmbeddedServer } from '../../src/embedded/embedded-server.ts';
import { connectionError, openSql } from '../../src/pg/connect.ts';
import type { Env } from '../../src/pg/dsn.ts';
import { withServer, type Sql } from '../support/cluster.ts';

const OPENSSL = '/usr/bin/openssl';
const CLEAR_PASSWORD = 'clear-text-Pw-42';
/** No PG* variable, no ~/.pgpass and no ~/.postgresql of the machine running the test. */
const ENV: Env = { HOME: '/nonexistent' };

function openssl(args: string[], cwd: string): void {
  execFileSync(OPENSSL, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A CA, and certificates it signs: the server's (localhost, 127.0.0.1) and a client's (CN=certuser). */
function makeCertificates(dir: string): void {
  const ca = (name: string) => openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`], dir);
  ca('ca');
  ca('other-ca');
  const signed = (name: string, cn: string, extensions?: string) => {
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`], dir);
    if (extensions) writeFileSync(join(dir, `${name}.ext`), extensions);
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', ...(extensions ? ['-extfile', `${name}.ext`] : [])], dir);
  };
  signed('server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  signed('client', 'certuser');
}

/** Whether the session runs over TLS, and as whom; throws what openSql's connection threw, as a PgmeshError. */
async function probe(dsn: string, env: Env = ENV): Promise<{ ssl: boolean; user: string }> {
  const sql = openSql(dsn, { node: 'n1', applicationName: 'pgmesh test', logger: silentLogger, env, connectTimeoutS: 10 });
  try {
    const rows = await sql.unsafe<{ ssl: boolean; user: string }[]>('SELECT ssl, current_user AS "user" FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()');
    return { ssl: rows[0]?.ssl ?? false, user: rows[0]?.user ?? '' };
  } catch (error) {
    throw connectionError(error, 'n1', dsn);
  } finally {
    await sql.end({ timeout: 1 }).catch(() => undefined);
  }
}

async function rejection(work: Promise<unknown>): Promise<PgmeshError> {
  try {
    await work;
  } catch (error) {
    assert.ok(error instanceof PgmeshError, `not a PgmeshError: ${String(error)}`);
    return error;
  }
  assert.fail('connected, and should not have');
}

async function prependHba(server: EmbeddedServer, sql: Sql, lines: string): Promise<void> {
  const file = join(server.dataDir, 'pg_hba.conf');
  writeFileSync(file, `${lines}\n${readFileSync(file, 'utf8')}`);
  await sql`SELECT pg_catalog.pg_reload_conf()`;
}

test('sslmode as libpq: prefer by default, require, verify-ca and verify-full with sslrootcert, client certificates', { timeout: 180_000 }, async () => {
  const certs = mkdtempSync(join(tmpdir(), 'pgmesh-tls-'));
  try {
    makeCertificates(certs);
    await withServer('tls', async (server, sql) => {
      const base = `host=127.0.0.1 port=${server.port} user=postgres dbname=postgres password=${server.password}`;
      // Without TLS on the server: prefer and allow connect in plain text, require is refused with a clear reason.
      assert.deepEqual(await probe(base), { ssl: false, user: 'postgres' });
      assert.deepEqual(await probe(`${base} sslmode=allow`), { ssl: false, user: 'postgres' });
      const noTls = await rejection(probe(`${base} sslmode=require`));
      assert.match(noTls.message, /the server does not offer TLS, and its connection string asks for it/);

      // The server's key and certificate where it can read them, owned by the user it runs as.
      const ids = serverUser();
      for (const name of ['server.crt', 'server.key', 'ca.crt']) {
        const target = join(server.dataDir, name);
        writeFileSync(target, readFileSync(join(certs, name)), { mode: 0o600 });
        if (ids) chownSync(target, ids.uid, ids.gid);
      }
      server.configure({ ssl: 'on', ssl_cert_file: 'server.crt', ssl_key_file: 'server.key', ssl_ca_file: 'ca.crt' });
      await server.restart();
      await sql`CREATE ROLE certuser LOGIN`;
      await prependHba(server, sql, 'hostssl all certuser 127.0.0.1/32 cert');

      // The default is prefer: TLS, since the server offers it (before: plain text).
      assert.deepEqual(await probe(base), { ssl: true, user: 'postgres' });
      assert.deepEqual(await probe(`postgres://postgres:${server.password}@127.0.0.1:${server.port}/postgres`), { ssl: true, user: 'postgres' });
      assert.deepEqual(await probe(`${base} sslmode=require`), { ssl: true, user: 'postgres' });
      assert.deepEqual(await probe(base, { ...ENV, PGSSLMODE: 'disable' }), { ssl: false, user: 'postgres' });

      const ca = join(certs, 'ca.crt');
      const full = `host=localhost hostaddr=127.0.0.1 port=${server.port} user=postgres dbname=postgres password=${server.password} sslmode=verify-full`;
      assert.deepEqual(await probe(`${full} sslrootcert=${ca}`), { ssl: true, user: 'postgres' });
      assert.deepEqual(await probe(full, { ...ENV, PGSSLROOTCERT: ca }), { ssl: true, user: 'postgres' });
      assert.deepEqual(
        await probe(`postgres://postgres:${server.password}@127.0.0.1:${server.port}/postgres?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca)}`),
        { ssl: true, user: 'postgres' },
      );
      // Another CA: refused, for verify-full and verify-ca, and for require once a CA is given (as libpq).
      for (const mode of ['verify-full', 'verify-ca', 'require']) {
        const wrong = await rejection(probe(`${full.replace('verify-full', mode)} sslrootcert=${join(certs, 'other-ca.crt')}`));
        assert.match(wrong.message, /the server's certificate is not trusted .*check sslrootcert/, mode);
        assert.ok(!wrong.message.includes(server.password), wrong.message);
      }
      // A name the certificate does not carry: verify-full refuses, verify-ca (the chain only) connects.
      const otherName = `host=db.invalid hostaddr=127.0.0.1 port=${server.port} user=postgres dbname=postgres password=${server.password} sslrootcert=${ca}`;
      assert.match((await rejection(probe(`${otherName} sslmode=verify-full`))).message, /not trusted/);
      assert.deepEqual(await probe(`${otherName} sslmode=verify-ca`), { ssl: true, user: 'postgres' });
      // verify-full needs a CA to check with.
      assert.match((await rejection(probe(full))).message, /sslmode=verify-full but no CA certificate .*sslrootcert=<file>/);

      // A client certificate, no password.
      const cert = `host=localhost hostaddr=127.0.0.1 port=${server.port} user=certuser dbname=postgres sslmode=verify-full sslrootcert=${ca} sslcert=${join(certs, 'client.crt')} sslkey=${join(certs, 'client.key')}`;
      assert.deepEqual(await probe(cert), { ssl: true, user: 'certuser' });
    });
  } finally {
    rmSync(certs, { recursive: true, force: true });
  }
});

test('a password asked for in clear is not sent without TLS unless PGMESH_ALLOW_CLEARTEXT_PASSWORD=1', { timeout: 120_000 }, async () => {
  await withServer('cleartext', async (server, sql) => {
    await sql.unsafe(`CREATE ROLE clear LOGIN PASSWORD '${CLEAR_PASSWORD}'`);
    await prependHba(server, sql, 'host all clear 127.0.0.1/32 password');
    const dsn = `host=127.0.0.1 port=${server.port} user=clear dbname=postgres password=${CLEAR_PASSWORD}`;
    const refused = await rejection(probe(dsn));
    assert.equal(refused.code, 'AUTH_FAILED');
    assert.match(refused.message, /asked for the password in clear .* on a connection without TLS, and pgmesh does not send it there; .*PGMESH_ALLOW_CLEARTEXT_PASSWORD=1/);
    assert.ok(!refused.message.includes(CLEAR_PASSWORD), refused.message);
    assert.deepEqual(await probe(dsn, { ...ENV, PGMESH_ALLOW_CLEARTEXT_PASSWORD: '1' }), { ssl: false, user: 'clear' });
  });
});

test('a fake server that asks for the password in clear receives no byte of it', { timeout: 60_000 }, async () => {
  const received: Buffer[] = [];
  const sockets = new Set<Socket>();
  const fake = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    let answered = false;
    socket.on('data', (chunk: Buffer) => {
      received.push(chunk);
      // SSLRequest (8 bytes, code 80877103): no TLS here. Then the startup packet: AuthenticationCleartextPassword.
      if (chunk.length === 8 && chunk.readUInt32BE(4) === 80877103) socket.write('N');
      else if (!answered) {
        answered = true;
        const request = Buffer.alloc(9);
        request.write('R', 0, 'latin1');
        request.writeUInt32BE(8, 1);
        request.writeUInt32BE(3, 5);
        socket.write(request);
      }
    });
  });
  await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
  const address = fake.address();
  assert.ok(address !== null && typeof address === 'object');
  try {
    const password = 'stolen-if-sent-7';
    const error = await rejection(probe(`host=127.0.0.1 port=${address.port} user=app dbname=app password=${password}`));
    assert.equal(error.code, 'AUTH_FAILED');
    // Whatever was written on the socket before it closed.
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(!Buffer.concat(received).includes(password), 'the fake server received the password');
    assert.ok(received.length > 0, 'the fake server was reached');
  } finally {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => fake.close(() => resolve()));
  }
});
