/**
 * Topology: 3 nodes (n1, n2, n3, full mesh, agents in this process), bank transfers on a delta balance and writes of
 * shared keys on the nodes that are up.
 * Scenarios, one per test:
 * - n3 is down while n1 keeps writing; n1 keeps only 32 MB of WAL for a slot (max_slot_wal_keep_size), so its slot
 *   for n3 is invalidated. `status` says n3 needs a resync and why; once n3 is back, `node resync n3` copies it anew
 *   from n2 under load, and every node ends hash-equal with exact balances while n3 writes again. Without the code
 *   under test: nothing can bring n3 back (its stream from n1 fails for ever), and status says nothing.
 * - n3 is removed under load and comes back by `node resync n3`, its rows replaced by n1's (rows that n3 itself
 *   wrote before it left among them). Without the code under test: the copy of n3's own rows fails (no origin that
 *   reads as n3 on n3), and n1 and n2 never stream from n3 again (their streams stopped when n3 was unlinked).
 * - n3 has written something that n2 never received (n2's agent is down): the resync is refused without --force,
 *   and with it says what is lost.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterStatus } from '../../src/cluster/cluster-ops.ts';
import { formatStatus } from '../../src/cli/status.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { removeNode } from '../../src/membership/node-remove.ts';
import { resyncNode } from '../../src/membership/node-resync.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { MIXED_SCHEMA, assertMixedConverged, declareDeltaBalances, startMixedLoad, type MixedLoad } from '../support/mixed-load.ts';
import { invalidateSlot } from '../support/slots.ts';

async function membershipState(node: TestNode): Promise<string | undefined> {
  const rows = await node.sql.unsafe<{ state: string }[]>(`SELECT state FROM pgmesh.membership`);
  return rows[0]?.state;
}

/** After a resync: the others stream from n3 again (reload), n3's agent starts and n3 writes; everything is checked. */
async function finishResync(cluster: TestCluster, n3: TestNode, load: MixedLoad): Promise<void> {
  await cluster.reloadAgents();
  await cluster.startAgents(['n3']);
  await load.progress(30);
  load.addWriter(n3);
  await load.progress(50);
  await load.stop();
  await assertMixedConverged(cluster, load);
}

test('node resync: a slot invalidated by max_slot_wal_keep_size while n3 is down is reported by status and healed', { timeout: 600_000 }, async (t) => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    await declareDeltaBalances(cluster);
    await cluster.startAgents();
    const [n1, n2, n3] = ['n1', 'n2', 'n3'].map((name) => cluster.node(name));
    assert.ok(n1 && n2 && n3);
    const load = startMixedLoad([n1, n2]);
    await load.progress(30);
    // n3's machine goes down; n1 and n2 go on writing.
    await cluster.stopAgent('n3');
    await n3.server.stop();
    await invalidateSlot(n1, 'pgmesh_n3', ['pgmesh_n2']);
    await load.progress(30);

    const down = await clusterStatus(cluster.config, silentLogger);
    const reasons = down.nodes.find((n) => n.name === 'n3')?.needsResync ?? [];
    assert.deepEqual(reasons.map((r) => `${r.kind} ${r.peer}`), ['slot_invalidated n1'], `status while n3 is down: ${formatStatus(down)}`);
    assert.match(formatStatus(down), /^! node n3 needs a resync: slot pgmesh_n3 on n1 was invalidated \(wal_removed: .*"pgmesh node resync n3"$/m);

    await n3.server.start();
    await eventually(async () => (await n3.sql.unsafe(`SELECT 1`)).length === 1, { timeoutMs: 60_000, what: 'n3 to answer again' });
    const back = await clusterStatus(cluster.config, silentLogger);
    assert.deepEqual(back.nodes.find((n) => n.name === 'n3')?.needsResync.map((r) => r.kind), ['slot_invalidated'], 'still needed once n3 is back');

    const result = await resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n2' });
    t.diagnostic(`resync copied ${result.rows} rows in ${result.copySeconds} s`);
    assert.equal(result.drained, true);
    assert.equal(await membershipState(n3), 'member');
    const healed = await clusterStatus(cluster.config, silentLogger);
    assert.deepEqual(healed.nodes.map((n) => n.needsResync.length), [0, 0, 0], `no node needs a resync: ${formatStatus(healed)}`);
    await finishResync(cluster, n3, load);
  });
});

test('node resync: a node removed under load comes back by resync', { timeout: 600_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    await declareDeltaBalances(cluster);
    await cluster.startAgents();
    const n3 = cluster.node('n3');
    const load = startMixedLoad(cluster.nodes);
    await load.progress(50);
    await load.stopWriter(n3);
    assert.equal((await removeNode(cluster.config, silentLogger, { name: 'n3' })).drained, true);
    await cluster.stopAgent('n3');
    await load.progress(30);
    const result = await resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    assert.deepEqual(result.warnings, []);
    assert.equal(result.nodeSlot, 3, 'n3 keeps its slot number');
    assert.equal(await membershipState(n3), 'member');
    await finishResync(cluster, n3, load);
  });
});

test('node resync: changes of n3 that a peer never received make the resync need --force, which says they are lost', { timeout: 600_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    // n2's agent is down: nothing of n3's reaches n2.
    await cluster.startAgents(['n1', 'n3']);
    const n3 = cluster.node('n3');
    await n3.sql.unsafe(`INSERT INTO items (id, val) VALUES (1001, 'written on n3 only')`);
    await cluster.stopAgent('n3');
    await assert.rejects(
      resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1', drainTimeoutMs: 3000 }),
      /n2 did not receive n3's changes .* would be lost .* --force/,
    );
    assert.equal(await membershipState(n3).catch(() => undefined), undefined, 'a refused resync changes nothing');
    const result = await resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1', force: true, drainTimeoutMs: 3000 });
    assert.equal(result.drained, false);
    assert.match(result.warnings.join('\n'), /would be lost.*--force/);
  });
});
