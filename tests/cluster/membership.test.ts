/**
 * Topology: a 2-node cluster (n1, n2, full mesh, agents in this process) that a 3rd node joins; then 3 nodes.
 * Scenario: `node add n3 --from n1` while n1 and n2 keep writing (bank transfers on a delta balance with a transfer
 * log, and inserts, updates and deletes of shared keys); then n3 streams from both and writes too.
 * Without the code under test: a row written between the copy and the start of a stream is lost on n3 or applied
 * twice (a transfer counted twice creates money); a copied row carrying the copy's time as its version makes an
 * older change that arrives later win on n3 only (tables differ); a delta column copied without its policy is
 * applied as a plain value on n3.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { withCluster } from '../support/cluster.ts';
import { MIXED_DDL, MIXED_SCHEMA, assertMixedConverged, startMixedLoad } from '../support/mixed-load.ts';

test('node add: a third node joins while both nodes write, and every node ends equal with exact balances', { timeout: 300_000 }, async (t) => {
  await withCluster({ nodes: 2, schema: MIXED_SCHEMA }, async (cluster) => {
    for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'accounts' }, ['balance']);
    await cluster.startAgents();
    const load = startMixedLoad(cluster.nodes);
    await load.progress(100);
    const n3 = await cluster.startServer('n3', MIXED_DDL);
    const result = await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    t.diagnostic(`copied ${result.rows} rows (${result.bytes} bytes) of ${result.tables} tables in ${result.copySeconds} s`);
    assert.equal(result.alreadyMember, false);
    assert.equal(result.nodeSlot, 3);
    cluster.admit(n3);
    await cluster.reloadAgents();
    await cluster.startAgents(['n3']);
    await load.progress(100);
    load.addWriter(n3);
    await load.progress(100);
    await load.stop();
    t.diagnostic(`load: ${JSON.stringify(load.counts)}`);
    await assertMixedConverged(cluster, load);
  });
});
