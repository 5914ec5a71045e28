/**
 * Topology: one real server.
 * Scenario: a connection pool opened as the apply session opens it (one connection, `pipelined`: TCP_NODELAY socket,
 * deep pipeline); the server crashes (kill -9), is down for a while (queries fail, reconnects are refused), then
 * starts again. Queries must fail while it is down and work again once it is back.
 * Without the code under test: the socket factory waited for 'connect' and rejected on a refused connection, which
 * left the driver's only connection in "connecting" for good: every query after the server came back waited forever,
 * and an agent's apply stream from a peer hung until the agent was restarted (found by the bank kill -9 test).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { silentLogger } from '../../src/core/logger.ts';
import { isRunning } from '../../src/embedded/embedded-server.ts';
import { openSql } from '../../src/pg/connect.ts';
import { eventually, withServer } from '../support/cluster.ts';

/** One query with its own deadline: a query that hangs must not hang the test. */
async function attempt(sql: ReturnType<typeof openSql>): Promise<'ok' | 'failed' | 'hung'> {
  return Promise.race([
    sql.unsafe('SELECT 1').then(
      () => 'ok' as const,
      () => 'failed' as const,
    ),
    delay(3_000, 'hung' as const),
  ]);
}

test('the pipelined apply connection works again after its server crashed, stayed down, and came back', { timeout: 120_000 }, async () => {
  await withServer('n1', async (server) => {
    const sql = openSql(server.dsn, { node: 'n1', applicationName: 'pgmesh test', logger: silentLogger, max: 1, pipelined: true });
    try {
      assert.equal(await attempt(sql), 'ok');
      await server.kill();
      // Down: the query in flight fails, and so do reconnects (refused).
      let whileDown: string[] = [];
      for (let i = 0; i < 3; i++) whileDown.push(await attempt(sql));
      whileDown = [...new Set(whileDown)];
      assert.ok(!whileDown.includes('ok'), `no query succeeds while the server is down: ${whileDown.join(', ')}`);
      await server.start();
      const seen: string[] = [];
      await eventually(
        async () => {
          seen.push(await attempt(sql));
          return seen.at(-1) === 'ok';
        },
        {
          timeoutMs: 60_000,
          what: () => `a query to succeed after the restart (attempts: ${seen.join(', ')})`,
        },
      );
    } finally {
      await sql.end({ timeout: 1 }).catch(() => undefined);
    }
  });
});

/**
 * Topology: one real server. Scenario: a session runs a long CPU-bound query (a backend that is not waiting does not
 * look for its postmaster's death), the server is killed.
 * Without the code under test: kill() signalled the postmaster's process group, but every postmaster child calls
 * setsid(), so the backend lived on (until its query ended, here), and an idle one could answer a query sent right
 * after the "crash" (seen once: the test above saw a query succeed while the server was down).
 */
test("kill() takes every server process down at once, the sessions' backends too", { timeout: 60_000 }, async () => {
  await withServer('n1', async (server, sql) => {
    const rows = await sql.unsafe<{ pid: number }[]>('SELECT pg_backend_pid() AS pid');
    const pid = Number(rows[0]?.pid);
    assert.ok(pid > 0);
    // Some tens of seconds of work here; the query fails when the server dies (not awaited: a backend that survives
    // a broken kill() would keep the test waiting for its end).
    void sql.unsafe('SELECT count(*) FROM generate_series(1, 300000000)').catch(() => undefined);
    const watcher = openSql(server.dsn, { node: 'n1', applicationName: 'pgmesh test watcher', logger: silentLogger, max: 1 });
    try {
      await eventually(
        async () => (await watcher.unsafe(`SELECT 1 FROM pg_stat_activity WHERE pid = ${pid} AND state = 'active'`)).length === 1,
        { what: `the backend ${pid} running its query` },
      );
      await server.kill();
      // Dead: gone, or a zombie not reaped yet (its parent, the postmaster, was killed too).
      assert.ok(!isRunning(pid), `the backend ${pid} still runs after kill()`);
    } finally {
      await watcher.end({ timeout: 1 }).catch(() => undefined);
    }
  });
});
