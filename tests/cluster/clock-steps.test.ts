/**
 * Topology: 2 nodes, agents in this process.
 * Scenario: n1's clock ran an hour ahead when it wrote two rows (one updated, one deleted), then stepped back to the
 * right time; n1 then updates the first row again and inserts the second key again. Its later changes carry older
 * timestamps than the versions they replace. The versions "written an hour ahead" are made in origin sessions with a
 * commit timestamp an hour from now: on n2 with n1's replication origin (as if applied from n1's stream), on n1 with
 * an origin that is not published (so n1 holds the same rows without sending them).
 * Changes from one peer must apply in that peer's commit order, whatever their timestamps.
 * Without the code under test: n2 compares timestamps only, finds its versions (an hour ahead, from n1) newer than
 * n1's later changes, drops them, and keeps the old row and the tombstone for good.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { linkNames } from '../support/slots.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { writtenAnHourAhead } from '../support/clock.ts';
import { withCluster, type TestNode } from '../support/cluster.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}`;
const rows = (node: TestNode) => node.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM t ORDER BY k`).then((r) => r.map((x) => ({ ...x })));

test('a peer whose clock stepped back still has its later changes applied everywhere', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO t VALUES (1, 'first'), (2, 'first')`);
    await barrier(cluster);

    // n2's apply session for n1 holds n1's origin while the agent runs.
    await cluster.stopAgent('n2');
    for (const [node, origin] of [
      [n1, 'pgmesh_test_unpublished'],
      [n2, (await linkNames(n2, 'n1')).origin],
    ] as const) {
      await writtenAnHourAhead(node.sql, origin, async (tx) => {
        await tx.unsafe(`UPDATE t SET v = 'written an hour ahead' WHERE k = 1`);
        await tx.unsafe(`DELETE FROM t WHERE k = 2`);
        await tx.unsafe(`INSERT INTO pgmesh.tombstone (relid, pkey) VALUES ('t'::regclass, '[2]') ON CONFLICT DO NOTHING`);
      });
    }
    const version = await n2.sql.unsafe<{ ahead: boolean; node: string }[]>(
      `SELECT v.ts > now() + interval '30 minutes' AS ahead, v.node FROM t, pgmesh.row_version(t.xmin, 'n2') v WHERE k = 1`,
    );
    assert.deepEqual(version.map((r) => ({ ...r })), [{ ahead: true, node: 'n1' }], "n2's row carries n1's version an hour ahead");
    await cluster.startAgents(['n2']);

    // n1's clock is right again: these commit an hour "before" the versions they replace.
    await n1.sql.unsafe(`UPDATE t SET v = 'after the step' WHERE k = 1`);
    await n1.sql.unsafe(`INSERT INTO t VALUES (2, 'inserted again')`);
    await barrier(cluster);

    const expected = [
      { k: 1, v: 'after the step' },
      { k: 2, v: 'inserted again' },
    ];
    assert.deepEqual(await rows(n1), expected);
    assert.deepEqual(await rows(n2), expected, "n2 applied n1's later changes in n1's order");
    const conflicts = await n2.sql.unsafe(`SELECT conflict_type FROM pgmesh.conflict`);
    assert.equal(conflicts.length, 0, 'changes of one peer in its own order are not conflicts');
  });
});
