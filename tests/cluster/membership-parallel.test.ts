/**
 * Topology: n1 and n2 (full mesh, agents in this process, tuning margins 0 so that rows written before the join are
 * older than the copy's horizon); n3 joins from n1 with copyParallelism 2.
 * Scenario: two tables with rows written on both nodes, then the join: the two tables are copied at once, each by a
 * worker that marks its old rows with an origin of its own that reads as n1 (n1's link origin, and n1's replay
 * origin). Every copied row reads on n3 as version (-infinity, n1), and a later update from n2 wins on n3 as elsewhere.
 * Without the code under test: one table at a time (both tables' rows carry n1's link origin only), or with both
 * workers on n1's link origin the second fails ("replication origin ... is already active").
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../src/core/logger.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { withCluster, type TestNode } from '../support/cluster.ts';
import { linkNames } from '../support/slots.ts';

const DDL = `CREATE TABLE a (id integer PRIMARY KEY, v text NOT NULL); CREATE TABLE b (id integer PRIMARY KEY, v text NOT NULL); ${BARRIER_TABLE}`;

/** Per table: the versions its rows read as on `node`, and the origins their transactions carry. */
async function copiedVersions(node: TestNode, table: 'a' | 'b'): Promise<{ versions: string[]; origins: string[] }> {
  const versions = await node.sql.unsafe<{ v: string }[]>(
    `SELECT DISTINCT v.ts::text || ' ' || v.node AS v FROM ${table} t, pgmesh.row_version(t.xmin, $1) v ORDER BY 1`,
    [node.name],
  );
  const origins = await node.sql.unsafe<{ o: string }[]>(
    `SELECT DISTINCT o.roname AS o FROM ${table} t, pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) c
       JOIN pg_catalog.pg_replication_origin o ON o.roident = c.roident ORDER BY 1`,
  );
  return { versions: versions.map((r) => r.v), origins: origins.map((r) => r.o) };
}

test('node add: two tables copied at once, each worker marking the source\'s old rows with its own origin of the source', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 2, schema: DDL, tuning: { tombstoneMarginMs: 0, conflictWindowMs: 0, copyParallelism: 2 } }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2] = cluster.nodes;
    assert.ok(n1 && n2);
    for (const table of ['a', 'b']) {
      await n1.sql.unsafe(`INSERT INTO ${table} SELECT g, 'n1' FROM generate_series(1, 1000) g`);
      await n2.sql.unsafe(`INSERT INTO ${table} SELECT g, 'n2' FROM generate_series(1001, 2000) g`);
    }
    // n1 has applied a transaction of n2 after every row: the horizon is past them all.
    await barrier(cluster);
    const n3 = await cluster.startServer('n3', DDL);
    await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });

    const a = await copiedVersions(n3, 'a');
    const b = await copiedVersions(n3, 'b');
    assert.deepEqual(a.versions, ['-infinity n1']);
    assert.deepEqual(b.versions, ['-infinity n1']);
    const fromN1 = await linkNames(n3, 'n1');
    assert.deepEqual([...a.origins, ...b.origins].sort(), [fromN1.origin, fromN1.replayOrigin].sort(), 'each table copied by its own worker, with its own origin of n1');

    cluster.admit(n3);
    await cluster.reloadAgents();
    await cluster.startAgents(['n3']);
    await n2.sql.unsafe(`UPDATE a SET v = 'n2 later' WHERE id IN (1, 1500)`);
    await n2.sql.unsafe(`UPDATE b SET v = 'n2 later' WHERE id IN (2, 1600)`);
    await barrier(cluster);
    for (const table of ['a', 'b']) {
      const hashes = await Promise.all(cluster.nodes.map((node) => cluster.tableHash(node, table)));
      assert.equal(new Set(hashes).size, 1, `${table} equal on every node: ${hashes.join(' ')}`);
    }
    const later = await n3.sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM a WHERE v = 'n2 later'`);
    assert.equal(later[0]?.n, '2');
  });
});
