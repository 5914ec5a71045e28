/**
 * Topology: a 2-node cluster (n1, n2, full mesh, agents in this process) that a 3rd node joins; then 3 nodes.
 * Scenarios, one per test:
 * - `node add n3 --from n1` while n1 and n2 keep writing (bank transfers on a delta balance with a transfer log, and
 *   inserts, updates and deletes of shared keys); then n3 streams from both and writes too. Without the code under
 *   test: a transaction of n2 applied on n1 before the snapshot and streamed to n3 again counts a transfer twice
 *   (checked: starting n3's stream from n2 at its slot's start instead of n1's progress breaks the balances).
 * - copied rows and tombstones keep their versions (commit timestamp, node): otherwise an older change arriving later
 *   would win on n3 only.
 * - the process doing the add is killed (SIGKILL) mid-copy: n3 stays 'joining' and its agent refuses to start; a
 *   rerun completes.
 * - the source server is killed (kill -9) mid-copy: the add fails, and after the source is back a rerun completes.
 * - node remove under load: what the leaving node wrote reaches the others first, then nothing of it is left (slots,
 *   origins, catalog rows) and its agent refuses to start; an unreachable node needs --force.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent } from '../../src/agent/agent.ts';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { removeNode } from '../../src/membership/node-remove.ts';
import { spawnPgmesh } from '../support/cli.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { MIXED_DDL, MIXED_SCHEMA, assertMixedConverged, startMixedLoad, type MixedLoad } from '../support/mixed-load.ts';

const BULK_DDL = `CREATE TABLE bulk (id bigint PRIMARY KEY, payload text NOT NULL);`;
/** Enough rows that the copy takes a while (something to kill in the middle of). */
const BULK_ROWS = `INSERT INTO bulk SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 300000) g;`;

async function declareDelta(cluster: TestCluster): Promise<void> {
  for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'accounts' }, ['balance']);
}

/** After a successful add: n3 becomes a member here, agents stream from it, it writes too; then everything is checked. */
async function finishJoin(cluster: TestCluster, n3: TestNode, load: MixedLoad): Promise<void> {
  cluster.admit(n3);
  await cluster.reloadAgents();
  await cluster.startAgents(['n3']);
  await load.progress(50);
  load.addWriter(n3);
  await load.progress(50);
  await load.stop();
  await assertMixedConverged(cluster, load);
}

async function membership(node: TestNode): Promise<{ state: string; rows: number } | undefined> {
  const exists = await node.sql.unsafe<{ ok: boolean }[]>(`SELECT to_regclass('pgmesh.membership') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return undefined;
  const rows = await node.sql.unsafe<{ state: string; rows: string }[]>(`SELECT state, rows_copied::text AS rows FROM pgmesh.membership`);
  return rows[0] ? { state: rows[0].state, rows: Number(rows[0].rows) } : undefined;
}

test('node add: a third node joins while both nodes write, and every node ends equal with exact balances', { timeout: 300_000 }, async (t) => {
  await withCluster({ nodes: 2, schema: MIXED_SCHEMA }, async (cluster) => {
    await declareDelta(cluster);
    await cluster.startAgents();
    const load = startMixedLoad(cluster.nodes);
    await load.progress(100);
    const n3 = await cluster.startServer('n3', MIXED_DDL);
    const result = await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    t.diagnostic(`copied ${result.rows} rows (${result.bytes} bytes) of ${result.tables} tables in ${result.copySeconds} s`);
    assert.equal(result.alreadyMember, false);
    assert.equal(result.nodeSlot, 3);
    await finishJoin(cluster, n3, load);
    t.diagnostic(`load: ${JSON.stringify(load.counts)}`);
  });
});

/**
 * The version (commit timestamp, node) of every row written by the test (not the schema's seed rows, which each node
 * wrote itself) and of every tombstone, by key, as the node's catalog reads it.
 */
async function versions(node: TestNode): Promise<string[]> {
  const rows = await node.sql.unsafe<{ v: string }[]>(
    `SELECT 'items ' || t.id || ' ' || v.ts::text || ' ' || v.node AS v
       FROM items t, pgmesh.row_version(t.xmin, ${`'${node.name}'`}) v WHERE t.id >= 100
     UNION ALL
     SELECT 'tombstone ' || tb.relid::regclass::text || ' ' || tb.pkey || ' ' || v.ts::text || ' ' || v.node
       FROM pgmesh.tombstone tb, pgmesh.row_version(tb.xmin, ${`'${node.name}'`}) v
     ORDER BY 1`,
  );
  return rows.map((r) => r.v);
}

test('node add: copied rows and tombstones keep the version they have on the source', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 2, schema: MIXED_SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2] = cluster.nodes;
    assert.ok(n1 && n2);
    // Versions of both nodes, each row by its own transaction; deletes on both leave tombstones.
    for (let id = 100; id < 140; id++) await (id % 2 ? n1 : n2).sql.unsafe(`INSERT INTO items (id, val) VALUES ($1::text::int, 'v')`, [String(id)]);
    for (let id = 100; id < 110; id++) await (id % 3 ? n1 : n2).sql.unsafe(`DELETE FROM items WHERE id = $1::text::int`, [String(id)]);
    await eventually(async () => (await versions(n1)).join() === (await versions(n2)).join(), { what: 'n1 and n2 to hold the same versions' });
    const n3 = await cluster.startServer('n3', MIXED_DDL);
    await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    const expected = await versions(n1);
    assert.ok(expected.some((v) => v.startsWith('tombstone')) && expected.some((v) => v.endsWith(' n2')), 'the source has tombstones and rows written by n2');
    assert.deepEqual(await versions(n3), expected);
  });
});

test('node add: the add process killed mid-copy leaves n3 joining (its agent refuses to start); a rerun completes', { timeout: 300_000 }, async (t) => {
  await withCluster({ nodes: 2, schema: `${MIXED_SCHEMA}${BULK_DDL}${BULK_ROWS}` }, async (cluster) => {
    await declareDelta(cluster);
    await cluster.startAgents();
    const load = startMixedLoad(cluster.nodes);
    await load.progress(50);
    const n3 = await cluster.startServer('n3', `${MIXED_DDL}${BULK_DDL}`);
    // Its password in PGMESH_DSN_N3, not on the command line (where pgmesh refuses it).
    const add = spawnPgmesh(['node', 'add', 'n3', '--from', 'n1'], { config: cluster.configPath, env: { PGMESH_DSN_N3: n3.server.dsn } });
    const exitedEarly = () => (add.child.exitCode !== null ? `node add exited with ${add.child.exitCode}` : undefined);
    // In the middle of the large table.
    await eventually(async () => ((await membership(n3))?.rows ?? 0) > 20_000, { timeoutMs: 120_000, what: 'the copy to n3 to be under way', abort: exitedEarly });
    add.child.kill('SIGKILL');
    const exit = await add.exited;
    assert.equal(exit.signal, 'SIGKILL', `node add was still running when killed (stdout: ${exit.stdout}, stderr: ${exit.stderr})`);
    t.diagnostic(`killed at ${(await membership(n3))?.rows} rows copied`);
    assert.equal((await membership(n3))?.state, 'joining');
    const joiningConfig = { ...cluster.config, nodes: [...cluster.config.nodes, { name: 'n3', dsn: n3.server.dsn }] };
    await assert.rejects(Agent.start(joiningConfig, 'n3', silentLogger), /n3 is still joining/);
    const result = await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    assert.equal(result.alreadyMember, false);
    assert.equal((await membership(n3))?.state, 'member');
    await finishJoin(cluster, n3, load);
    for (const node of cluster.nodes) assert.equal(await cluster.tableHash(node, 'bulk'), await cluster.tableHash(cluster.node('n1'), 'bulk'));
  });
});

test('node add: the source server killed with kill -9 mid-copy fails the add; after it restarts a rerun completes', { timeout: 300_000 }, async (t) => {
  await withCluster({ nodes: 2, schema: `${MIXED_SCHEMA}${BULK_DDL}${BULK_ROWS}` }, async (cluster) => {
    await declareDelta(cluster);
    await cluster.startAgents();
    const n1 = cluster.node('n1');
    const load = startMixedLoad(cluster.nodes, { crashes: true });
    await load.progress(50);
    const n3 = await cluster.startServer('n3', `${MIXED_DDL}${BULK_DDL}`);
    const first = addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' }).then(
      () => 'completed',
      (error: unknown) => (error as Error).message,
    );
    let outcome: string | undefined;
    void first.then((o) => (outcome = o));
    await eventually(async () => ((await membership(n3))?.rows ?? 0) > 20_000, { timeoutMs: 120_000, what: 'the copy to n3 to be under way', abort: () => outcome });
    await n1.server.kill();
    const failure = await first;
    t.diagnostic(`first add: ${failure}`);
    assert.notEqual(failure, 'completed');
    assert.equal((await membership(n3))?.state, 'joining');
    await n1.server.start();
    await eventually(async () => (await n1.sql.unsafe(`SELECT 1`)).length === 1, { timeoutMs: 60_000, what: 'n1 to answer again' });
    await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    await finishJoin(cluster, n3, load);
    for (const node of cluster.nodes) assert.equal(await cluster.tableHash(node, 'bulk'), await cluster.tableHash(n1, 'bulk'));
  });
});

/** What is left of node `gone` on `node`: slots for it, its origins, its catalog rows (both namings of each). */
async function traces(node: TestNode, gone: string): Promise<string[]> {
  const rows = await node.sql.unsafe<{ t: string }[]>(
    `WITH d AS (SELECT oid::text AS oid FROM pg_database WHERE datname = current_database())
     SELECT 'slot ' || slot_name AS t FROM pg_replication_slots, d
      WHERE database = current_database() AND slot_name IN ('pgmesh_' || $1::text, 'pgmesh_' || d.oid || '_' || $1::text)
     UNION ALL SELECT 'origin ' || roname FROM pg_replication_origin, d
      WHERE roname IN ('pgmesh_' || $1::text, 'pgmeshr_' || $1::text, 'pgmesh_' || d.oid || '_' || $1::text, 'pgmeshr_' || d.oid || '_' || $1::text)
     UNION ALL SELECT 'peer ' || node_name FROM pgmesh.peer WHERE node_name = $1::text
     UNION ALL SELECT 'progress ' || peer FROM pgmesh.apply_progress WHERE peer = $1::text
     UNION ALL SELECT 'progress log ' || peer FROM pgmesh.applied_xact WHERE peer = $1::text`,
    [gone],
  );
  return rows.map((r) => r.t);
}

test('node remove: a node leaves under load after what it wrote reached the others; nothing of it is left anywhere', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    await declareDelta(cluster);
    await cluster.startAgents();
    const n3 = cluster.node('n3');
    const load = startMixedLoad(cluster.nodes);
    await load.progress(100);
    // n3's application stops writing; what it wrote must reach n1 and n2 before it goes.
    await load.stopWriter(n3);
    // Its last transactions are still on their way when the remove starts (a large one takes a while to apply).
    for (let i = 0; i < 5; i++) {
      await n3.sql.unsafe(`INSERT INTO transfer_log SELECT 'n3-last-${i}-' || g, 1, 2, 0 FROM generate_series(1, 20000) g`);
    }
    const written = await n3.sql.unsafe<{ id: string }[]>(`SELECT id FROM transfer_log WHERE id LIKE 'n3-%' ORDER BY id`);
    const result = await removeNode(cluster.config, silentLogger, { name: 'n3' });
    assert.equal(result.drained, true);
    for (const name of ['n1', 'n2']) {
      const node = cluster.node(name);
      const there = await node.sql.unsafe<{ id: string }[]>(`SELECT id FROM transfer_log WHERE id LIKE 'n3-%' ORDER BY id`);
      assert.deepEqual(there, written, `everything n3 wrote is on ${name}`);
      assert.deepEqual(await traces(node, 'n3'), [], `nothing of n3 is left on ${name}`);
    }
    const ownSlots = await n3.sql.unsafe(`SELECT slot_name FROM pg_replication_slots`);
    assert.equal(ownSlots.length, 0, 'n3 has no slots left');
    await cluster.stopAgent('n3');
    await assert.rejects(Agent.start(cluster.config, 'n3', silentLogger), /n3 was removed/);
    // n1 and n2 go on as a cluster of two.
    await load.progress(50);
    await load.stop();
    const rest = cluster.nodes.filter((n) => n.name !== 'n3');
    for (const table of ['accounts', 'transfer_log', 'items']) {
      await eventually(async () => new Set(await Promise.all(rest.map((n) => cluster.tableHash(n, table)))).size === 1, {
        timeoutMs: 60_000,
        what: `${table} equal on n1 and n2`,
      });
    }
  });
});

test('node remove: an unreachable node is refused without --force, and removed with it', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    // n3's machine is gone: its server and its agent.
    await cluster.startAgents(['n1', 'n2']);
    await cluster.node('n3').server.kill();
    await assert.rejects(removeNode(cluster.config, silentLogger, { name: 'n3' }), /n3 is not reachable: changes it committed .* --force/);
    assert.notDeepEqual(await traces(cluster.node('n1'), 'n3'), [], 'a refused remove changes nothing');
    const result = await removeNode(cluster.config, silentLogger, { name: 'n3', force: true });
    assert.equal(result.reachable, false);
    assert.match(result.warnings.join('\n'), /lost/);
    for (const name of ['n1', 'n2']) assert.deepEqual(await traces(cluster.node(name), 'n3'), [], `nothing of n3 is left on ${name}`);
  });
});

/**
 * Topology: 2 nodes, then n3 added. Scenario: a table keyed by a serial column, with keys taken on n1 and n2 before the
 * add; after it every node inserts at once.
 * Without the code under test (interleaveSequences for the joining node): n3's sequence starts at 1 and steps by 1,
 * so it hands out keys n1 and n2 already took or will take, and committed rows are lost.
 */
test('node add: the new node hands out its own slot\'s keys, above every key in use', { timeout: 300_000 }, async () => {
  const TICKETS = `CREATE TABLE tickets (id serial PRIMARY KEY, node text NOT NULL);`;
  await withCluster({ nodes: 2, schema: `${MIXED_SCHEMA} ${TICKETS}` }, async (cluster) => {
    await cluster.startAgents();
    for (const node of cluster.nodes) for (let i = 0; i < 5; i++) await node.sql.unsafe(`INSERT INTO tickets (node) VALUES ($1)`, [node.name]);
    const n3 = await cluster.startServer('n3', `${MIXED_DDL} ${TICKETS}`);
    await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    cluster.admit(n3);
    await cluster.reloadAgents();
    await cluster.startAgents(['n3']);
    const before = await n3.sql.unsafe<{ max: number }[]>(`SELECT max(id)::int AS max FROM tickets`);
    await Promise.all(cluster.nodes.map(async (node) => {
      for (let i = 0; i < 10; i++) await node.sql.unsafe(`INSERT INTO tickets (node) VALUES ($1)`, [node.name]);
    }));
    const hashes = await cluster.waitConverged(['tickets'], 120_000);
    assert.ok(hashes.tickets?.startsWith('40:'), `every ticket on every node: ${hashes.tickets}`);
    const mine = await n3.sql.unsafe<{ id: number }[]>(`SELECT id FROM tickets WHERE node = 'n3' ORDER BY id`);
    const slot = (await n3.sql.unsafe<{ s: number; m: number }[]>(`SELECT node_slot AS s, max_nodes AS m FROM pgmesh.local_node`))[0];
    assert.ok(slot);
    for (const { id } of mine) {
      assert.equal(id % slot.m, slot.s % slot.m, `n3's key ${id} is in its slot's residue class`);
      assert.ok(id > (before[0]?.max ?? 0), `n3's key ${id} is above the keys copied to it`);
    }
  });
});
