/**
 * Topology: 2 nodes, full mesh, agents in this process (as the installing superuser).
 * Scenario: an application role that has only SELECT, INSERT, UPDATE, DELETE and TRUNCATE on a replicated table,
 * and no right at all in pgmesh's schema, writes every kind of change on both nodes: inserts, updates, updates of
 * the primary key, deletes, a truncate. Every write must succeed and reach the other node, and the deletes and key
 * changes must leave their tombstones (the triggers pgmesh installed on the table really ran).
 * Without the code under test: the DELETE and the key change fail with "permission denied for schema pgmesh"
 * (the triggers run as the writing role), so applications lose the right to delete once the table replicates.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { withRole } from '../support/roles.ts';

const SCHEMA = `
CREATE TABLE public.items (id integer PRIMARY KEY, v text NOT NULL);
CREATE ROLE app LOGIN PASSWORD 'app-pw';
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.items TO app;
`;

const asApp = <T>(cluster: TestCluster, node: string, body: (sql: Sql) => Promise<T>): Promise<T> => withRole(cluster.node(node), 'app', 'app-pw', body);

async function rows(cluster: TestCluster, node: string): Promise<string[]> {
  const result = await cluster.node(node).sql.unsafe<{ id: number; v: string }[]>(`SELECT id, v FROM public.items ORDER BY id`);
  return result.map((r) => `${r.id}:${r.v}`);
}

async function tombstones(cluster: TestCluster, node: string): Promise<string[]> {
  const result = await cluster.node(node).sql.unsafe<{ pkey: string }[]>(
    `SELECT pkey FROM pgmesh.tombstone WHERE relid = 'public.items'::regclass ORDER BY pkey`,
  );
  return result.map((r) => r.pkey);
}

test('an application role with only its table privileges inserts, updates, changes keys, deletes and truncates on both nodes; everything replicates', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const superuser = await asApp(cluster, 'n1', (sql) => sql.unsafe<{ su: boolean }[]>(`SELECT rolsuper AS su FROM pg_roles WHERE rolname = current_user`));
    assert.equal(superuser[0]?.su, false, 'the application role is not a superuser');

    await asApp(cluster, 'n1', (sql) => sql.unsafe(`INSERT INTO public.items VALUES (1, 'one'), (2, 'two'), (3, 'three')`));
    await asApp(cluster, 'n2', (sql) => sql.unsafe(`INSERT INTO public.items VALUES (10, 'ten'), (11, 'eleven')`));
    await cluster.waitConverged(['public.items']);

    await asApp(cluster, 'n1', async (sql) => {
      await sql.unsafe(`UPDATE public.items SET v = 'one!' WHERE id = 1`);
      await sql.unsafe(`UPDATE public.items SET id = 20 WHERE id = 2`);
      await sql.unsafe(`DELETE FROM public.items WHERE id = 3`);
    });
    await asApp(cluster, 'n2', async (sql) => {
      await sql.unsafe(`DELETE FROM public.items WHERE id = 10`);
      await sql.unsafe(`UPDATE public.items SET id = 12, v = 'twelve' WHERE id = 11`);
    });
    await cluster.waitConverged(['public.items']);
    for (const node of ['n1', 'n2']) {
      assert.deepEqual(await rows(cluster, node), ['1:one!', '12:twelve', '20:two'], `rows on ${node}`);
      // Each node recorded its own deletes and key changes, and applied the other's with their tombstones.
      assert.deepEqual(await tombstones(cluster, node), ['[10]', '[11]', '[2]', '[3]'], `tombstones on ${node}`);
    }

    await asApp(cluster, 'n2', (sql) => sql.unsafe(`TRUNCATE public.items`));
    await cluster.waitConverged(['public.items']);
    assert.deepEqual(await rows(cluster, 'n1'), [], 'the truncate reached n1');
  });
});
