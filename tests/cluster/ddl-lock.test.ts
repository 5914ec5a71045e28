/**
 * Topology: 3 nodes (n1, n2, n3), full mesh, agents in this process; a cluster per test.
 * Scenarios, one per test:
 * - `pgmesh ddl --lock` drops a column on n1 while every node keeps updating that column: the lock stops local
 *   writes to the table on every node (they fail with 55P03 and are retried), lets every node catch up, runs the
 *   drop, waits until every node has it, and releases. No node ever sends a change with the column to a node that
 *   no longer has it: no exception anywhere, same schema and rows everywhere.
 *   Without the lock (runDdl without `lock`): n2's and n3's updates of the column written before the drop reached
 *   them arrive at n1 after it, and are applied without it and kept as exceptions (42703).
 * - A node whose agent does not apply (stopped): the lock gives up after its timeout with an error that names the
 *   node, runs nothing, and leaves nothing locked behind: every node takes writes again at once.
 * - A node that cannot be reached: the lock says which one and locks nothing.
 * - A --lock-timeout that is not a number of seconds: exit code 2 and what to give instead.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { listExceptions } from '../../src/cluster/repair.ts';
import { PgmeshError } from '../../src/core/errors.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { runDdl } from '../../src/ddl/run-ddl.ts';
import { readSchemaDump } from '../../src/cluster/schema-dump.ts';
import { pgmesh } from '../support/cli.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';

const ROWS = 40;
const SCHEMA = `
CREATE TABLE items (id integer PRIMARY KEY, v integer NOT NULL DEFAULT 0, w integer NOT NULL DEFAULT 0);
`;

interface Writer {
  /** Stops the writer; how many updates it made and how many the lock refused. */
  stop(): Promise<{ written: number; refused: number }>;
}

/**
 * Updates random rows on one node, each update its own transaction: column v while it exists, then only w.
 * A write the lock refuses (55P03) is retried, as an application would.
 */
function startWriter(node: TestNode): Writer {
  let running = true;
  let written = 0;
  let refused = 0;
  let withV = true;
  const done = (async () => {
    while (running) {
      const id = 1 + Math.floor(Math.random() * ROWS);
      try {
        if (withV) await node.sql.unsafe(`UPDATE items SET v = v + 1, w = w + 1 WHERE id = $1::int`, [id]);
        else await node.sql.unsafe(`UPDATE items SET w = w + 1 WHERE id = $1::int`, [id]);
        written++;
      } catch (error) {
        const code = (error as { code?: string }).code;
        if (code === '55P03') refused++;
        else if (code === '42703') withV = false;
        else throw error;
      }
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return { written, refused };
    },
  };
}

async function openExceptions(node: TestNode): Promise<string[]> {
  return (await listExceptions(node.sql, { state: 'open' })).map((e) => `${e.kind} ${e.relation ?? ''}: ${e.sqlstate} ${e.error}`);
}

async function hasColumn(node: TestNode, column: string): Promise<boolean> {
  const rows = await node.sql.unsafe(`SELECT 1 FROM information_schema.columns WHERE table_name = 'items' AND column_name = $1`, [column]);
  return rows.length > 0;
}

async function waitForWrites(cluster: TestCluster, writers: readonly Writer[]): Promise<void> {
  // Every node's writes have reached the others: a row of w > 0 written on each (any row will do).
  void writers;
  await eventually(
    async () => {
      for (const node of cluster.nodes) {
        const [row] = await node.sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM items WHERE w > 0`);
        if ((row?.n ?? 0) < 3) return false;
      }
      return true;
    },
    { what: 'writes on every node', timeoutMs: 60_000 },
  );
}

test('ddl --lock drops a column every node is writing: no exception, same schema and rows everywhere', { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.node('n1').sql.unsafe(`INSERT INTO items (id) SELECT g FROM generate_series(1, ${ROWS}) g`);
    await cluster.startAgents();
    await cluster.waitConverged(['items']);
    const writers = cluster.nodes.map((node) => startWriter(node));
    await waitForWrites(cluster, writers);

    await runDdl(cluster.config, silentLogger, `ALTER TABLE items DROP COLUMN v`, 'n1', { lock: true, lockTimeoutMs: 60_000 });
    // When it returns, every node has the change.
    for (const node of cluster.nodes) assert.equal(await hasColumn(node, 'v'), false, `v is gone on ${node.name} when ddl --lock returns`);
    // Writes go on after it, without the column.
    const before = await cluster.node('n2').sql.unsafe<{ n: string }[]>(`SELECT sum(w)::text AS n FROM items`);
    await eventually(async () => {
      const [now] = await cluster.node('n2').sql.unsafe<{ n: string }[]>(`SELECT sum(w)::text AS n FROM items`);
      return Number(now?.n) > Number(before[0]?.n) + 10;
    }, { what: 'writes after the lock' });
    const results = await Promise.all(writers.map((w) => w.stop()));
    assert.ok(results.every((r) => r.written > 0), `every node wrote (${JSON.stringify(results)})`);
    // The writers ran all through the lock: the fence refused some of their writes (retried). Without the fence,
    // nothing stops a node's writes between the change on n1 and its arrival there.
    assert.ok(results.some((r) => r.refused > 0), `the fence refused writes while the lock was held (${JSON.stringify(results)})`);

    await cluster.waitConverged(['items'], 120_000);
    const dumps = await Promise.all(cluster.nodes.map(async (n) => (await readSchemaDump(n.sql)).sections));
    for (const [i, dump] of dumps.entries()) assert.deepEqual(dump, dumps[0], `schema of ${cluster.nodes[i]?.name} is n1's`);
    for (const node of cluster.nodes) assert.deepEqual(await openExceptions(node), [], `no exception on ${node.name}`);
  });
});

test('ddl --lock with a node that does not apply: gives up, names the node, changes nothing, leaves nothing locked', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, n2, n3] = cluster.nodes as [TestNode, TestNode, TestNode];
    await n1.sql.unsafe(`INSERT INTO items (id) SELECT g FROM generate_series(1, ${ROWS}) g`);
    await cluster.startAgents();
    await cluster.waitConverged(['items']);
    await cluster.stopAgent('n3');
    await n3.sql.unsafe(`UPDATE items SET w = 1 WHERE id = 1`);

    await assert.rejects(
      runDdl(cluster.config, silentLogger, `ALTER TABLE items DROP COLUMN v`, 'n1', { lock: true, lockTimeoutMs: 3_000 }),
      (error: unknown) => {
        assert.ok(error instanceof PgmeshError);
        assert.equal(error.code, 'APPLY_FAILED');
        assert.match(error.message, /n3 has not applied n1's changes/);
        assert.match(error.message, /nothing was changed; the lock was released/);
        return true;
      },
    );
    // Nothing ran, and every node takes writes (a fence left behind would refuse them with 55P03).
    for (const node of [n1, n2, n3]) {
      assert.equal(await hasColumn(node, 'v'), true, `v is still there on ${node.name}`);
      await node.sql.unsafe(`UPDATE items SET v = v + 1 WHERE id = 2`);
    }
    // The fence's keys only (pgmesh.ddl_lock_key: 7366509 in the high half); apply sessions take advisory locks of their own.
    const held = await n1.sql.unsafe(`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 7366509`);
    assert.deepEqual([...held], [], 'no advisory lock held on n1');
  });
});

test('ddl --lock with a node that cannot be reached: says which, locks nothing', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [n1, , n3] = cluster.nodes as [TestNode, TestNode, TestNode];
    await n1.sql.unsafe(`INSERT INTO items (id) SELECT g FROM generate_series(1, ${ROWS}) g`);
    await cluster.startAgents();
    await n3.sql.end({ timeout: 1 });
    await n3.server.stop();
    await assert.rejects(
      runDdl(cluster.config, silentLogger, `ALTER TABLE items DROP COLUMN v`, 'n1', { lock: true, lockTimeoutMs: 3_000 }),
      (error: unknown) => {
        assert.ok(error instanceof PgmeshError);
        assert.equal(error.code, 'CONNECTION_FAILED');
        assert.match(error.message, /node n3/);
        assert.match(error.message, /nothing was locked or changed/);
        return true;
      },
    );
    assert.equal(await hasColumn(n1, 'v'), true, 'v is still there on n1');
    await n1.sql.unsafe(`UPDATE items SET v = v + 1 WHERE id = 2`);
  });
});

test('ddl --lock-timeout that is not a number of seconds: exit code 2, says what to give', { timeout: 60_000 }, async () => {
  const result = await pgmesh(['ddl', 'ALTER TABLE items DROP COLUMN v', '--lock', '--lock-timeout', 'soon']);
  assert.equal(result.code, 2, result.output);
  assert.match(result.stderr, /--lock-timeout must be a number of seconds above 0, not "soon"/);
});
