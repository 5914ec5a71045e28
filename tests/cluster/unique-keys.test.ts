/**
 * Topology: 3 nodes (n1, n2, n3), full mesh, agents in this process; one cluster shared by the tests of this file,
 * each on its own tables; every test restarts the agents, so their conflict counters start at zero.
 * Scenario: rows that collide on a unique constraint other than the primary key, written while the writers could not
 * see each other. Streams are held (agents stopped, or one inbound stream of n3 held) and released, so that n3
 * receives the writes in a known order. Every test ends with every node holding the same rows (hash-equal), the row
 * that lost whole in every node's conflict log (PostgreSQL 18's conflict types), and nothing in the exception tables.
 * Without the code under test: the losing change goes to the exception table and the nodes stay different for good
 * (each keeps the row it had); an older row that arrives after its newer rival let go of the value stays on some
 * nodes only (claims); a row that loses on one constraint does not evict the older rows it beat on another; a row
 * that lost cannot be written back.
 */
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { listConflicts, restoreConflict, resumePeer, setDeltaColumns, setTablePolicy } from '../../src/cluster/repair.ts';
import { TestCluster, eventually, type TestNode } from '../support/cluster.ts';
import { pgmesh as runCli } from '../support/cli.ts';
import {
  baseline,
  commit,
  conflictsSince,
  countersOf,
  exceptionsSince,
  expectConflicts,
  expectCounters,
  holdStream,
  peerStatus,
  releaseStream,
  restartAgents,
  tombstoneVersion,
  waitRow,
  type Baseline,
  type Conflict,
  type PerNode,
} from '../support/conflicts.ts';

const SCHEMA = `
CREATE TABLE older_first (id integer PRIMARY KEY, email text NOT NULL UNIQUE, v text);
CREATE TABLE newer_first (id integer PRIMARY KEY, email text NOT NULL UNIQUE, v text);
CREATE TABLE three (id integer PRIMARY KEY, email text NOT NULL UNIQUE, v text);
CREATE TABLE two_keys (id integer PRIMARY KEY, a text UNIQUE, b text UNIQUE);
CREATE TABLE moved (id integer PRIMARY KEY, email text UNIQUE, v text);
CREATE TABLE let_go (id integer PRIMARY KEY, email text UNIQUE);
CREATE TABLE wallet (id integer PRIMARY KEY, handle text NOT NULL UNIQUE, balance numeric(12, 2) NOT NULL);
CREATE TABLE member (id integer PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE purchase (id integer PRIMARY KEY, member_id integer NOT NULL REFERENCES member (id), item text);
CREATE TABLE kept (id integer PRIMARY KEY, email text NOT NULL UNIQUE, v text);
CREATE TABLE taken (id integer PRIMARY KEY, email text NOT NULL UNIQUE, v text);
CREATE TABLE paused (id integer PRIMARY KEY, email text NOT NULL UNIQUE, v text);
`;

let cluster: TestCluster;
let n1: TestNode;
let n2: TestNode;
let n3: TestNode;

before(async () => {
  cluster = await TestCluster.start({ nodes: 3, schema: SCHEMA, tuning: { retryBaseMs: 100, retryMaxMs: 1_000, progressPollMs: 100 } });
  [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
  for (const node of cluster.nodes) {
    await setDeltaColumns(node.sql, { schema: 'public', name: 'wallet' }, ['balance']);
    await setTablePolicy(node.sql, { schema: 'public', name: 'kept' }, { conflictPolicy: 'keep_local' });
    await setTablePolicy(node.sql, { schema: 'public', name: 'taken' }, { conflictPolicy: 'apply_remote' });
    await setTablePolicy(node.sql, { schema: 'public', name: 'paused' }, { conflictPolicy: 'pause' });
  }
});

after(async () => {
  await cluster?.destroy();
});

beforeEach(async () => {
  // A stream held by a test that failed must not hold the next one.
  for (const node of cluster.nodes) await node.sql.unsafe(`UPDATE pgmesh.apply_progress SET paused_at = NULL, paused_reason = NULL`);
});

/** Runs a scenario; on failure prints every node's agent status and server log tail. */
function scenario(name: string, body: () => Promise<void>): void {
  test(name, { timeout: 180_000 }, async () => {
    try {
      await body();
    } catch (error) {
      process.stderr.write(`\n${cluster.diagnostics()}\n`);
      throw error;
    }
  });
}

async function rowsOf(node: TestNode, table: string): Promise<unknown[]> {
  const rows = await node.sql.unsafe<{ r: string }[]>(`SELECT to_jsonb(t)::text AS r FROM ${table} t ORDER BY id`);
  return rows.map((r) => JSON.parse(r.r) as unknown);
}

/** Waits until every node holds the same rows of these tables, then checks they are `expected`. */
async function expectEverywhere(tables: Record<string, unknown[]>): Promise<void> {
  await cluster.waitConverged(Object.keys(tables));
  for (const node of cluster.nodes) {
    for (const [table, rows] of Object.entries(tables)) assert.deepEqual(await rowsOf(node, table), rows, `${table} on ${node.name}`);
  }
}

async function expectNoExceptions(since: Baseline): Promise<void> {
  for (const node of cluster.nodes) assert.deepEqual(await exceptionsSince(node, since), [], `exceptions on ${node.name}`);
}

/** The row a conflict record says lost: the local one when the remote change won, else the remote one. */
function loser(c: Conflict): unknown {
  return c.resolution === 'apply_remote' ? c.local.row : c.remote.row;
}

/** Records in a stable order, for nodes that record several conflicts of one change in one statement. */
function sorted(records: readonly Conflict[]): Conflict[] {
  return [...records].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
}

const on = (relation: string) => (c: Omit<Conflict, 'relation'>): Conflict => ({ ...c, relation: `public.${relation}` });

/** Waits until every node has recorded `count` new conflicts; returns them. */
async function conflictsSettled(since: Baseline, count: number): Promise<PerNode<Conflict[]>> {
  let last: PerNode<Conflict[]> = { n1: [], n2: [], n3: [] };
  await eventually(
    async () => {
      last = await conflictsSince(cluster, since);
      return Object.values(last).every((list) => list.length >= count);
    },
    { timeoutMs: 20_000, what: () => `${count} conflict records on every node: ${JSON.stringify(last)}` },
  );
  return last;
}

scenario('two nodes take the same email and n3 receives the older row first: the newer row wins everywhere, the older restores with another email', async () => {
  const since = await baseline(cluster);
  await restartAgents(cluster, ['n3']);
  const ts1 = await commit(n1, `INSERT INTO older_first VALUES (1, 'a@x', 'n1')`);
  const row1 = { id: 1, email: 'a@x', v: 'n1' };
  await waitRow(n3, 'older_first', 1, row1);
  const ts2 = await commit(n2, `INSERT INTO older_first VALUES (2, 'a@x', 'n2')`);
  const row2 = { id: 2, email: 'a@x', v: 'n2' };
  await waitRow(n3, 'older_first', 2, row2);
  await cluster.startAgents(['n1', 'n2']);
  await expectEverywhere({ older_first: [row2] });
  const lost = { ts: ts1, node: 'n1', row: row1 };
  const won = { ts: ts2, node: 'n2', row: row2 };
  const c = on('older_first');
  const expected: PerNode<Conflict[]> = {
    // The newer row evicts the local older one (n3 has it from n1, so its version names n1).
    n1: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: lost, remote: won })],
    // The older row arrives where the newer one is: it is dropped.
    n2: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'keep_local', local: won, remote: lost })],
    n3: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: lost, remote: won })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);
  // Key 1 stays deleted with its own version everywhere: older writes of it stay out, newer ones come back.
  for (const node of cluster.nodes) assert.deepEqual(await tombstoneVersion(node, 'older_first', 1), { ts: ts1, node: 'n1' }, node.name);

  // The loser restored, from n1's conflict log, with a free email: a new write that replicates.
  const id = (await listConflicts(n1.sql, { relation: 'public.older_first' }))[0]?.id ?? 0;
  const bad = await runCli(['conflicts', 'restore', 'seven', '--node', 'n1'], { config: cluster.configPath });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /Give the id as a whole number from 1 to/);
  const taken = await runCli(['conflicts', 'restore', String(id), '--node', 'n1'], { config: cluster.configPath });
  assert.equal(taken.code, 1, taken.stderr);
  assert.match(taken.stderr, /\(email\)=\(a@x\) already exists.*--set column=value/);
  const restored = await runCli(['conflicts', 'restore', String(id), '--node', 'n1', '--set', 'email=b@x'], { config: cluster.configPath });
  assert.equal(restored.code, 0, restored.stderr);
  await expectEverywhere({ older_first: [{ ...row1, email: 'b@x' }, row2] });
  assert.ok((await listConflicts(n1.sql, { relation: 'public.older_first' }))[0]?.restoredAt, 'the conflict is marked restored');
});

scenario('two nodes take the same email and n3 receives the newer row first: the older row is dropped on arrival, the same everywhere', async () => {
  const since = await baseline(cluster);
  await restartAgents(cluster, []);
  await holdStream(n3, 'n1');
  await cluster.startAgents(['n3']);
  const ts1 = await commit(n1, `INSERT INTO newer_first VALUES (1, 'a@x', 'n1')`);
  const ts2 = await commit(n2, `INSERT INTO newer_first VALUES (2, 'a@x', 'n2')`);
  const row1 = { id: 1, email: 'a@x', v: 'n1' };
  const row2 = { id: 2, email: 'a@x', v: 'n2' };
  await waitRow(n3, 'newer_first', 2, row2);
  await releaseStream(n3, 'n1');
  await cluster.startAgents(['n1', 'n2']);
  await expectEverywhere({ newer_first: [row2] });
  const lost = { ts: ts1, node: 'n1', row: row1 };
  const won = { ts: ts2, node: 'n2', row: row2 };
  const c = on('newer_first');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: lost, remote: won })],
    n2: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'keep_local', local: won, remote: lost })],
    n3: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'keep_local', local: won, remote: lost })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);
  for (const node of cluster.nodes) assert.deepEqual(await tombstoneVersion(node, 'newer_first', 1), { ts: ts1, node: 'n1' }, node.name);
});

scenario('three nodes take the same email at once: the newest row wins on every node, the two others are in every conflict log', async () => {
  const since = await baseline(cluster);
  await restartAgents(cluster, []);
  const ts = [
    await commit(n1, `INSERT INTO three VALUES (1, 't@x', 'n1')`),
    await commit(n2, `INSERT INTO three VALUES (2, 't@x', 'n2')`),
    await commit(n3, `INSERT INTO three VALUES (3, 't@x', 'n3')`),
  ];
  assert.deepEqual([...ts].sort(), ts, 'committed in this order');
  await cluster.startAgents();
  const row = (id: number) => ({ id, email: 't@x', v: `n${id}` });
  await expectEverywhere({ three: [row(3)] });
  // Which rival a node meets first depends on its streams, so the records differ; each node records each of the two
  // losing rows once, whole, whichever side of its record it is on.
  const records = await conflictsSettled(since, 2);
  for (const node of ['n1', 'n2', 'n3'] as const) {
    const losers = records[node].map(loser).sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    assert.deepEqual(losers, [row(1), row(2)], `rows that lost, in ${node}'s conflict log: ${JSON.stringify(records[node])}`);
    assert.deepEqual(new Set(records[node].map((r) => r.type)), new Set(['insert_exists']), node);
  }
  await expectCounters(cluster, countersOf(records));
  await expectNoExceptions(since);
});

scenario('a row takes two unique values held by two local rows, one older and one newer: it loses to the newer and still evicts the older', async () => {
  const since = await baseline(cluster);
  await restartAgents(cluster, ['n3']);
  const row = (id: number, a: string, b: string) => ({ id, a, b });
  const ts9 = await commit(n1, `INSERT INTO two_keys VALUES (9, 'a9', 'b9')`);
  await waitRow(n3, 'two_keys', 9, row(9, 'a9', 'b9'));
  const ts11 = await commit(n2, `INSERT INTO two_keys VALUES (11, 'a9', 'b10')`);
  await waitRow(n3, 'two_keys', 11, row(11, 'a9', 'b10'));
  const ts10 = await commit(n1, `INSERT INTO two_keys VALUES (10, 'a10', 'b10')`);
  await waitRow(n3, 'two_keys', 10, row(10, 'a10', 'b10'));
  await cluster.startAgents(['n1', 'n2']);
  await expectEverywhere({ two_keys: [row(10, 'a10', 'b10')] });
  const v9 = { ts: ts9, node: 'n1', row: row(9, 'a9', 'b9') };
  const v10 = { ts: ts10, node: 'n1', row: row(10, 'a10', 'b10') };
  const v11 = { ts: ts11, node: 'n2', row: row(11, 'a9', 'b10') };
  const c = on('two_keys');
  const expected: PerNode<Conflict[]> = {
    // Row 11 meets rows 9 (a9, older) and 10 (b10, newer) at once: one record per local row.
    n1: sorted([
      c({ peer: 'n2', key: '[11]', type: 'multiple_unique_conflicts', resolution: 'apply_remote', local: v9, remote: v11 }),
      c({ peer: 'n2', key: '[11]', type: 'multiple_unique_conflicts', resolution: 'keep_local', local: v10, remote: v11 }),
    ]),
    n2: [
      c({ peer: 'n1', key: '[9]', type: 'insert_exists', resolution: 'keep_local', local: v11, remote: v9 }),
      c({ peer: 'n1', key: '[10]', type: 'insert_exists', resolution: 'apply_remote', local: v11, remote: v10 }),
    ],
    n3: [
      c({ peer: 'n2', key: '[11]', type: 'insert_exists', resolution: 'apply_remote', local: v9, remote: v11 }),
      c({ peer: 'n1', key: '[10]', type: 'insert_exists', resolution: 'apply_remote', local: v11, remote: v10 }),
    ],
  };
  const actual = await conflictsSettled(since, 2);
  assert.deepEqual({ ...actual, n1: sorted(actual.n1) }, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);
});

scenario('an update moves a row onto an email another node gave its row at the same time: the newer update wins, the other row gives way', async () => {
  await restartAgents(cluster, ['n1', 'n2', 'n3']);
  // Each row seeded by the node that changes it later, so that the seeds' versions are no conflict of their own.
  await commit(n1, `INSERT INTO moved VALUES (1, 'a@x', 'seed')`);
  await commit(n2, `INSERT INTO moved VALUES (2, 'b@x', 'seed')`);
  await cluster.waitConverged(['moved']);
  const since = await baseline(cluster);
  await restartAgents(cluster, ['n3']);
  const ts1 = await commit(n1, `UPDATE moved SET email = 'c@x', v = 'n1' WHERE id = 1`);
  const row1 = { id: 1, email: 'c@x', v: 'n1' };
  await waitRow(n3, 'moved', 1, row1);
  const ts2 = await commit(n2, `UPDATE moved SET email = 'c@x', v = 'n2' WHERE id = 2`);
  const row2 = { id: 2, email: 'c@x', v: 'n2' };
  await waitRow(n3, 'moved', 2, row2);
  await cluster.startAgents(['n1', 'n2']);
  await expectEverywhere({ moved: [row2] });
  const lost = { ts: ts1, node: 'n1', row: row1 };
  const won = { ts: ts2, node: 'n2', row: row2 };
  const c = on('moved');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'update_exists', resolution: 'apply_remote', local: lost, remote: won })],
    // n2 still had row 1 as seeded: the losing update (newer than that) takes its key with it.
    n2: [c({ peer: 'n1', key: '[1]', type: 'update_exists', resolution: 'keep_local', local: won, remote: lost })],
    n3: [c({ peer: 'n2', key: '[2]', type: 'update_exists', resolution: 'apply_remote', local: lost, remote: won })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);
  for (const node of cluster.nodes) assert.deepEqual(await tombstoneVersion(node, 'moved', 1), { ts: ts1, node: 'n1' }, node.name);
});

scenario('an older row arrives after its newer rival let go of the email: it gives way all the same (claims)', async () => {
  const since = await baseline(cluster);
  await restartAgents(cluster, []);
  await holdStream(n3, 'n1');
  await cluster.startAgents(['n3']);
  const ts1 = await commit(n1, `INSERT INTO let_go VALUES (1, 'g@x')`);
  const ts2 = await commit(n2, `INSERT INTO let_go VALUES (2, 'g@x')`);
  await waitRow(n3, 'let_go', 2, { id: 2, email: 'g@x' });
  // n2 lets go of g@x before row 1 reaches n2 or n3; on n1, row 2 arrives while row 1 holds g@x and evicts it.
  await commit(n2, `UPDATE let_go SET email = 'h@x' WHERE id = 2`);
  await waitRow(n3, 'let_go', 2, { id: 2, email: 'h@x' });
  await releaseStream(n3, 'n1');
  await cluster.startAgents(['n1', 'n2']);
  await expectEverywhere({ let_go: [{ id: 2, email: 'h@x' }] });
  const row1 = { ts: ts1, node: 'n1', row: { id: 1, email: 'g@x' } };
  const claim = { ts: ts2, node: 'n2', row: null };
  const c = on('let_go');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: row1, remote: { ts: ts2, node: 'n2', row: { id: 2, email: 'g@x' } } })],
    // Nothing holds g@x when row 1 arrives, but row 2 held it with a newer version: row 1 is dropped (skip).
    n2: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'skip', local: claim, remote: row1 })],
    n3: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'skip', local: claim, remote: row1 })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);
});

scenario('delta columns: an update moves a row onto a handle another node gave its row at the same time; the older row gives way with its balance', async () => {
  await restartAgents(cluster, ['n1', 'n2', 'n3']);
  await commit(n1, `INSERT INTO wallet VALUES (1, 'h1', 100)`);
  await commit(n2, `INSERT INTO wallet VALUES (2, 'h2', 50)`);
  await cluster.waitConverged(['wallet']);
  const since = await baseline(cluster);
  await restartAgents(cluster, ['n3']);
  const ts1 = await commit(n1, `UPDATE wallet SET handle = 'h3', balance = balance + 10 WHERE id = 1`);
  const row1 = { id: 1, handle: 'h3', balance: 110 };
  await waitRow(n3, 'wallet', 1, row1);
  const ts2 = await commit(n2, `UPDATE wallet SET handle = 'h3', balance = balance + 5 WHERE id = 2`);
  const row2 = { id: 2, handle: 'h3', balance: 55 };
  await waitRow(n3, 'wallet', 2, row2);
  await cluster.startAgents(['n1', 'n2']);
  await expectEverywhere({ wallet: [row2] });
  const lost = { ts: ts1, node: 'n1', row: row1 };
  const won = { ts: ts2, node: 'n2', row: row2 };
  const c = on('wallet');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'update_exists', resolution: 'apply_remote', local: lost, remote: won })],
    n2: [c({ peer: 'n1', key: '[1]', type: 'update_exists', resolution: 'keep_local', local: won, remote: lost })],
    n3: [c({ peer: 'n2', key: '[2]', type: 'update_exists', resolution: 'apply_remote', local: lost, remote: won })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);
});

scenario('a foreign key points at the row that loses: it points at nothing on every node until the loser is restored', async () => {
  const since = await baseline(cluster);
  await restartAgents(cluster, ['n3']);
  const ts1 = await commit(n1, `INSERT INTO member VALUES (1, 'f@x')`, `INSERT INTO purchase VALUES (10, 1, 'book')`);
  const purchase = { id: 10, member_id: 1, item: 'book' };
  await waitRow(n3, 'purchase', 10, purchase);
  const ts2 = await commit(n2, `INSERT INTO member VALUES (2, 'f@x')`);
  await waitRow(n3, 'member', 2, { id: 2, email: 'f@x' });
  await cluster.startAgents(['n1', 'n2']);
  // The apply session runs in replica mode, where foreign keys are not enforced: the purchase stays, as it does
  // when a member deleted on one node gets a purchase on another at the same time.
  await expectEverywhere({ member: [{ id: 2, email: 'f@x' }], purchase: [purchase] });
  const lost = { ts: ts1, node: 'n1', row: { id: 1, email: 'f@x' } };
  const won = { ts: ts2, node: 'n2', row: { id: 2, email: 'f@x' } };
  const c = on('member');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: lost, remote: won })],
    n2: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'keep_local', local: won, remote: lost })],
    n3: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: lost, remote: won })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);

  // Restoring the member (from n2's log, where it is the remote row) with a free email makes the key whole again.
  const id = (await listConflicts(n2.sql, { relation: 'public.member' }))[0]?.id ?? 0;
  await restoreConflict(n2.sql, id, { set: { email: 'f1@x' } });
  await expectEverywhere({ member: [{ id: 1, email: 'f1@x' }, { id: 2, email: 'f@x' }], purchase: [purchase] });
  for (const node of cluster.nodes) {
    const dangling = await node.sql.unsafe(`SELECT p.id FROM purchase p WHERE NOT EXISTS (SELECT 1 FROM member m WHERE m.id = p.member_id)`);
    assert.equal(dangling.length, 0, `purchases without their member on ${node.name}`);
  }
});

/** n1 writes row 1 and n2 row 2 with the same email while they cannot see each other; n3 receives row 1 first. */
async function sameEmail(table: string): Promise<{ older: Conflict['local']; newer: Conflict['local'] }> {
  await restartAgents(cluster, ['n3']);
  const ts1 = await commit(n1, `INSERT INTO ${table} VALUES (1, 'p@x', 'n1')`);
  await waitRow(n3, table, 1, { id: 1, email: 'p@x', v: 'n1' });
  const ts2 = await commit(n2, `INSERT INTO ${table} VALUES (2, 'p@x', 'n2')`);
  return { older: { ts: ts1, node: 'n1', row: { id: 1, email: 'p@x', v: 'n1' } }, newer: { ts: ts2, node: 'n2', row: { id: 2, email: 'p@x', v: 'n2' } } };
}

scenario('keep_local: two nodes take the same email; every node keeps the row it had (no convergence by design)', async () => {
  const since = await baseline(cluster);
  const { older, newer } = await sameEmail('kept');
  await cluster.startAgents(['n1', 'n2']);
  const c = on('kept');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'keep_local', local: older, remote: newer })],
    n2: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'keep_local', local: newer, remote: older })],
    n3: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'keep_local', local: older, remote: newer })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  assert.deepEqual([await rowsOf(n1, 'kept'), await rowsOf(n2, 'kept'), await rowsOf(n3, 'kept')], [[older.row], [newer.row], [older.row]]);
  await expectNoExceptions(since);
});

scenario('apply_remote: two nodes take the same email; every node applies what arrives and evicts its own row (no convergence by design)', async () => {
  const since = await baseline(cluster);
  const { older, newer } = await sameEmail('taken');
  await cluster.startAgents(['n1', 'n2']);
  const c = on('taken');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: older, remote: newer })],
    // Under last-update-wins n2 would keep its newer row; apply_remote takes n1's older one.
    n2: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'apply_remote', local: newer, remote: older })],
    n3: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: older, remote: newer })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  assert.deepEqual([await rowsOf(n1, 'taken'), await rowsOf(n2, 'taken'), await rowsOf(n3, 'taken')], [[newer.row], [older.row], [newer.row]]);
  await expectNoExceptions(since);
});

scenario('pause: two nodes take the same email; every node that meets it pauses the peer, and resume resolves it by last-update-wins', async () => {
  const since = await baseline(cluster);
  const { older, newer } = await sameEmail('paused');
  await cluster.startAgents(['n1', 'n2']);
  for (const [node, peer] of [['n1', 'n2'], ['n2', 'n1'], ['n3', 'n2']] as const) {
    await eventually(() => peerStatus(cluster, node, peer).state === 'paused', { timeoutMs: 20_000, what: `${peer} paused on ${node}` });
    assert.match(peerStatus(cluster, node, peer).pausedReason ?? '', new RegExp(`insert_exists on public\\.paused key \\[${peer === 'n1' ? 1 : 2}\\] from peer`));
  }
  assert.deepEqual([await rowsOf(n1, 'paused'), await rowsOf(n2, 'paused'), await rowsOf(n3, 'paused')], [[older.row], [newer.row], [older.row]]);
  assert.deepEqual(await conflictsSince(cluster, since), { n1: [], n2: [], n3: [] });
  for (const [node, peer] of [['n1', 'n2'], ['n2', 'n1'], ['n3', 'n2']] as const) assert.equal(await resumePeer(cluster.node(node).sql, peer), true);
  await expectEverywhere({ paused: [newer.row] });
  const c = on('paused');
  const expected: PerNode<Conflict[]> = {
    n1: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: older, remote: newer })],
    n2: [c({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'keep_local', local: newer, remote: older })],
    n3: [c({ peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'apply_remote', local: older, remote: newer })],
  };
  await expectConflicts(cluster, since, expected);
  await expectCounters(cluster, countersOf(expected));
  await expectNoExceptions(since);
});
