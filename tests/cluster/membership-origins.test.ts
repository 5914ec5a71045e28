/**
 * Topology: 3 nodes (n1, n2, n3, full mesh, agents in this process); n3 is removed, then an origin is made on n1 as
 * a node added later would get one.
 * Scenario: n3 writes a row, every node has it, n3 is removed. The row's version names n3 on every node (it decides
 * conflicts with later changes), before and after a new origin is created on n1.
 * Without the code under test: the remove dropped the origins pgmesh_n3 and pgmeshr_n3, so the row's version read
 * as node '?<id>' (an id that may differ between nodes), and the next origin made took the same id, so that n3's row
 * read as written by that node.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../src/core/logger.ts';
import { removeNode } from '../../src/membership/node-remove.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { withCluster, type TestNode } from '../support/cluster.ts';

const versionNode = async (node: TestNode) =>
  (await node.sql.unsafe<{ node: string }[]>(`SELECT v.node FROM t CROSS JOIN LATERAL pgmesh.row_version(t.xmin, 'local') v WHERE t.k = 1`))[0]?.node;

test("node remove: rows the removed node wrote keep its name as their version's node, whatever origins come later", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}` }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await cluster.startAgents();
    await n3.sql.unsafe(`INSERT INTO t VALUES (1, 'from n3')`);
    await barrier(cluster);
    assert.equal(await versionNode(n1), 'n3');
    await removeNode(cluster.config, silentLogger, { name: 'n3' });
    for (const node of [n1, n2]) assert.equal(await versionNode(node), 'n3', `the row's version on ${node.name} after the remove`);
    // An origin made now (as for a node added later) must not take over the removed node's rows.
    await n1.sql.unsafe(`SELECT pg_catalog.pg_replication_origin_create('pgmesh_n9')`);
    await n1.sql.unsafe(`SELECT pg_catalog.pg_replication_origin_create('pgmeshr_n9')`);
    assert.equal(await versionNode(n1), 'n3', "the row's version on n1 after new origins");
  });
});
