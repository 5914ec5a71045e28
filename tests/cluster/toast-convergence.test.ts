/**
 * Out-of-line (TOAST) values and convergence. pgoutput sends an out-of-line value that an update did not change as
 * "unchanged" instead of the value; the receiver takes it from the old row (replicated tables have REPLICA IDENTITY
 * FULL), so an update carries the whole row and the newest version wins whole in every delivery order.
 *
 * Topology of every test: 3 nodes, agents in this process; the receiver under test is n3. Single links are held
 * (tests/support/links.ts) to choose the order in which n3 receives changes. Each row has a large, incompressible text
 * (md5 chain, about 8 KB, STORAGE EXTERNAL) stored out of line, which the updates under test leave unchanged.
 * Without the code under test: an update whose row is missing on n3 was skipped (its out-of-line value was unknown),
 * and one applied over a different local version kept n3's out-of-line value; delta tables created a missing row
 * with NULL in the unchanged column. n3 then differed from n1 and n2 for good.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { BARRIER_TABLE, barrier, linkBarrier } from '../support/barrier.ts';
import { withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { holdLinks, releaseLinks, type Link } from '../support/links.ts';

const SCHEMA = `
  CREATE FUNCTION big_text(seed text) RETURNS text LANGUAGE sql IMMUTABLE AS
    $$ SELECT string_agg(md5(seed || ':' || i), '' ORDER BY i) FROM generate_series(1, 256) i $$;
  CREATE TABLE doc (id integer PRIMARY KEY, note text NOT NULL, body text);
  ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL;
  CREATE TABLE account (id integer PRIMARY KEY, note text NOT NULL, balance numeric NOT NULL, body text);
  ALTER TABLE account ALTER COLUMN body SET STORAGE EXTERNAL;
  ${BARRIER_TABLE}`;

async function declareDelta(cluster: TestCluster): Promise<void> {
  for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'account' }, ['balance']);
}

/** The rows as a test reads them: the big value by its hash. */
async function rows(node: TestNode, table: string): Promise<Record<string, unknown>[]> {
  const result = await node.sql.unsafe(`SELECT *, md5(body) AS body FROM ${table} t ORDER BY id`);
  return result.map((r) => ({ ...r }));
}

/** The big value is stored out of line (so the test tests what it says). */
async function assertOutOfLine(node: TestNode, table: string): Promise<void> {
  const toast = await node.sql.unsafe<{ rel: string }[]>(`SELECT reltoastrelid::regclass::text AS rel FROM pg_catalog.pg_class WHERE oid = $1::regclass`, [table]);
  const chunks = await node.sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM ${toast[0]?.rel}`);
  assert.ok((chunks[0]?.n ?? 0) > 0, `${table}'s big values are stored out of line on ${node.name}`);
}

/** Every node holds the same full rows (hash of whole rows), and they are `expected`. */
async function assertConverged(cluster: TestCluster, table: string, expected: Record<string, unknown>[]): Promise<void> {
  const hashes = await Promise.all(cluster.nodes.map((n) => cluster.tableHash(n, table)));
  for (const node of cluster.nodes) assert.deepEqual(await rows(node, table), expected, `${node.name}: ${table} holds the newest version whole`);
  assert.equal(new Set(hashes).size, 1, `every node holds the same rows of ${table}: ${hashes.join(' ')}`);
}

const md5 = async (node: TestNode, seed: string) => (await node.sql.unsafe<{ h: string }[]>(`SELECT md5(big_text($1)) AS h`, [seed]))[0]?.h;

test("an update of a row whose insert has not reached n3 yet brings the whole row there, out-of-line value included", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const held: Link[] = [{ from: 'n1', to: 'n3' }];
    await holdLinks(cluster, held);
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO doc VALUES (1, 'inserted on n1', big_text('one'))`);
    await linkBarrier(cluster, { from: 'n1', to: 'n2' });
    await n2.sql.unsafe(`UPDATE doc SET note = 'updated on n2' WHERE id = 1`);
    // n3 receives the update first: the row is not there yet.
    await linkBarrier(cluster, { from: 'n2', to: 'n3' });
    await releaseLinks(cluster, held);
    await barrier(cluster);
    await assertOutOfLine(n1, 'doc');
    await assertConverged(cluster, 'doc', [{ id: 1, note: 'updated on n2', body: await md5(n1, 'one') }]);
  });
});

test('an update of a row that an older delete removed on n3 brings the whole row back there', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await n1.sql.unsafe(`INSERT INTO doc VALUES (1, 'inserted on n1', big_text('one'))`);
    await barrier(cluster);
    // n3's delete reaches nobody until the end: n2 updates the row it still has, later than the delete.
    const held: Link[] = [{ from: 'n3', to: 'n1' }, { from: 'n3', to: 'n2' }];
    await holdLinks(cluster, held);
    await n3.sql.unsafe(`DELETE FROM doc WHERE id = 1`);
    await n2.sql.unsafe(`UPDATE doc SET note = 'updated on n2' WHERE id = 1`);
    await linkBarrier(cluster, { from: 'n2', to: 'n3' });
    await releaseLinks(cluster, held);
    await barrier(cluster);
    await assertOutOfLine(n1, 'doc');
    await assertConverged(cluster, 'doc', [{ id: 1, note: 'updated on n2', body: await md5(n1, 'one') }]);
  });
});

/**
 * n3 changes the big value; n2, not having seen that yet, changes only the note, later. n2's version is the newest
 * and must win whole on n3: its note and its (unchanged) big value. Within the conflict window (the full statements).
 */
test("an update over n3's different, older version replaces n3's out-of-line value too (conflict inside the window)", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    await updateOverOlderVersion(cluster);
  });
});

/** The same outside the conflict window (a window of 0 ms), where the fast path applies the update. */
test("an update over n3's different, older version replaces n3's out-of-line value too (fast path)", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA, tuning: { conflictWindowMs: 0 } }, async (cluster) => {
    await cluster.startAgents();
    await updateOverOlderVersion(cluster);
  });
});

async function updateOverOlderVersion(cluster: TestCluster): Promise<void> {
  const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
  await n1.sql.unsafe(`INSERT INTO doc VALUES (1, 'inserted on n1', big_text('one'))`);
  await barrier(cluster);
  const held: Link[] = [{ from: 'n3', to: 'n1' }, { from: 'n3', to: 'n2' }];
  await holdLinks(cluster, held);
  await n3.sql.unsafe(`UPDATE doc SET body = big_text('three') WHERE id = 1`);
  await n2.sql.unsafe(`UPDATE doc SET note = 'updated on n2' WHERE id = 1`);
  await linkBarrier(cluster, { from: 'n2', to: 'n3' });
  await releaseLinks(cluster, held);
  await barrier(cluster);
  await assertOutOfLine(n1, 'doc');
  await assertConverged(cluster, 'doc', [{ id: 1, note: 'updated on n2', body: await md5(n1, 'one') }]);
}

test('a delta table: an update of a row whose insert has not reached n3 yet does not bring it back with NULL in unchanged columns', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await declareDelta(cluster);
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const held: Link[] = [{ from: 'n1', to: 'n3' }];
    await holdLinks(cluster, held);
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO account VALUES (1, 'opened on n1', 100, big_text('one'))`);
    await linkBarrier(cluster, { from: 'n1', to: 'n2' });
    await n2.sql.unsafe(`UPDATE account SET balance = balance + 5 WHERE id = 1`);
    await linkBarrier(cluster, { from: 'n2', to: 'n3' });
    await releaseLinks(cluster, held);
    await barrier(cluster);
    await assertOutOfLine(n1, 'account');
    await assertConverged(cluster, 'account', [{ id: 1, note: 'opened on n1', balance: '105', body: await md5(n1, 'one') }]);
  });
});

test("a delta table: an update over n3's different, older version replaces n3's out-of-line value, and the deltas add up", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await declareDelta(cluster);
    await cluster.startAgents();
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await n1.sql.unsafe(`INSERT INTO account VALUES (1, 'opened on n1', 100, big_text('one'))`);
    await barrier(cluster);
    const held: Link[] = [{ from: 'n3', to: 'n1' }, { from: 'n3', to: 'n2' }];
    await holdLinks(cluster, held);
    await n3.sql.unsafe(`UPDATE account SET body = big_text('three'), balance = balance + 1 WHERE id = 1`);
    await n2.sql.unsafe(`UPDATE account SET note = 'renamed on n2', balance = balance + 10 WHERE id = 1`);
    await linkBarrier(cluster, { from: 'n2', to: 'n3' });
    await releaseLinks(cluster, held);
    await barrier(cluster);
    await assertOutOfLine(n1, 'account');
    await assertConverged(cluster, 'account', [{ id: 1, note: 'renamed on n2', balance: '111', body: await md5(n1, 'one') }]);
  });
});
