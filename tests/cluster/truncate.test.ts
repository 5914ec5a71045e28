/**
 * TRUNCATE by version (src/cluster/truncate-sql.ts). Topology: 3 nodes, agents in this process; a cluster per test.
 * Scenarios:
 * - While no node receives anything, n2 inserts a row, then n1 truncates the table, then n3 inserts a row and n2
 *   updates a row that n1's truncate removes. After the streams are released every node holds what was written after
 *   the truncate (by commit time) and nothing written before it.
 * - A table that a table outside the truncate references (a local table here) is not truncated under it: the change
 *   goes to the exception table on that node, and the stream goes on.
 * Without the code under test: a peer's TRUNCATE empties the table whenever it arrives, so the receiving node loses
 * rows written after it while the truncating node keeps rows written before it: nodes differ for good; and a
 * TRUNCATE ... CASCADE arriving at a node whose non-replicated table references the table stops the stream.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}`;
const rows = (node: TestNode) => node.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM t ORDER BY k`).then((r) => r.map((x) => ({ ...x })));

test('a TRUNCATE removes what was written before it on every node and keeps what was written after it', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO t SELECT g, 'first' FROM generate_series(1, 5) g`);
    await barrier(cluster);
    for (const node of cluster.nodes) await cluster.stopAgent(node.name);

    await n2.sql.unsafe(`INSERT INTO t VALUES (10, 'before the truncate')`);
    await n1.sql.unsafe(`TRUNCATE t`);
    await n3.sql.unsafe(`INSERT INTO t VALUES (20, 'after the truncate')`);
    await n2.sql.unsafe(`UPDATE t SET v = 'updated after the truncate' WHERE k = 1`);

    await cluster.startAgents();
    await barrier(cluster);
    const expected = [
      { k: 1, v: 'updated after the truncate' },
      { k: 20, v: 'after the truncate' },
    ];
    for (const node of cluster.nodes) assert.deepEqual(await rows(node), expected, `${node.name} holds what was written after the truncate`);
    for (const node of cluster.nodes) {
      const exceptions = await node.sql.unsafe<{ error: string }[]>(`SELECT error FROM pgmesh.exception`);
      assert.deepEqual(exceptions.map((e) => e.error), [], `nothing went to ${node.name}'s exception table`);
    }
  });
});

test('a TRUNCATE does not reach under a table that is not replicated: it goes to the exception table there', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    // On n2 only, and not replicated: a table of its own that references t.
    await n2.sql.begin(async (tx) => {
      await tx.unsafe(`SET LOCAL pgmesh.ddl_capture = off`);
      await tx.unsafe(`CREATE TABLE local_notes (id integer PRIMARY KEY, k integer REFERENCES t (k))`);
    });
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO t VALUES (1, 'referenced on n2'), (2, 'plain')`);
    await barrier(cluster);
    await n2.sql.unsafe(`INSERT INTO local_notes VALUES (1, 1)`);

    await n1.sql.unsafe(`TRUNCATE t`);
    await n1.sql.unsafe(`INSERT INTO t VALUES (3, 'after the truncate')`);
    await barrier(cluster);

    assert.deepEqual(await rows(n1), [{ k: 3, v: 'after the truncate' }]);
    assert.deepEqual(await rows(n2), [{ k: 1, v: 'referenced on n2' }, { k: 2, v: 'plain' }, { k: 3, v: 'after the truncate' }], 'n2 kept the rows its local table references');
    const notes = await n2.sql.unsafe<{ k: number }[]>(`SELECT k FROM local_notes`);
    assert.deepEqual(notes.map((r) => r.k), [1], "n2's local table is untouched");
    type Kept = { change_kind: string; sqlstate: string; error: string };
    let kept: Kept[] = [];
    await eventually(async () => (kept = [...(await n2.sql.unsafe<Kept[]>(`SELECT change_kind, sqlstate, error FROM pgmesh.exception`))]).length > 0, {
      what: "the truncate in n2's exception table",
    });
    assert.equal(kept.length, 1);
    assert.equal(kept[0]?.change_kind, 'truncate');
    assert.equal(kept[0]?.sqlstate, '23503');
    assert.match(kept[0]?.error ?? '', /a TRUNCATE from n1 of public\.t would leave rows pointing at deleted ones: public\.local_notes references public\.t \(local_notes_k_fkey\)/);
  });
});
