/**
 * Deterministic reproductions of divergences the randomized convergence test (convergence-random.test.ts) found.
 * Each one states its topology and scenario; after a causal barrier every node must hold the last-update-wins state.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';
import { setDeltaColumns } from '../../src/cluster/repair.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}`;
const rows = (node: TestNode) => node.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM t ORDER BY k`).then((r) => r.map((x) => ({ ...x })));

/**
 * Topology: 2 nodes, agents in this process.
 * Scenario: a local transaction on n1 deletes a row and holds it uncommitted; n2 updates the same row (an older
 * version than the delete will get); n1's apply session reaches that row while the delete is still open, then
 * the delete commits. The delete is the newest change of the row, so it must win on both nodes.
 * Without the code under test: the apply statement decided on its snapshot (row present, remote newer), its
 * INSERT ... ON CONFLICT found the row gone once the delete committed and created it again: n1 kept the row, n2
 * dropped it when n1's delete arrived, and the nodes stayed different for good.
 */
test('a local delete that commits while an older remote update of its row waits for it wins on every node', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await n1.sql.unsafe(`INSERT INTO t VALUES (1, 'first'), (2, 'untouched')`);
    await barrier(cluster);

    const deleter = await n1.sql.reserve();
    try {
      await deleter.unsafe('BEGIN');
      await deleter.unsafe('DELETE FROM t WHERE k = 1');
      await n2.sql.unsafe(`UPDATE t SET v = 'from n2' WHERE k = 1`);
      // n1's apply session for n2 now waits for the open delete's row lock.
      await eventually(
        async () => (await n1.sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgmesh apply n2' AND wait_event_type = 'Lock'`)).length > 0,
        { what: "n1's apply of n2's update to wait for the local delete" },
      );
      await deleter.unsafe('COMMIT');
    } finally {
      deleter.release();
    }
    await barrier(cluster);
    assert.deepEqual(await rows(n1), [{ k: 2, v: 'untouched' }], 'n1: the newer delete won');
    assert.deepEqual(await rows(n2), [{ k: 2, v: 'untouched' }], 'n2: the newer delete won');
  });
});

/**
 * Topology: 3 nodes, agents in this process; n1's agent stopped for a while.
 * Scenario: n1 inserts key 2 (replicated everywhere), then, while n1 receives nothing, n3 updates key 2 and n1
 * changes the key of that row to 5. n1's key change is the newest change of key 2: it removes key 2 everywhere.
 * Without the code under test: peers applied n1's key change as key 2's delete with a tombstone, but n1 itself kept
 * no tombstone for key 2, so n3's older update, arriving at n1 afterwards, created key 2 again on n1 only.
 */
test('a primary key change leaves a tombstone for the old key on its own node too', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const n1 = cluster.node('n1');
    await n1.sql.unsafe(`INSERT INTO t VALUES (2, 'from n1')`);
    await barrier(cluster);
    await cluster.stopAgent('n1');
    await cluster.node('n3').sql.unsafe(`UPDATE t SET v = 'from n3' WHERE k = 2`);
    await n1.sql.unsafe(`UPDATE t SET k = 5 WHERE k = 2`);
    // An UPDATE that leaves the key alone records nothing.
    await n1.sql.unsafe(`UPDATE t SET v = 'from n1, moved' WHERE k = 5`);
    const tombstones = await n1.sql.unsafe<{ pkey: string }[]>(`SELECT pkey FROM pgmesh.tombstone ORDER BY pkey`);
    assert.deepEqual(tombstones.map((t) => t.pkey), ['[2]']);
    await cluster.startAgents(['n1']);
    await barrier(cluster);
    for (const node of cluster.nodes) assert.deepEqual(await rows(node), [{ k: 5, v: 'from n1, moved' }], `${node.name}: key 2 is gone, key 5 holds the row`);
  });
});

/**
 * Topology: 2 nodes, agents in this process; n2's agent stopped for a while.
 * Scenario: both nodes insert key 1 while they cannot see each other (n1 first); then a local transaction on n2
 * deletes key 1 and stays open while n2's apply session brings n1's insert of key 1 (the fast path: a plain INSERT,
 * which waits for the open delete); the delete commits. The delete is the newest change of key 1: no node keeps it.
 * Without the code under test: the fast insert checked for tombstones on its snapshot, taken before the delete
 * committed, then its unique check waited for the delete and went on: n2 kept n1's row, n1 dropped its own when
 * n2's delete arrived, and the nodes stayed different for good.
 */
test('a fast-path insert that waits for a local delete of its key does not bring the row back', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await cluster.startAgents(['n1']);
    await n1.sql.unsafe(`INSERT INTO t VALUES (1, 'from n1'), (2, 'untouched')`);
    await n2.sql.unsafe(`INSERT INTO t VALUES (1, 'from n2')`);
    const deleter = await n2.sql.reserve();
    try {
      await deleter.unsafe('BEGIN');
      await deleter.unsafe('DELETE FROM t WHERE k = 1');
      await cluster.startAgents(['n2']);
      await eventually(
        async () => (await n2.sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgmesh apply n1' AND wait_event_type = 'Lock'`)).length > 0,
        { what: "n2's apply of n1's insert to wait for the local delete" },
      );
      await deleter.unsafe('COMMIT');
    } finally {
      deleter.release();
    }
    await barrier(cluster);
    for (const node of cluster.nodes) assert.deepEqual(await rows(node), [{ k: 2, v: 'untouched' }], `${node.name}: the newest change of key 1 is its delete`);
  });
});

/**
 * Topology: 2 nodes, agents in this process, both stopped while the two writes are made (neither sees the other's).
 * Scenario: a table with a delta column; n1 moves a row to another key (an UPDATE of the primary key), and n2, later,
 * adds to the balance of the row under its old key. A key change is the old key's delete and the new key's insert:
 * n2's later update wins over the delete (the old key stays, with its balance), and the new key is there too.
 * Found by convergence-links (seed 1258670184). Without the code under test: a delta table's key change was applied
 * as one update of the old key, which lost whole (the new key included) where the old key's row was newer: n2 never
 * got the new key while n1 had both, for good.
 */
test('a delta table: a key change is the old key delete and the new key insert, also where the old key is newer', { timeout: 120_000 }, async () => {
  const schema = `CREATE TABLE acct (k integer PRIMARY KEY, v text, bal numeric NOT NULL); ${BARRIER_TABLE}`;
  await withCluster({ nodes: 2, schema }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'acct' }, ['bal']);
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO acct VALUES (2, 'a', 10)`);
    await barrier(cluster);
    await cluster.stopAgent('n1');
    await cluster.stopAgent('n2');
    await n1.sql.unsafe(`UPDATE acct SET k = 1 WHERE k = 2`);
    await n2.sql.unsafe(`UPDATE acct SET bal = bal - 40 WHERE k = 2`);
    await cluster.startAgents();
    await barrier(cluster);
    const expected = [
      { k: 1, v: 'a', bal: '10' },
      { k: 2, v: 'a', bal: '-30' },
    ];
    for (const node of cluster.nodes) {
      const got = await node.sql.unsafe<{ k: number; v: string; bal: string }[]>(`SELECT k, v, bal::text AS bal FROM acct ORDER BY k`);
      assert.deepEqual(got.map((r) => ({ ...r })), expected, `acct on ${node.name}`);
    }
  });
});
