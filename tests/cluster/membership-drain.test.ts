/**
 * Topology: 3 nodes (n1, n2, n3, full mesh, agents in this process); n1's and n2's agents reach n3 through a TCP proxy
 * (tests/support/link-proxy.ts), so n3's outgoing links can be held while everything else runs.
 * Scenario: n3's outgoing links are held and n3 makes its last transfers (delta balances, a row each in the transfer
 * log), so they are on n3 only; then n3 is removed. While the remove waits for them, the links are released. Every
 * change n3 made must be on n1 and n2 when the remove returns, with the balances equal on all three.
 * Without the code under test (the drain: a marker transaction on the leaving node that every other node must apply
 * first), the remove drops n3's slots at once and its last transfers never leave it (checked: with the drain skipped
 * the remove fails, since n1's apply session still waits on the held link and holds n3's origin, and n1 and n2 lack
 * the transfers). The remove-under-load test in membership.test.ts passes without the drain: there every change of
 * the leaving node has usually arrived before the remove starts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent } from '../../src/agent/agent.ts';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { removeNode } from '../../src/membership/node-remove.ts';
import { linkBarrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';
import { LinkProxy } from '../support/link-proxy.ts';
import { MIXED_SCHEMA } from '../support/mixed-load.ts';

const fromN3 = (node: TestNode) => node.sql.unsafe<{ id: string }[]>(`SELECT id FROM transfer_log WHERE id LIKE 'n3-%' ORDER BY id`);

/** The remove is waiting for the others to apply the leaving node's marker (it reads their progress). */
async function draining(node: TestNode): Promise<boolean> {
  const rows = await node.sql.unsafe(
    `SELECT 1 FROM pg_catalog.pg_stat_activity WHERE application_name = 'pgmesh node remove' AND query LIKE '%FROM pgmesh.progress%'`,
  );
  return rows.length > 0;
}

test('node remove: the leaving node\'s last changes, held on their way, reach every other node before it goes', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = cluster.nodes;
    assert.ok(n1 && n2 && n3);
    for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'accounts' }, ['balance']);
    const proxy = await LinkProxy.start('n3->n1,n2', n3.server.port);
    const viaProxy = new URL(n3.server.dsn);
    viaProxy.port = String(proxy.port);
    const agentConfig = { ...cluster.config, nodes: cluster.config.nodes.map((n) => (n.name === 'n3' ? { ...n, dsn: viaProxy.toString() } : n)) };
    const agents: Agent[] = [];
    try {
      for (const name of ['n1', 'n2']) agents.push(await Agent.start(agentConfig, name, silentLogger));
      await cluster.startAgents(['n3']);
      await n3.sql.unsafe(`SELECT transfer('n3-first', 1, 2, 100)`);
      await linkBarrier(cluster, { from: 'n3', to: 'n1' });
      await linkBarrier(cluster, { from: 'n3', to: 'n2' });

      proxy.hold();
      for (let i = 0; i < 20; i++) await n3.sql.unsafe(`SELECT transfer($1, $2::text::int, $3::text::int, 250)`, [`n3-last-${i}`, String(1 + (i % 5)), String(6 + (i % 7))]);
      const written = await fromN3(n3);
      assert.equal(written.length, 21);
      assert.equal((await fromN3(n1)).length, 1, 'n3\'s last transfers are on n3 only');

      let settled = false;
      const removal = removeNode(cluster.config, silentLogger, { name: 'n3' }).finally(() => {
        settled = true;
      });
      removal.catch(() => undefined); // awaited below; a failure must not be reported as unhandled meanwhile
      await eventually(async () => settled || ((await draining(n1)) && (await draining(n2))), { timeoutMs: 60_000, what: 'the remove to wait for n3\'s changes' });
      proxy.release();
      const result = await removal;
      assert.equal(result.drained, true);

      for (const node of [n1, n2]) assert.deepEqual(await fromN3(node), written, `everything n3 wrote is on ${node.name}`);
      const hashes = await Promise.all([n1, n2, n3].map((node) => cluster.tableHash(node, 'accounts')));
      assert.equal(new Set(hashes).size, 1, `balances equal on n1, n2 and n3: ${hashes.join(' ')}`);
    } finally {
      proxy.release();
      for (const agent of agents) await agent.stop();
      await proxy.close();
    }
  });
});
