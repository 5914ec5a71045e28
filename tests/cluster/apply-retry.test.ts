/**
 * Deadlocks and lock waits between the apply session and the node's own sessions (src/apply/apply-retry.ts): the
 * failed transaction is applied again in place from the events the applier keeps, without restarting the stream,
 * counted and shown by status; the apply session's lock_timeout keeps a session left idle in a transaction from
 * holding a peer's stream up without a sign.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { formatStatus } from '../../src/cli/status.ts';
import { clusterStatus, type LinkStatus } from '../../src/cluster/cluster-ops.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type Sql, type TestCluster, type TestNode } from '../support/cluster.ts';
import { peerStatus } from '../support/conflicts.ts';

const SCHEMA = `
CREATE TABLE ta (k integer PRIMARY KEY, v integer NOT NULL);
CREATE TABLE tb (k integer PRIMARY KEY, v integer NOT NULL);
CREATE TABLE tc (k integer PRIMARY KEY, v integer NOT NULL);
${BARRIER_TABLE}`;

/** A session of its own on a node (a client of one connection), with its backend's pid; end it with sql.end(). */
async function session(node: TestNode): Promise<{ sql: Sql; pid: number }> {
  const sql = postgres(node.server.dsn, { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
  const rows = await sql.unsafe<{ pid: number }[]>(`SELECT pg_backend_pid() AS pid`);
  return { sql, pid: Number(rows[0]?.pid) };
}

/** The pid of the node's apply session for a peer, once it waits for a lock held by `holder`. */
async function applyWaitsFor(node: TestNode, peer: string, holder: number): Promise<number> {
  let pid: number | undefined;
  await eventually(
    async () => {
      const rows = await node.sql.unsafe<{ pid: number }[]>(
        `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND $2::text::int = ANY (pg_blocking_pids(pid))`,
        [`pgmesh apply ${peer}`, String(holder)],
      );
      pid = rows[0]?.pid;
      return pid !== undefined;
    },
    { timeoutMs: 30_000, what: `${node.name}'s apply session of ${peer} to wait for pid ${holder}` },
  );
  return Number(pid);
}

async function waitsFor(node: TestNode, waiter: number, holder: number): Promise<void> {
  await eventually(
    async () => (await node.sql.unsafe(`SELECT 1 WHERE $2::text::int = ANY (pg_blocking_pids($1::text::int))`, [String(waiter), String(holder)])).length > 0,
    { timeoutMs: 30_000, what: `pid ${waiter} on ${node.name} to wait for pid ${holder}` },
  );
}

async function applied(node: TestNode, peer: string): Promise<number> {
  const rows = await node.sql.unsafe<{ n: string }[]>(`SELECT applied_xacts::text AS n FROM pgmesh.progress WHERE peer = $1`, [peer]);
  return Number(rows[0]?.n);
}

async function link(cluster: TestCluster, from: string, to: string): Promise<LinkStatus> {
  const status = await clusterStatus(cluster.config, silentLogger);
  const found = status.links.find((l) => l.from === from && l.to === to);
  assert.ok(found, `status has the link ${from} -> ${to}`);
  return found;
}

/**
 * Topology: 2 nodes, agents in this process.
 * Scenario: n1 commits one transaction that updates a row of tb, then of tc, then of ta. On n2, session L holds
 * ta's row and session M holds tc's. n2's apply session locks tb's row and waits for M; L then asks for tb's row
 * and waits for the apply session; M rolls back, and the apply session, now asking for ta's row, closes the cycle:
 * it is the deadlock's victim (L's deadlock_timeout is an hour, so only the apply session looks for the cycle).
 * L rolls back.
 * Without the code under test (retry in place): the deadlock tears the stream down (a restart of n2's stream from
 * n1, logged as an error) before the transaction is applied again.
 */
test('a transaction that deadlocks with a local session is applied again in place: no stream restart, applied once, counted', { timeout: 180_000 }, async () => {
  // A lock wait of the apply session ends by deadlock detection here, not by its lock_timeout.
  await withCluster({ nodes: 2, schema: SCHEMA, tuning: { lockTimeoutMs: 120_000 } }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await cluster.startAgents();
    for (const table of ['ta', 'tb', 'tc']) await n1.sql.unsafe(`INSERT INTO ${table} VALUES (1, 0)`);
    await barrier(cluster);
    const before = await applied(n2, 'n1');

    const l = await session(n2);
    const m = await session(n2);
    try {
      await l.sql.unsafe(`SET deadlock_timeout = '1h'`);
      await l.sql.unsafe(`BEGIN`);
      await l.sql.unsafe(`UPDATE ta SET v = -1 WHERE k = 1`);
      await m.sql.unsafe(`BEGIN`);
      await m.sql.unsafe(`UPDATE tc SET v = -1 WHERE k = 1`);
      await n1.sql.begin(async (tx) => {
        await tx.unsafe(`UPDATE tb SET v = v + 1 WHERE k = 1`);
        await tx.unsafe(`UPDATE tc SET v = v + 1 WHERE k = 1`);
        await tx.unsafe(`UPDATE ta SET v = v + 1 WHERE k = 1`);
      });
      const apply = await applyWaitsFor(n2, 'n1', m.pid);
      const lTakesTb = l.sql.unsafe(`UPDATE tb SET v = -1 WHERE k = 1`);
      lTakesTb.catch(() => undefined);
      await waitsFor(n2, l.pid, apply);
      await m.sql.unsafe(`ROLLBACK`);
      // The apply session was the victim: its locks went, and L's update went through.
      await lTakesTb;
      await l.sql.unsafe(`ROLLBACK`);
    } finally {
      await l.sql.end({ timeout: 1 });
      await m.sql.end({ timeout: 1 });
    }
    await barrier(cluster);

    for (const table of ['ta', 'tb', 'tc']) {
      assert.deepEqual((await n2.sql.unsafe(`SELECT k, v FROM ${table}`)).map((r) => ({ ...r })), [{ k: 1, v: 1 }], `n1's update of ${table} applied once on n2`);
    }
    await cluster.waitConverged(['ta', 'tb', 'tc'], 5_000);
    assert.equal(await applied(n2, 'n1'), before + 2, "n1's transaction and the barrier's, each applied once");
    const agent = peerStatus(cluster, 'n2', 'n1');
    assert.equal(agent.restarts, 0, 'the stream from n1 was not restarted');
    assert.equal(agent.lastError, null);
    assert.ok(agent.applyRetries >= 1, `the agent counted the retry (${agent.applyRetries})`);
    const shown = await link(cluster, 'n1', 'n2');
    assert.ok((shown.applyRetries ?? 0) >= 1, `status counts the retry: ${JSON.stringify(shown)}`);
    assert.equal(shown.retrying, null, 'nothing is being retried any more');
  });
});

/**
 * Topology: 2 nodes, agents in this process.
 * Scenario: a session on n2 updates a row and stays idle in its transaction; n1 updates the same row. n2's apply
 * session waits for the row lock (until its lock_timeout, then again after a retry): status shows the link's wait,
 * the table and the session that holds the lock. When that session ends, n1's change is applied.
 * Without the code under test: the wait shows nowhere (status says the link streams), and without lock_timeout it
 * would last as long as the idle session.
 */
test('an apply session that waits for a row lock of a session idle in its transaction shows in status, and applies once it ends', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO ta VALUES (1, 0)`);
    await barrier(cluster);

    const idle = await session(n2);
    try {
      await idle.sql.unsafe(`BEGIN`);
      await idle.sql.unsafe(`UPDATE ta SET v = -1 WHERE k = 1`);
      await n1.sql.unsafe(`UPDATE ta SET v = 42 WHERE k = 1`);
      let last: LinkStatus | undefined;
      await eventually(
        async () => {
          last = await link(cluster, 'n1', 'n2');
          return last.lockWait !== null && last.lockWait.blockedBy.some((b) => b.pid === idle.pid);
        },
        { timeoutMs: 60_000, what: () => `status to show n2's apply session waiting for pid ${idle.pid}: ${JSON.stringify(last)}` },
      );
      const wait = last?.lockWait;
      assert.equal(wait?.table, 'public.ta');
      assert.ok(wait?.since, 'since when it waits');
      assert.equal(wait?.blockedBy.find((b) => b.pid === idle.pid)?.state, 'idle in transaction');
      const text = formatStatus(await clusterStatus(cluster.config, silentLogger));
      assert.match(text, new RegExp(`^! n1 -> n2: applying waits for a lock on public\\.ta since \\S+, held by pid ${idle.pid} \\(idle in transaction since \\S+\\)`, 'm'));
      await idle.sql.unsafe(`ROLLBACK`);
    } finally {
      await idle.sql.end({ timeout: 1 });
    }
    await eventually(async () => (await n2.sql.unsafe(`SELECT 1 FROM ta WHERE k = 1 AND v = 42`)).length === 1, {
      timeoutMs: 60_000,
      what: "n1's update of the row to be applied on n2",
    });
    await barrier(cluster);
    await cluster.waitConverged(['ta'], 5_000);
    assert.equal((await link(cluster, 'n1', 'n2')).lockWait, null, 'no wait shown once it is over');
  });
});
