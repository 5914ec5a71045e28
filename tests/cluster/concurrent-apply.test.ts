/**
 * Topology: 2 nodes, agents in this process.
 * Scenario: a local transaction on n1 deletes a row and holds it uncommitted; n2 updates the same row (an older
 * version than the delete will get); n1's apply session reaches that row while the delete is still open, then
 * the delete commits. The delete is the newest change of the row, so it must win on both nodes.
 * Without the code under test: the apply statement decided on its snapshot (row present, remote newer), its
 * INSERT ... ON CONFLICT found the row gone once the delete committed and created it again: n1 kept the row, n2
 * dropped it when n1's delete arrived, and the nodes stayed different for good.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';

const rows = (node: TestNode) => node.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM t ORDER BY k`).then((r) => r.map((x) => ({ ...x })));

test('a local delete that commits while an older remote update of its row waits for it wins on every node', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}` }, async (cluster) => {
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
