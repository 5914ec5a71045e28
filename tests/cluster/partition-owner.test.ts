/**
 * Topology: 2 nodes, full mesh; agents as the installing superuser (in this process), then as the least-privilege
 * agent role of `cluster create --agent-role` (child processes).
 * Scenario: `app`, an application role that owns its schema and a replicated partitioned table (a primary key and a
 * unique constraint, so pgmesh's row triggers pgmesh_record_key_change and pgmesh_unique_release_* are on it), makes
 * new partitions (CREATE TABLE ... PARTITION OF) and attaches one again after detaching it, on n1; the DDL replays on n2
 * as app; rows written in both partitions (inserts, a key change, a unique value change, a delete) replicate, and the
 * cloned triggers record the key change's tombstone. app still cannot attach pgmesh's trigger functions to a table of
 * its own.
 * Without the code under test (EXECUTE on the row triggers' functions for PUBLIC): PostgreSQL clones the parent's row
 * triggers to the partition and checks EXECUTE on their functions for app, which pgmesh revoked from PUBLIC: both
 * statements fail with "permission denied for function " (empty name). Without the agent roles' grants on new
 * partitions (pgmesh.grant_agents_partitions): with the least-privilege agent, every row of the new partitions fails
 * on the peer with "permission denied for table parts_2".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { eventually, withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';
import { pgmesh } from '../support/cli.ts';

const SCHEMA = `
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE ROLE pgmesh_agent LOGIN PASSWORD 'agent-pw';
-- Replayed DDL runs as its role: the least-privilege agent must be allowed to become it (not to inherit its rights).
GRANT app TO pgmesh_agent WITH INHERIT FALSE;
CREATE SCHEMA app AUTHORIZATION app;
SET ROLE app;
CREATE TABLE app.parts (id integer PRIMARY KEY, code integer, v text, UNIQUE (id, code)) PARTITION BY RANGE (id);
CREATE TABLE app.parts_1 PARTITION OF app.parts FOR VALUES FROM (0) TO (100);
RESET ROLE;
`;

async function asApp<T>(cluster: TestCluster, node: string, body: (sql: Sql) => Promise<T>): Promise<T> {
  const sql = postgres(dsnAs(cluster.node(node), 'app', 'app-pw'), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
  try {
    return await body(sql);
  } finally {
    await sql.end({ timeout: 1 });
  }
}

async function partitionsAndRows(cluster: TestCluster): Promise<void> {
  await asApp(cluster, 'n1', async (sql) => {
    await sql.unsafe(`CREATE TABLE app.parts_2 PARTITION OF app.parts FOR VALUES FROM (100) TO (200)`);
    // A partition made with CREATE TABLE is not one that never replicated: one detached and attached again is.
    await sql.unsafe(`CREATE TABLE app.parts_3 PARTITION OF app.parts FOR VALUES FROM (200) TO (300)`);
    await sql.unsafe(`ALTER TABLE app.parts DETACH PARTITION app.parts_3`);
    await sql.unsafe(`ALTER TABLE app.parts ATTACH PARTITION app.parts_3 FOR VALUES FROM (200) TO (300)`);
  });
  await eventually(
    async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pg_inherits WHERE inhparent = 'app.parts'::regclass`)).length === 3,
    { what: 'both partitions on n2' },
  );
  await asApp(cluster, 'n1', async (sql) => {
    await sql.unsafe(`INSERT INTO app.parts VALUES (1, 1, 'a'), (150, 2, 'b'), (151, 3, 'c'), (250, 4, 'd')`);
    await sql.unsafe(`UPDATE app.parts SET id = 160 WHERE id = 150`);
    await sql.unsafe(`UPDATE app.parts SET code = 40 WHERE id = 250`);
    await sql.unsafe(`DELETE FROM app.parts WHERE id = 151`);
  });
  await asApp(cluster, 'n2', (sql) => sql.unsafe(`INSERT INTO app.parts VALUES (260, 5, 'e')`));
  const hashes = await cluster.waitConverged(['app.parts']);
  assert.match(hashes['app.parts'] ?? '', /^4:/, 'four rows on both nodes');
  for (const node of ['n1', 'n2']) {
    const exceptions = await cluster.node(node).sql.unsafe(`SELECT change_kind, error FROM pgmesh.exception`);
    assert.deepEqual([...exceptions], [], `no exception on ${node}`);
  }
  // The cloned key-change trigger ran on n1's new partition (the delete's tombstone is the root's statement trigger's).
  const tombstones = await cluster.node('n1').sql.unsafe<{ pkey: string }[]>(
    `SELECT pkey FROM pgmesh.tombstone WHERE relid = 'app.parts_2'::regclass ORDER BY pkey`,
  );
  assert.deepEqual(tombstones.map((t) => t.pkey), ['[150]']);

  // Elsewhere, app still cannot attach pgmesh's trigger functions: it cannot name them.
  await asApp(cluster, 'n1', async (sql) => {
    await sql.unsafe(`CREATE TABLE app.mine (id integer PRIMARY KEY)`);
    await assert.rejects(
      sql.unsafe(`CREATE TRIGGER steal AFTER UPDATE ON app.mine FOR EACH ROW EXECUTE FUNCTION pgmesh.record_key_change('id')`),
      /permission denied for schema pgmesh/,
    );
    await assert.rejects(sql.unsafe(`SELECT pgmesh.record_unique_release()`), /permission denied for schema pgmesh/);
  });
}

test('an application role makes and attaches partitions of its replicated table; rows in them replicate', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    await partitionsAndRows(cluster);
  });
});

test('with the least-privilege agent: the same', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, link: false }, async (cluster) => {
    const create = await pgmesh(['cluster', 'create', '--agent-role', 'pgmesh_agent'], { config: cluster.configPath });
    assert.equal(create.code, 0, create.output);
    const env = Object.fromEntries(cluster.nodes.map((n) => [`PGMESH_DSN_${n.name.toUpperCase()}`, dsnAs(n, 'pgmesh_agent', 'agent-pw')]));
    for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);
    await partitionsAndRows(cluster);
  });
});
