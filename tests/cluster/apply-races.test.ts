/**
 * Two peers' changes of one key applied at the same time on one node (src/apply/key-lock.ts). Each scenario holds
 * one apply session of n1 inside a remote transaction, after the change under test and before its commit (the
 * transaction goes on to update a gate row that a local session of n1 keeps locked), lets the other peer's change
 * of the same key reach n1 meanwhile, then lets the first commit.
 * Topology: 3 nodes, agents in this process; links held by pausing a peer in the receiving node's catalog.
 * Without the code under test: each apply statement decided on its own snapshot, which did not hold the other
 * session's uncommitted tombstone or row; both committed, and n1 ended with a row (and a tombstone that should have
 * removed it) that n2 and n3, which saw the two changes one after the other, do not have.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier, linkBarrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { holdLinks, releaseLinks } from '../support/links.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text); CREATE TABLE users (k integer PRIMARY KEY, email text UNIQUE);
  CREATE TABLE gate (id integer PRIMARY KEY, v text); ${BARRIER_TABLE}`;
const rows = (node: TestNode) => node.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM t ORDER BY k`).then((r) => r.map((x) => ({ ...x })));

/** Whether n1's apply session of `peer` waits for a lock (a row's, or a key's advisory lock). */
async function applyWaits(n1: TestNode, peer: string): Promise<boolean> {
  const waiting = await n1.sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, [`pgmesh apply ${peer}`]);
  return waiting.length > 0;
}

/**
 * Runs `scenario` with n1's gate row locked by a local transaction (so that a remote transaction that updates the
 * gate stops there, uncommitted), then rolls that transaction back and waits for every link.
 */
async function withGateLocked(cluster: TestCluster, scenario: () => Promise<void>): Promise<void> {
  const locker = await cluster.node('n1').sql.reserve();
  try {
    await locker.unsafe('BEGIN');
    await locker.unsafe('SELECT * FROM gate WHERE id = 1 FOR UPDATE');
    await scenario();
    await locker.unsafe('ROLLBACK');
  } finally {
    locker.release();
  }
  await barrier(cluster);
}

async function start(cluster: TestCluster): Promise<void> {
  await cluster.startAgents();
  await cluster.node('n1').sql.unsafe(`INSERT INTO gate VALUES (1, 'open')`);
  await barrier(cluster);
}

/**
 * Scenario: n3 inserts key 1; n2 receives it and deletes it (the newer change). n1 receives n2's delete first (key 1
 * is missing there: a tombstone only), held before its commit; then n3's older insert. The delete is the newest
 * change of key 1: no node keeps it.
 */
test("an insert that reaches a node while another peer's delete of its missing row is being applied stays deleted", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await start(cluster);
    await holdLinks(cluster, [{ from: 'n3', to: 'n1' }]);
    await n3.sql.unsafe(`INSERT INTO t VALUES (1, 'from n3')`);
    await linkBarrier(cluster, { from: 'n3', to: 'n2' });
    await withGateLocked(cluster, async () => {
      await n2.sql.begin(async (tx) => {
        await tx.unsafe(`DELETE FROM t WHERE k = 1`);
        await tx.unsafe(`UPDATE gate SET v = 'n2 deleted key 1' WHERE id = 1`);
      });
      await eventually(() => applyWaits(n1, 'n2'), { what: "n1's apply of n2's delete to stop at the gate" });
      await releaseLinks(cluster, [{ from: 'n3', to: 'n1' }]);
      // n3's insert has been applied on n1, or waits for the delete's transaction.
      await eventually(async () => (await rows(n1)).length > 0 || (await applyWaits(n1, 'n3')), { what: "n1's apply of n3's insert to run" });
    });
    for (const node of cluster.nodes) assert.deepEqual(await rows(node), [], `${node.name}: the newest change of key 1 is its delete`);
  });
});

/**
 * Scenario: n3 inserts key 1; n1 applies the insert and is held before its commit. n2 receives the insert and
 * deletes key 1 (the newer change); n1 receives that delete while the insert is still uncommitted (key 1 is missing
 * on the delete's snapshot). No node keeps key 1.
 */
test("a delete that reaches a node while another peer's insert of its row is being applied removes it", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await start(cluster);
    await holdLinks(cluster, [{ from: 'n2', to: 'n1' }]);
    await withGateLocked(cluster, async () => {
      await n3.sql.begin(async (tx) => {
        await tx.unsafe(`INSERT INTO t VALUES (1, 'from n3')`);
        await tx.unsafe(`UPDATE gate SET v = 'n3 inserted key 1' WHERE id = 1`);
      });
      await eventually(() => applyWaits(n1, 'n3'), { what: "n1's apply of n3's insert to stop at the gate" });
      await linkBarrier(cluster, { from: 'n3', to: 'n2' });
      await n2.sql.unsafe(`DELETE FROM t WHERE k = 1`);
      await releaseLinks(cluster, [{ from: 'n2', to: 'n1' }]);
      // n2's delete has been applied on n1 (its tombstone), or waits for the insert's transaction.
      const tombstone = async () => (await n1.sql.unsafe(`SELECT 1 FROM pgmesh.tombstone WHERE pkey = '[1]'`)).length > 0;
      await eventually(async () => (await tombstone()) || (await applyWaits(n1, 'n2')), { what: "n1's apply of n2's delete to run" });
    });
    for (const node of cluster.nodes) assert.deepEqual(await rows(node), [], `${node.name}: the newest change of key 1 is its delete`);
  });
});

/**
 * Scenario: n3 inserts key 5; n2 receives it, then truncates the table (the newer change). n1 receives n2's
 * TRUNCATE first, held before its commit; then n3's older insert. Every row written before the truncate is gone.
 */
test("an insert that reaches a node while another peer's newer TRUNCATE is being applied is removed with it", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await start(cluster);
    await holdLinks(cluster, [{ from: 'n3', to: 'n1' }]);
    await n3.sql.unsafe(`INSERT INTO t VALUES (5, 'from n3')`);
    await linkBarrier(cluster, { from: 'n3', to: 'n2' });
    await withGateLocked(cluster, async () => {
      await n2.sql.begin(async (tx) => {
        await tx.unsafe(`TRUNCATE t`);
        await tx.unsafe(`UPDATE gate SET v = 'n2 truncated t' WHERE id = 1`);
      });
      await eventually(() => applyWaits(n1, 'n2'), { what: "n1's apply of n2's truncate to stop at the gate" });
      await releaseLinks(cluster, [{ from: 'n3', to: 'n1' }]);
      await eventually(async () => (await rows(n1)).length > 0 || (await applyWaits(n1, 'n3')), { what: "n1's apply of n3's insert to run" });
    });
    for (const node of cluster.nodes) assert.deepEqual(await rows(node), [], `${node.name}: what was written before the truncate is gone`);
  });
});

/**
 * Scenario: n1 inserts key 1 (everywhere), then deletes it while n2 and n3 do not hear from it. n3 updates key 1
 * (n1 applies the update as an insert: its tombstone is older), held before its commit; n2 then deletes key 1 (the
 * newest change), which reaches n1 while the update is uncommitted (key 1 is missing on the delete's snapshot).
 */
test("a delete that reaches a node while another peer's update of its missing row is being applied removes it", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await start(cluster);
    await n1.sql.unsafe(`INSERT INTO t VALUES (1, 'from n1')`);
    await barrier(cluster);
    const held = [
      { from: 'n1', to: 'n2' },
      { from: 'n1', to: 'n3' },
      { from: 'n2', to: 'n1' },
    ];
    await holdLinks(cluster, held);
    await n1.sql.unsafe(`DELETE FROM t WHERE k = 1`);
    await withGateLocked(cluster, async () => {
      await n3.sql.begin(async (tx) => {
        await tx.unsafe(`UPDATE t SET v = 'updated on n3' WHERE k = 1`);
        await tx.unsafe(`UPDATE gate SET v = 'n3 updated key 1' WHERE id = 1`);
      });
      await eventually(() => applyWaits(n1, 'n3'), { what: "n1's apply of n3's update to stop at the gate" });
      await linkBarrier(cluster, { from: 'n3', to: 'n2' });
      await n2.sql.unsafe(`DELETE FROM t WHERE k = 1`);
      await releaseLinks(cluster, [{ from: 'n2', to: 'n1' }]);
      const deleted = async () =>
        (await n1.sql.unsafe(`SELECT 1 FROM pgmesh.conflict WHERE remote_node = 'n2' AND conflict_type = 'delete_missing'`)).length > 0;
      await eventually(async () => (await deleted()) || (await applyWaits(n1, 'n2')), { what: "n1's apply of n2's delete to run" });
      await releaseLinks(cluster, held);
    });
    for (const node of cluster.nodes) assert.deepEqual(await rows(node), [], `${node.name}: the newest change of key 1 is its delete`);
  });
});

/**
 * Scenario (a unique value, two keys): while they do not hear from each other, n3 inserts user 2 with email e, then
 * n2 user 1 with e, then n1 user 1 with another email. n1's user 1 is the newest of key 1, so n2's user 1 loses on
 * its key, but it held e after n3's user 2 took it: user 2 gives way on every node (docs/conflicts.md, "A value
 * remembers who held it"). n1 applies n2's user 1 (kept out, its claim on e recorded), held before its commit, and
 * receives n3's user 2 meanwhile (no row holds e there, and the claim is uncommitted).
 */
test("a row that takes a unique value while another peer's claim on it is being applied gives way", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await start(cluster);
    const held = [
      { from: 'n3', to: 'n1' },
      { from: 'n2', to: 'n1' },
      { from: 'n3', to: 'n2' },
    ];
    await holdLinks(cluster, held);
    await n3.sql.unsafe(`INSERT INTO users VALUES (2, 'e@example.com')`);
    await n2.sql.begin(async (tx) => {
      await tx.unsafe(`INSERT INTO users VALUES (1, 'e@example.com')`);
      await tx.unsafe(`UPDATE gate SET v = 'n2 inserted user 1' WHERE id = 1`);
    });
    await n1.sql.unsafe(`INSERT INTO users VALUES (1, 'x@example.com')`);
    const users = (node: TestNode) => node.sql.unsafe<{ k: number; email: string }[]>(`SELECT k, email FROM users ORDER BY k`).then((r) => r.map((x) => ({ ...x })));
    await withGateLocked(cluster, async () => {
      await releaseLinks(cluster, [{ from: 'n2', to: 'n1' }]);
      await eventually(() => applyWaits(n1, 'n2'), { what: "n1's apply of n2's user 1 to stop at the gate" });
      await releaseLinks(cluster, [{ from: 'n3', to: 'n1' }]);
      await eventually(async () => (await users(n1)).length > 1 || (await applyWaits(n1, 'n3')), { what: "n1's apply of n3's user 2 to run" });
      await releaseLinks(cluster, held);
    });
    for (const node of cluster.nodes) assert.deepEqual(await users(node), [{ k: 1, email: 'x@example.com' }], `${node.name}: user 2 gave way to the newer holder of e`);
  });
});
