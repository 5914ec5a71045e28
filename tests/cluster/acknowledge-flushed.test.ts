/**
 * Acknowledge only what is flushed (issue 10.4; durableProgress in src/apply/applier.ts, read by the peer replicator
 * before START_REPLICATION).
 * Topology: 2 nodes; n1's agent in this process, n2's agent a real process (killed with SIGKILL).
 * Scenario: n2's apply session commits asynchronously, and on n2 nothing else puts the WAL on disk: every session
 * commits asynchronously (synchronous_commit = off on the servers, which is what the agent's own catalog writes take
 * too), the background writer writes no pages, autovacuum is off, and n2's WAL writer is stopped (SIGSTOP), as it
 * is for up to three wal_writer_delay periods in real life. n1 commits a few transactions; n2 applies them (in WAL
 * buffers only); n2's agent is killed and started again; its new stream acknowledges to n1 as far as the end of those
 * transactions; then n2's server is killed (postmaster and every backend, WAL writer included) and restarted.
 * Everything n2 acknowledged must still be on n2, or come again from n1.
 * Without the code under test: the new stream took the committed progress row as durable and acknowledged it at
 * once; n1's slot moved past transactions that were only in n2's WAL buffers, the crash lost them, and n1 never sent
 * them again: n2 missed them for good.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';
import { linkNames } from '../support/slots.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}`;
const TRANSACTIONS = 50;
const count = async (node: TestNode) => Number((await node.sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM t`))[0]?.n);

test('what a node acknowledged to a peer right after its agent restarted survives a crash of its server', { timeout: 240_000 }, async () => {
  await withCluster(
    {
      nodes: 2,
      schema: SCHEMA,
      settings: { synchronous_commit: 'off', bgwriter_lru_maxpages: 0, autovacuum: 'off' },
      // No flush by the agent's progress poll inside the test's window; acknowledgements at once.
      tuning: { progressPollMs: 60_000, feedbackIntervalMs: 50, retryBaseMs: 100, retryMaxMs: 1000 },
    },
    async (cluster) => {
      const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
      await cluster.startAgents(['n1']);
      let agent = cluster.startAgentProcess('n2');
      await barrier(cluster);
      // A fresh agent, so that its progress poll (every 60 s) does not run before the crash.
      await agent.kill('SIGKILL');
      agent = cluster.startAgentProcess('n2');
      await barrier(cluster);

      const walWriter = await n2.sql.unsafe<{ pid: number }[]>(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'`);
      const pid = walWriter[0]?.pid;
      assert.ok(pid !== undefined, "n2's WAL writer is running");
      process.kill(pid, 'SIGSTOP');

      for (let i = 1; i <= TRANSACTIONS; i++) await n1.sql.unsafe(`INSERT INTO t VALUES ($1::text::int, 'from n1')`, [String(i)]);
      const end = (await n1.sql.unsafe<{ lsn: string }[]>(`SELECT pg_current_wal_lsn()::text AS lsn`))[0]?.lsn ?? '';
      await eventually(async () => (await count(n2)) === TRANSACTIONS, { what: "n2 to apply n1's transactions" });

      await agent.kill('SIGKILL');
      agent = cluster.startAgentProcess('n2');
      await eventually(
        async () =>
          (await n1.sql.unsafe(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $2 AND confirmed_flush_lsn >= $1::text::pg_lsn`, [end, (await linkNames(n2, 'n1')).slot])).length > 0,
        { what: "n2's new stream to acknowledge n1's transactions", abort: () => (agent.running ? undefined : "n2's agent exited") },
      );
      await agent.kill('SIGKILL');
      await n2.server.kill();
      await n2.server.start();
      agent = cluster.startAgentProcess('n2');
      await barrier(cluster);
      assert.equal(await count(n2), TRANSACTIONS, "every transaction n2 acknowledged is on n2");
      await agent.kill('SIGKILL');
    },
  );
});
