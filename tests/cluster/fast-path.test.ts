/**
 * The fast path and its fallback (src/apply/applier.ts): a batch of changes is first written by a plain statement
 * that raises PM004 when a row is not the common case; the transaction is then applied again with the full
 * statements, which detect, resolve and record the conflict. These tests put a conflict behind and inside
 * pipelined work and check that nothing is lost, nothing is applied twice, and the conflict is recorded once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text NOT NULL); ${BARRIER_TABLE}`;

async function applied(node: TestNode, peer: string): Promise<number> {
  const rows = await node.sql.unsafe<{ n: string }[]>(`SELECT applied_xacts::text AS n FROM pgmesh.progress WHERE peer = $1`, [peer]);
  return Number(rows[0]?.n);
}

async function conflicts(node: TestNode): Promise<{ pkey: string; conflict_type: string; resolution: string }[]> {
  const rows = await node.sql.unsafe<{ pkey: string; conflict_type: string; resolution: string }[]>(
    `SELECT pkey, conflict_type, resolution FROM pgmesh.conflict ORDER BY id`,
  );
  return rows.map((r) => ({ ...r }));
}

function linkStatus(cluster: TestCluster, node: string, peer: string) {
  const status = cluster.agents.get(node)?.status().peers.find((p) => p.peer === peer);
  assert.ok(status, `${node}'s agent reports its link from ${peer}`);
  return status;
}

/**
 * Topology: 2 nodes, agents in this process, started after the writes.
 * Scenario: n2 inserts key 100 (older); then n1 commits 200 one-row transactions inserting keys 1..200 and 100
 * updates of them. When n2's agent starts, the stream arrives as a backlog and n2 pipelines many of n1's
 * transactions, several to a message; the one inserting key 100 meets n2's row on the fast path in the middle of a
 * message: those before it in the message committed, those behind it (in it and in later messages) were already sent
 * and fail with it.
 * Without the code under test (replay from the kept events, in order, the missed one with the full statements):
 * the transactions behind the miss would be lost or applied out of order, the conflict would not be recorded, or
 * the stream would have to restart.
 */
test('a conflict met on the fast path is applied with the full statements, in place, and nothing behind it is lost', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await n2.sql.unsafe(`INSERT INTO t VALUES (100, 'n2, older')`);
    for (let k = 1; k <= 200; k++) await n1.sql.unsafe(`INSERT INTO t VALUES ($1::text::int, 'n1')`, [String(k)]);
    for (let k = 1; k <= 100; k++) await n1.sql.unsafe(`UPDATE t SET v = v || '+' WHERE k = $1::text::int`, [String(k * 2)]);
    await cluster.startAgents();
    await barrier(cluster);

    const hashes = await cluster.waitConverged(['t'], 5_000);
    assert.match(hashes.t ?? '', /^200:/, 'both nodes hold the 200 rows');
    const rows = await n2.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM t WHERE k IN (99, 100, 101, 200) ORDER BY k`);
    assert.deepEqual(
      rows.map((r) => ({ ...r })),
      [
        { k: 99, v: 'n1' },
        { k: 100, v: 'n1+' },
        { k: 101, v: 'n1' },
        { k: 200, v: 'n1+' },
      ],
    );
    // n1's 300 transactions, then the barrier's: each applied exactly once.
    assert.equal(await applied(n2, 'n1'), 301);
    assert.deepEqual(await conflicts(n2), [{ pkey: '[100]', conflict_type: 'insert_exists', resolution: 'apply_remote' }]);
    const link = linkStatus(cluster, 'n2', 'n1');
    assert.ok(link.fastPathMisses >= 1, `n2 applied a transaction again after a fast-path miss (${link.fastPathMisses})`);
    assert.equal(link.restarts, 0, 'the stream was not restarted for it');
    assert.equal(link.lastError, null);
  });
});

/**
 * Topology: 2 nodes, agents in this process, started after the writes.
 * Scenario: n2 inserts key 1000 (older); then n1 commits 3,000 one-row transactions (keys 1..3000). n2's applier
 * pipelines the backlog until 1,024 transactions are unconfirmed and waits for room; the transaction inserting key
 * 1000 misses the fast path while it waits (about a thousand transactions behind it are sent), and every message
 * behind it fails too, so those transactions never become confirmed.
 * Without the code under test (the applier also wakes when a failure came back, not only when the unconfirmed count
 * falls): it would wait for room forever, and n2 would stop applying without an error.
 */
test('a fast-path miss while the pipeline is full wakes the applier, which applies it again and goes on', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await n2.sql.unsafe(`INSERT INTO t VALUES (1000, 'n2, older')`);
    // One transaction per row, committed inside one DO block (one round trip for all of them).
    await n1.sql.unsafe(`DO $$ BEGIN FOR k IN 1..3000 LOOP INSERT INTO t VALUES (k, 'n1'); COMMIT; END LOOP; END $$`);
    await cluster.startAgents();
    await barrier(cluster);

    const hashes = await cluster.waitConverged(['t'], 5_000);
    assert.match(hashes.t ?? '', /^3000:/, 'both nodes hold the 3,000 rows');
    assert.deepEqual(
      (await n2.sql.unsafe<{ v: string }[]>(`SELECT v FROM t WHERE k = 1000`)).map((r) => r.v),
      ['n1'],
      "n1's newer insert won on n2",
    );
    // n1's 3,000 transactions, then the barrier's: each applied exactly once.
    assert.equal(await applied(n2, 'n1'), 3001);
    assert.deepEqual(await conflicts(n2), [{ pkey: '[1000]', conflict_type: 'insert_exists', resolution: 'apply_remote' }]);
    const link = linkStatus(cluster, 'n2', 'n1');
    assert.ok(link.fastPathMisses >= 1, `n2 applied a transaction again after a fast-path miss (${link.fastPathMisses})`);
    assert.equal(link.lastError, null);
  });
});

/**
 * Topology: 2 nodes, agents in this process, started after the writes.
 * Scenario: n2 inserts key 60000 (older); n1 inserts keys 1..60000 in one transaction, more changes than the
 * applier keeps for replay, so the miss on the last row is handled by restarting the stream and applying the
 * transaction with the full statements from its start.
 * Without the code under test: the transaction would be retried on the fast path forever, applied half, or
 * counted as an error.
 */
test('a conflict in a transaction too large to replay in place: the stream restarts and applies it with the full statements', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await n2.sql.unsafe(`INSERT INTO t VALUES (60000, 'n2, older')`);
    await n1.sql.unsafe(`INSERT INTO t SELECT g, 'n1' FROM generate_series(1, 60000) g`);
    await cluster.startAgents();
    await barrier(cluster, 120_000);

    const hashes = await cluster.waitConverged(['t'], 5_000);
    assert.match(hashes.t ?? '', /^60000:/, 'both nodes hold the 60,000 rows');
    const last = await n2.sql.unsafe<{ v: string }[]>(`SELECT v FROM t WHERE k = 60000`);
    assert.equal(last[0]?.v, 'n1', "n1's newer insert won on n2");
    assert.equal(await applied(n2, 'n1'), 2, "n1's transaction and the barrier's, each applied once");
    assert.deepEqual(await conflicts(n2), [{ pkey: '[60000]', conflict_type: 'insert_exists', resolution: 'apply_remote' }]);
    const link = linkStatus(cluster, 'n2', 'n1');
    assert.ok(link.fastPathMisses >= 1);
    assert.ok(link.restarts >= 1, 'the stream restarted to apply the large transaction again');
    assert.equal(link.lastError, null, 'a fast-path miss is not an error');
  });
});

/**
 * Topology: 2 nodes, agents in this process.
 * Scenario: rows 1..6 replicate to both nodes; both agents stop. n2 writes locally: updates row 3, deletes row 4,
 * updates row 5. Then n1, later by its clock, in one-statement transactions: updates 3, updates 4, deletes 5, and
 * updates 6 (no conflict). The agents start. On n2, each of n1's first three transactions meets a local version the
 * fast path must not overwrite blindly (written by n2 within the conflict window, or deleted): the first one's count
 * of the rows it wrote (in its one statement, which also finishes the transaction) must fail it, so it is applied
 * again with the full statements, which resolve (n1 is newer: n1 wins) and record the conflict; the
 * table then takes the full statements for a while, so the next two are resolved there.
 * Without the code under test (a check that lets a fast update or delete write nothing): n1's update of 3 and
 * delete of 5 would be dropped on n2 and the nodes would diverge, with no conflict recorded.
 */
test('a fast update or delete that writes nothing in a one-statement transaction is applied again with the full statements', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO t SELECT g, 'first' FROM generate_series(1, 6) g`);
    await cluster.waitConverged(['t'], 30_000);
    await cluster.stopAgent('n1');
    await cluster.stopAgent('n2');

    await n2.sql.unsafe(`UPDATE t SET v = 'n2' WHERE k = 3`);
    await n2.sql.unsafe(`DELETE FROM t WHERE k = 4`);
    await n2.sql.unsafe(`UPDATE t SET v = 'n2' WHERE k = 5`);
    await new Promise((resolve) => setTimeout(resolve, 50)); // n1's writes are newer by the clock
    for (const statement of [`UPDATE t SET v = 'n1' WHERE k = 3`, `UPDATE t SET v = 'n1' WHERE k = 4`, `DELETE FROM t WHERE k = 5`, `UPDATE t SET v = 'n1' WHERE k = 6`]) {
      await n1.sql.unsafe(statement);
    }
    await cluster.startAgents();
    await barrier(cluster);

    await cluster.waitConverged(['t'], 10_000);
    const rows = await n2.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM t ORDER BY k`);
    assert.deepEqual(
      rows.map((r) => ({ ...r })),
      [
        { k: 1, v: 'first' },
        { k: 2, v: 'first' },
        { k: 3, v: 'n1' },
        { k: 4, v: 'n1' },
        { k: 6, v: 'n1' },
      ],
      "n1's newer update of 3, update of the deleted 4 and delete of 5 won on n2",
    );
    const recorded = (await conflicts(n2)).map((c) => `${c.pkey} ${c.conflict_type} ${c.resolution}`).sort();
    assert.deepEqual(recorded, ['[3] update_origin_differs apply_remote', '[4] update_missing apply_remote', '[5] delete_origin_differs apply_remote']);
    const link = linkStatus(cluster, 'n2', 'n1');
    // The first miss sends the table to the full statements for a while, so the others need not miss to be right.
    assert.ok(link.fastPathMisses >= 1, `n2 applied a transaction of n1 again after a fast-path miss (${link.fastPathMisses})`);
    assert.equal(link.lastError, null);
  });
});
