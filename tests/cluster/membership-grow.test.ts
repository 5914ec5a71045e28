/**
 * Topology: 3 nodes (n1, n2, n3, full mesh, agents in this process); n4 joins from n1, then n5 from n2.
 * Scenario: every node runs the bank workload with a delta balance (transfers, one transaction each, with a row in a
 * transfer log) mixed with inserts, updates and deletes of shared keys, and a reader on every member checks the total
 * at every read; each node that joins becomes a writer and a reader as soon as it is a member. At the end: the total
 * intact at every read on every node, every node hash-equal, each balance the initial one plus every logged transfer
 * exactly once, no exception records.
 * Without the code under test (node add with more than one node besides the source): a transfer of another node
 * that the source applied before its snapshot is in the copy and again in the new node's stream from that node, unless
 * the stream starts at the source's progress for it (checked: with n4's and n5's streams from the other nodes
 * started at their slots' start instead, n4's and n5's balances differ from the others'). Skipping the wait for the
 * source to catch up did not fail in a run: under this load the source is never far behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { readCopyProgress } from '../../src/membership/membership-state.ts';
import { withCluster, type TestCluster } from '../support/cluster.ts';
import { MIXED_DDL, MIXED_SCHEMA, assertMixedConverged, startMixedLoad, startTotalReaders, type MixedLoad, type TotalReaders } from '../support/mixed-load.ts';

async function join(cluster: TestCluster, name: string, from: string, load: MixedLoad, readers: TotalReaders): Promise<void> {
  const node = await cluster.startServer(name, MIXED_DDL);
  const result = await addNode(cluster.config, silentLogger, { name, dsn: node.server.dsn, from });
  assert.equal(result.alreadyMember, false);
  // The copy's progress per table, as status shows it: every table done, their rows the copy's.
  const progress = await readCopyProgress(node.sql);
  assert.deepEqual(progress.map((p) => `${p.relation} ${p.state}`), ['public.accounts done', 'public.items done', 'public.pgmesh_test_barrier done', 'public.transfer_log done']);
  assert.equal(progress.reduce((sum, p) => sum + p.rows, 0), result.rows);
  cluster.admit(node);
  await cluster.reloadAgents();
  await cluster.startAgents([name]);
  readers.addReader(node);
  load.addWriter(node);
}

test('node add: a 4th and then a 5th node join while every node runs the bank workload; totals intact at every read, all equal at the end', { timeout: 600_000 }, async (t) => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'accounts' }, ['balance']);
    await cluster.startAgents();
    const load = startMixedLoad(cluster.nodes, { clientsPerNode: 1 });
    const readers = startTotalReaders(cluster.nodes);
    try {
      await load.progress(50);
      await join(cluster, 'n4', 'n1', load, readers);
      await load.progress(50);
      await join(cluster, 'n5', 'n2', load, readers);
      await load.progress(50);
      await load.stop();
    } finally {
      await load.stop().catch(() => undefined);
      await readers.stop();
    }
    t.diagnostic(`load: ${JSON.stringify(load.counts)}; reads: ${JSON.stringify(readers.checks)}`);
    await assertMixedConverged(cluster, load);
    assert.deepEqual(readers.violations, [], 'every read on every node saw the cluster\'s total');
    for (const name of ['n1', 'n2', 'n3', 'n4', 'n5']) assert.ok((readers.checks[name] ?? 0) > 0, `the total was read on ${name}`);
  });
});
