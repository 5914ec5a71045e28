/**
 * Topology: 3 nodes, full mesh, agents in this process; the real `pgmesh` command for the table commands.
 * Scenarios: `tables remove` takes a replicated table out of replication on every node while the cluster runs; and
 * system tables and pgmesh's own catalog are refused as bad input by `tables add`, `tables remove` and
 * `cluster create --tables`.
 * Without the code under test: there is no way to stop replicating a table but by hand on every node (publication,
 * triggers, tombstones); `tables add pgmesh.conflict` publishes pgmesh's node-local catalog to the other nodes, and
 * `tables add pg_catalog.pg_class` ends in "unexpected error".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, withCluster, type TestCluster } from '../support/cluster.ts';
import { pgmesh } from '../support/cli.ts';

const SCHEMA = `
CREATE TABLE public.kept (id integer PRIMARY KEY, v text);
CREATE TABLE public.dropped (id integer PRIMARY KEY, v text);
`;

/** What pgmesh has on a table on one node: published, its triggers, its tombstones. */
async function pgmeshState(cluster: TestCluster, node: string, table: string): Promise<{ published: boolean; triggers: string; tombstones: number }> {
  const rows = await cluster.node(node).sql.unsafe<{ published: boolean; triggers: string; tombstones: number }[]>(
    `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'pgmesh' AND format('%I.%I', schemaname, tablename) = $1) AS published,
            (SELECT coalesce(string_agg(tgname, ', ' ORDER BY tgname), '') FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname LIKE 'pgmesh%') AS triggers,
            (SELECT count(*)::int FROM pgmesh.tombstone WHERE relid = $1::regclass) AS tombstones`,
    [table],
  );
  return rows[0] ?? assert.fail(`no state for ${table} on ${node}`);
}

async function ids(cluster: TestCluster, node: string, table: string): Promise<number[]> {
  return (await cluster.node(node).sql.unsafe<{ id: number }[]>(`SELECT id FROM ${table} ORDER BY id`)).map((r) => r.id);
}

test('tables remove: the table leaves replication on every node, its triggers and tombstones go, its rows stay, and later writes stay where they are made', { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const n1 = cluster.node('n1');
    await n1.sql.unsafe(`INSERT INTO public.dropped SELECT g, 'row ' || g FROM generate_series(1, 5) g`);
    await n1.sql.unsafe(`INSERT INTO public.kept VALUES (1, 'one')`);
    await cluster.waitConverged(['public.dropped', 'public.kept']);
    await cluster.node('n2').sql.unsafe(`DELETE FROM public.dropped WHERE id = 5`);
    await cluster.waitConverged(['public.dropped']);
    assert.deepEqual(await pgmeshState(cluster, 'n3', 'public.dropped'), {
      published: true,
      triggers: 'pgmesh_ddl_fence, pgmesh_record_deletes, pgmesh_record_key_change, pgmesh_record_truncate',
      tombstones: 1,
    });

    const removed = await pgmesh(['tables', 'remove', 'public.dropped'], { config: cluster.configPath });
    assert.equal(removed.code, 0, removed.output);
    assert.match(removed.stdout, /n1: no longer replicating public\.dropped/);
    for (const node of cluster.nodes) {
      assert.deepEqual(await pgmeshState(cluster, node.name, 'public.dropped'), { published: false, triggers: '', tombstones: 0 }, node.name);
      assert.deepEqual(await ids(cluster, node.name, 'public.dropped'), [1, 2, 3, 4], `the rows stay on ${node.name}`);
    }
    const listed = await pgmesh(['tables', 'list', '--json'], { config: cluster.configPath });
    assert.deepEqual(JSON.parse(listed.stdout), { n1: ['public.kept'], n2: ['public.kept'], n3: ['public.kept'] });

    // Written after the removal: n1's changes to the removed table stay on n1. The kept table's write, made after
    // them in n1's stream, marks when they would have arrived.
    await n1.sql.unsafe(`INSERT INTO public.dropped VALUES (6, 'n1 only'); DELETE FROM public.dropped WHERE id = 1`);
    await n1.sql.unsafe(`INSERT INTO public.kept VALUES (2, 'marker')`);
    await cluster.waitConverged(['public.kept']);
    assert.deepEqual(await ids(cluster, 'n1', 'public.dropped'), [2, 3, 4, 6]);
    for (const node of ['n2', 'n3']) assert.deepEqual(await ids(cluster, node, 'public.dropped'), [1, 2, 3, 4], `nothing new reached ${node}`);
    assert.equal((await pgmeshState(cluster, 'n1', 'public.dropped')).tombstones, 0, 'a delete leaves no tombstone any more');

    // Again: nothing to do, said so; a table that does not exist is a failure.
    const again = await pgmesh(['tables', 'remove', 'public.dropped'], { config: cluster.configPath });
    assert.equal(again.code, 0, again.output);
    assert.match(again.stdout, /n2: public\.dropped was not replicated/);
    const missing = await pgmesh(['tables', 'remove', 'public.nope'], { config: cluster.configPath });
    assert.equal(missing.code, 1, missing.output);
    assert.match(missing.stdout, /table public\.nope does not exist/);
    await eventually(async () => (await cluster.node('n3').sql.unsafe(`SELECT 1 FROM public.kept WHERE id = 2`)).length === 1, {
      what: 'the kept table to replicate still',
    });
  });
});

test('system tables and pgmesh\'s own catalog are refused as bad input, and nothing changes', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const published = async () => (await cluster.node('n1').sql.unsafe(`SELECT count(*)::int AS n FROM pg_publication_tables WHERE pubname = 'pgmesh'`))[0]?.n;
    const before = await published();
    const cases: [string[], RegExp][] = [
      [['tables', 'add', 'pgmesh.conflict'], /pgmesh\.conflict is part of pgmesh's own catalog/],
      [['tables', 'add', 'pg_catalog.pg_class'], /pg_catalog\.pg_class is a system table/],
      [['tables', 'add', 'information_schema.tables', 'public.kept'], /information_schema\.tables is a system table/],
      [['tables', 'add', 'pg_toast.pg_toast_1262'], /pg_toast\.pg_toast_1262 is a system table/],
      [['tables', 'remove', 'pgmesh.tombstone'], /pgmesh\.tombstone is part of pgmesh's own catalog/],
      [['cluster', 'create', '--tables', 'public.kept,pgmesh.peer'], /pgmesh\.peer is part of pgmesh's own catalog/],
    ];
    for (const [args, message] of cases) {
      const result = await pgmesh(args, { config: cluster.configPath });
      assert.equal(result.code, 2, `pgmesh ${args.join(' ')}: ${result.output}`);
      assert.match(result.stderr, message, args.join(' '));
      assert.doesNotMatch(result.output, /unexpected error/);
    }
    assert.equal(await published(), before, 'the publication is as it was');
  });
});
