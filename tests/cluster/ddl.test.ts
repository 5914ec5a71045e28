/**
 * Topology: 3 nodes (n1, n2, n3), full mesh, agents in this process; a cluster per test.
 * Scenarios, one per test:
 * - A migration script of the kind applications run (several statements in one query string: a new table with
 *   rows, an added column with a default, an index, a new enum value, a renamed column, a dropped table) runs on n1
 *   while every node writes: every node ends with the same schema (catalog dumps compared) and the same rows.
 * - DDL that cannot be replayed faithfully (inside a DO block, CREATE TABLE AS with rows, a table without a primary
 *   key) is refused at the origin with an error that says what to do instead, and nothing of it reaches the others.
 * - Racing schema changes: a column added on n1 while n2 keeps writing without it: nothing stops, nothing is lost;
 *   a column dropped on n1 while n2 writes into it: the nodes that dropped it apply n2's rows without it at once
 *   (their DDL log says it is gone there), without stopping n2's stream to wait for it.
 * - A unique constraint and a unique index added by replicated DDL get the unique-release triggers on every node.
 * Without the code under test: DDL stays on the node that ran it, so the other nodes' streams stop at the first row
 * of a new table or column (the table or column does not exist there), and rows written in the new table on n1 are
 * never published.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatStatus } from '../../src/cli/status.ts';
import { clusterSchemaDiff, clusterStatus } from '../../src/cluster/cluster-ops.ts';
import { listExceptions } from '../../src/cluster/repair.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { runDdl } from '../../src/ddl/run-ddl.ts';
import { formatSchemaDifferences, readSchemaDump } from '../../src/cluster/schema-dump.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';

const SCHEMA = `
CREATE TYPE status AS ENUM ('new', 'done');
CREATE TABLE orders (id bigint PRIMARY KEY, note text, status status NOT NULL DEFAULT 'new');
CREATE TABLE legacy (id integer PRIMARY KEY, v text);
INSERT INTO legacy VALUES (1, 'old');
`;

const MIGRATION = `
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g;
ALTER TABLE orders ADD COLUMN customer_id bigint DEFAULT 7;
CREATE INDEX orders_customer_idx ON orders (customer_id);
ALTER TYPE status ADD VALUE 'shipped';
UPDATE customers SET name = upper(name) WHERE id <= 10;
ALTER TABLE orders RENAME COLUMN note TO remark;
DROP TABLE legacy;
`;

/** Writes on one node until stopped: inserts of its own orders and updates of them, each its own transaction. */
function startWriter(node: TestNode, base: number): { stop: () => Promise<number> } {
  let running = true;
  let written = 0;
  const done = (async () => {
    for (let i = 0; running; i++) {
      const id = base + i;
      await node.sql.unsafe(`INSERT INTO orders (id) VALUES ($1::text::bigint)`, [String(id)]);
      if (i % 3 === 0) await node.sql.unsafe(`UPDATE orders SET status = 'done' WHERE id = $1::text::bigint`, [String(id)]);
      written++;
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return written;
    },
  };
}

async function waitForRows(cluster: TestCluster, node: TestNode, query: string, what: string): Promise<void> {
  await eventually(async () => (await node.sql.unsafe(query)).length > 0, { what: `${what} on ${node.name}`, timeoutMs: 60_000 });
  void cluster;
}

/** Every node's catalog dump equals n1's, section by section; returns n1's. */
async function assertSameSchema(cluster: TestCluster): Promise<Record<string, readonly string[]>> {
  const dumps = await Promise.all(cluster.nodes.map(async (n) => (await readSchemaDump(n.sql)).sections));
  const [first, ...rest] = dumps;
  assert.ok(first);
  rest.forEach((dump, i) => assert.deepEqual(dump, first, `schema of ${cluster.nodes[i + 1]?.name} differs from n1's`));
  return first;
}

async function openExceptions(node: TestNode): Promise<string[]> {
  return (await listExceptions(node.sql, { state: 'open' })).map((e) => `${e.kind} ${e.relation ?? ''}: ${e.error}`);
}

test('a migration script run on one node while every node writes: same schema and rows everywhere', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2, n3] = cluster.nodes as [TestNode, TestNode, TestNode];
    const writers = cluster.nodes.map((node, i) => startWriter(node, (i + 1) * 1_000_000));
    // Some rows of every writer first, so the migration meets rows in flight from every node.
    for (const node of cluster.nodes) await waitForRows(cluster, node, `SELECT 1 FROM orders WHERE id >= 3000000 LIMIT 1`, 'rows of n3');
    // As "pgmesh ddl" runs it: one query string, on n1.
    assert.deepEqual(await runDdl(cluster.config, silentLogger, MIGRATION, 'n1'), { node: 'n1' });
    // Writes that need the migration, on every node once it arrived there.
    for (const [i, node] of cluster.nodes.entries()) {
      await waitForRows(cluster, node, `SELECT 1 FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'remark'`, 'the migration');
      await node.sql.unsafe(`INSERT INTO orders (id, remark, customer_id, status) VALUES ($1::text::bigint, 'after', 3, 'shipped')`, [String(9_000_000 + i)]);
      await node.sql.unsafe(`INSERT INTO customers (id, name) VALUES ($1::text::bigint, 'new')`, [String(100 + i)]);
    }
    const written = await Promise.all(writers.map((w) => w.stop()));
    assert.ok(written.every((n) => n > 0), `every node wrote (${written.join(', ')})`);
    await cluster.waitConverged(['orders', 'customers'], 120_000);

    const schema = await assertSameSchema(cluster);
    assert.ok(schema.relations?.includes('public.customers r'), 'the new table exists');
    assert.ok(!schema.relations?.some((r) => r.startsWith('public.legacy')), 'the dropped table is gone');
    assert.ok(schema.columns?.includes('public.orders.customer_id bigint default 7'), 'the added column with its default');
    assert.ok(schema.columns?.some((c) => c.startsWith('public.orders.remark text')), 'the renamed column');
    assert.ok(schema.indexes?.some((i) => i.includes('orders_customer_idx')), 'the index');
    assert.deepEqual(schema.enums, ['status 1 new', 'status 2 done', 'status 3 shipped']);
    assert.deepEqual(schema.replicated, ['public.customers', 'public.orders'], 'the new table replicates, the dropped one is gone');
    assert.ok(schema.triggers?.some((t) => t.startsWith('public.customers') && t.includes('pgmesh_record_deletes')), 'the new table has the tombstone trigger');

    // The rows of the migration's own DML arrived with it, and rows written before it got the added column's default.
    for (const node of [n1, n2, n3]) {
      const [c] = await node.sql.unsafe<{ n: string; upper: string }[]>(
        `SELECT count(*)::text AS n, count(*) FILTER (WHERE name LIKE 'CUSTOMER %')::text AS upper FROM customers`,
      );
      assert.deepEqual(c, { n: '53', upper: '10' }, `customers on ${node.name}`);
      const [o] = await node.sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM orders WHERE customer_id IS DISTINCT FROM 7 AND id < 9000000`);
      assert.equal(o?.n, '0', `orders written before the migration have customer_id 7 on ${node.name}`);
      assert.deepEqual(await openExceptions(node), [], `no exception on ${node.name}`);
    }
  });
});

/** Stops a node's agent, runs `body`, starts the agent again: the node applies nothing of its peers meanwhile. */
async function whileHeld(cluster: TestCluster, node: string, body: () => Promise<void>): Promise<void> {
  await cluster.stopAgent(node);
  await body();
  await cluster.startAgents([node]);
}

test('a column added on n1 while n2, not yet aware of it, keeps writing: nothing stops, nothing is lost', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2] = cluster.nodes as [TestNode, TestNode, TestNode];
    await n1.sql.unsafe(`INSERT INTO orders (id, note) SELECT g, 'before' FROM generate_series(1, 20) g`);
    await cluster.waitConverged(['orders']);
    await whileHeld(cluster, 'n2', async () => {
      await n1.sql.unsafe(`ALTER TABLE orders ADD COLUMN priority integer NOT NULL DEFAULT 0`);
      await n1.sql.unsafe(`INSERT INTO orders (id, note, priority) SELECT g, 'n1 after', 5 FROM generate_series(100, 110) g`);
      // n2 has not seen the new column: its rows and updates do not carry it.
      await n2.sql.unsafe(`INSERT INTO orders (id, note) SELECT g, 'n2 unaware' FROM generate_series(200, 210) g`);
      await n2.sql.unsafe(`UPDATE orders SET note = 'n2 updated' WHERE id <= 5`);
      await waitForRows(cluster, n1, `SELECT 1 FROM orders WHERE id = 210`, "n2's rows");
      // Meanwhile status shows that n2's schema is behind, and schema diff shows how.
      await waitForRows(cluster, cluster.node('n3'), `SELECT 1 FROM orders WHERE id = 110`, "n1's rows");
      const diff = await clusterSchemaDiff(cluster.config, silentLogger);
      // (PostgreSQL 18 also lists the column's NOT NULL among the constraints.)
      assert.ok(formatSchemaDifferences(diff.differences).includes('columns: public.orders.priority integer not null default 0  (on n1, n3; missing on n2)'));
      assert.deepEqual(new Set(diff.differences.map((d) => d.missingOn.join(','))), new Set(['n2']), 'only n2 is behind');
      const behind = await clusterStatus(cluster.config, silentLogger);
      assert.equal(new Set(behind.nodes.map((n) => n.schemaFingerprint)).size, 2, 'n2 has a fingerprint of its own');
      assert.match(formatStatus(behind), /! the nodes' schemas differ \(fingerprints n1 \w+, n2 \w+, n3 \w+\)/);
    });
    await cluster.waitConverged(['orders']);
    await assertSameSchema(cluster);
    const converged = await clusterStatus(cluster.config, silentLogger);
    assert.equal(new Set(converged.nodes.map((n) => n.schemaFingerprint)).size, 1, 'one fingerprint once n2 caught up');
    assert.doesNotMatch(formatStatus(converged), /schemas differ/);
    assert.deepEqual((await clusterSchemaDiff(cluster.config, silentLogger)).differences, []);
    for (const node of cluster.nodes) {
      const rows = await node.sql.unsafe<{ kind: string; n: string }[]>(
        `SELECT note || ':' || priority AS kind, count(*)::text AS n FROM orders GROUP BY 1 ORDER BY 1`,
      );
      assert.deepEqual(
        rows.map((r) => `${r.kind} x${r.n}`),
        ['before:0 x15', 'n1 after:5 x11', 'n2 unaware:0 x11', 'n2 updated:0 x5'],
        `rows on ${node.name}`,
      );
      assert.deepEqual(await openExceptions(node), [], `no exception on ${node.name}`);
    }
  });
});

test('a column dropped on n1 while n2, not yet aware of it, writes into it: the rest applies at once and the lost values are kept as exceptions', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2] = cluster.nodes as [TestNode, TestNode, TestNode];
    await n1.sql.unsafe(`INSERT INTO orders (id, note) SELECT g, 'before' FROM generate_series(1, 10) g`);
    await cluster.waitConverged(['orders']);
    await whileHeld(cluster, 'n2', async () => {
      await n1.sql.unsafe(`ALTER TABLE orders DROP COLUMN note`);
      await n2.sql.unsafe(`UPDATE orders SET note = 'lost here', status = 'done' WHERE id <= 3`);
      await n2.sql.unsafe(`INSERT INTO orders (id) VALUES (50)`);
      await waitForRows(cluster, n1, `SELECT 1 FROM orders WHERE id = 50`, "n2's rows");
    });
    await cluster.waitConverged(['orders']);
    await assertSameSchema(cluster);
    // n1 dropped the column itself and n3 applied n1's drop: both know it is gone there (pgmesh.ddl_log), so n2's
    // stream did not stop to wait for it (tuning.schemaWaitMs) on either.
    for (const node of ['n1', 'n3']) {
      const fromN2 = cluster.agents.get(node)?.status().peers.find((p) => p.peer === 'n2');
      assert.equal(fromN2?.schemaWaits, 0, `${node} did not wait for the column n2 sends`);
    }
    const [done] = await n1.sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM orders WHERE status = 'done'`);
    assert.equal(done?.n, '3', "n2's updates applied on n1 without the dropped column");
    // Where a value was lost (the updates set it), the whole change is kept, on every node that had dropped the
    // column when n2's changes arrived (n1 and n3); the insert carried NULL: nothing lost.
    for (const node of [n1, cluster.node('n3')]) {
      const kept = await listExceptions(node.sql, { state: 'open' });
      assert.deepEqual(
        kept.map((e) => [e.kind, e.relation, e.sqlstate, (e.change as { new?: { note?: string } }).new?.note]),
        [1, 2, 3].map(() => ['update', 'public.orders', '42703', 'lost here']),
        `exceptions on ${node.name}`,
      );
    }
    assert.deepEqual(await openExceptions(n2), [], 'no exception on n2');
  });
});

test('a unique constraint and a unique index added by replicated DDL get the unique-release triggers on every node', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    await runDdl(cluster.config, silentLogger, `ALTER TABLE orders ADD CONSTRAINT orders_note_key UNIQUE (note); CREATE UNIQUE INDEX legacy_v_key ON legacy (v)`, 'n1');
    const expected = ['legacy pgmesh_unique_release_delete', 'legacy pgmesh_unique_release_update', 'orders pgmesh_unique_release_delete', 'orders pgmesh_unique_release_update'];
    for (const node of cluster.nodes) {
      const triggers = async () =>
        (
          await node.sql.unsafe<{ t: string }[]>(
            `SELECT tgrelid::regclass::text || ' ' || tgname AS t FROM pg_trigger WHERE tgname LIKE 'pgmesh\\_unique\\_release%' ORDER BY 1`,
          )
        ).map((r) => r.t);
      await eventually(async () => (await triggers()).length === expected.length, { what: `the unique-release triggers on ${node.name}` });
      assert.deepEqual(await triggers(), expected, node.name);
    }
  });
});

/**
 * Topology: 3 nodes, agents in this process.
 * Scenario: n1 creates a table with a serial key and another with an identity key, and adds a serial column to an
 * existing replicated table; the DDL replicates; then every node inserts into them at once.
 * Without the code under test (interleave_new_sequences, on the origin and in apply_ddl): each node's new sequences
 * start at 1 and step by 1, two nodes hand out the same keys, and one of each pair of committed rows is lost.
 */
test('sequences created by replicated DDL hand out node-interleaved values on every node', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const n1 = cluster.node('n1');
    await n1.sql.unsafe(`
      CREATE TABLE tickets (id serial PRIMARY KEY, node text NOT NULL);
      CREATE TABLE events (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, node text NOT NULL);
      INSERT INTO orders (id) SELECT g FROM generate_series(1, 5) g;
      ALTER TABLE orders ADD COLUMN seq_no bigserial;`);
    await eventually(
      async () => {
        for (const node of cluster.nodes) {
          const rows = await node.sql.unsafe(`SELECT 1 FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'seq_no'`);
          const tables = await node.sql.unsafe(`SELECT to_regclass('events') IS NOT NULL AS ok`);
          if (rows.length === 0 || tables[0]?.ok !== true) return false;
        }
        return true;
      },
      { what: 'the DDL to reach every node' },
    );
    const per = 20;
    await Promise.all(
      cluster.nodes.map(async (node, i) => {
        for (let k = 0; k < per; k++) {
          await node.sql.unsafe(`INSERT INTO tickets (node) VALUES ($1)`, [node.name]);
          await node.sql.unsafe(`INSERT INTO events (node) VALUES ($1)`, [node.name]);
          await node.sql.unsafe(`INSERT INTO orders (id) VALUES ($1::text::bigint)`, [String(1000 * (i + 1) + k)]);
        }
      }),
    );
    const hashes = await cluster.waitConverged(['tickets', 'events', 'orders'], 120_000);
    assert.ok(hashes.tickets?.startsWith(`${3 * per}:`), `no ticket lost: ${hashes.tickets}`);
    assert.ok(hashes.events?.startsWith(`${3 * per}:`), `no event lost: ${hashes.events}`);
    for (const node of cluster.nodes) {
      const conflicts = await node.sql.unsafe(`SELECT conflict_type FROM pgmesh.conflict`);
      assert.equal(conflicts.length, 0, `no key taken twice (${node.name})`);
      // Each node's keys are in its own residue class: slot s takes s, s + maxNodes, ...
      const classes = await node.sql.unsafe<{ node: string; classes: number }[]>(
        `SELECT node, count(DISTINCT id % 8)::int AS classes FROM tickets GROUP BY node ORDER BY node`,
      );
      assert.deepEqual(classes.map((r) => r.classes), [1, 1, 1], `${node.name}: one residue class per node`);
    }
    const seqNos = await n1.sql.unsafe<{ n: number; distinct: number }[]>(`SELECT count(*)::int AS n, count(DISTINCT seq_no)::int AS distinct FROM orders`);
    assert.equal(seqNos[0]?.distinct, seqNos[0]?.n, 'seq_no values are unique');
  });
});

/**
 * Topology: 2 nodes, agents in this process.
 * Scenario: n1 runs ALTER SEQUENCE on an interleaved sequence: a new step and a RESTART WITH a value are refused at
 * the origin (replayed on n2 they would put both nodes' sequences in one slot); another option replicates.
 * Without the guard: both statements commit on n1 and replicate, and n1 and n2 then hand out the same keys.
 */
test('ALTER SEQUENCE that would break interleaving is refused at the origin; other options replicate', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: `CREATE TABLE tickets (id serial PRIMARY KEY, node text)` }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2] = cluster.nodes as [TestNode, TestNode];
    const state = async (node: TestNode) =>
      (await node.sql.unsafe<{ s: string }[]>(`SELECT seqincrement || ' ' || seqmax AS s FROM pg_sequence WHERE seqrelid = 'tickets_id_seq'::regclass`))[0]?.s;
    assert.equal(await state(n1), '8 2147483647', 'interleaved: steps by maxNodes');
    for (const statement of [`ALTER SEQUENCE tickets_id_seq INCREMENT BY 1`, `ALTER SEQUENCE tickets_id_seq RESTART WITH 1000`]) {
      await assert.rejects(n1.sql.unsafe(statement), (error: { code?: string; message?: string }) => {
        assert.equal(error.code, 'PM007', statement);
        assert.match(error.message ?? '', /would break the interleaving of sequence public.tickets_id_seq/);
        return true;
      });
    }
    await n1.sql.unsafe(`ALTER SEQUENCE tickets_id_seq MAXVALUE 1000000`);
    await eventually(async () => (await state(n2)) === '8 1000000', { what: 'the MAXVALUE on n2' });
    assert.equal(await state(n1), '8 1000000');
  });
});
