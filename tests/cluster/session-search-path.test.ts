/**
 * Topology: 2 nodes, full mesh, agents in this process (as the installing superuser).
 * Scenario: a role that is not a superuser but has CREATE on schema public (the database owner, on PostgreSQL 15+)
 * plants `public.jsonb_build_array(integer)` and `public.unnest(text[])` (better matches than pg_catalog's variadic
 * and anyarray ones), whose bodies make their creator a superuser and note who ran them; then inserts rows into a
 * replicated table. The row must
 * replicate, and the planted function must never run in a pgmesh session, on either node.
 * Without the code under test (search_path pinned in every pgmesh session, src/pg/connect.ts): the apply session of
 * n1 reads a multi-row batch with unnest(a, b) in FROM (a spelling that cannot be qualified), resolves its
 * one-array unnest in public, and runs the planted function as the agent: the role becomes superuser there (before
 * the apply SQL qualified its other built-ins, jsonb_build_array did the same).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { withRole } from '../support/roles.ts';

// Run by whoever resolves the name to it: as a superuser it promotes its creator; it always says who ran it.
const PLANT = `
CREATE FUNCTION public.jsonb_build_array(integer) RETURNS jsonb LANGUAGE plpgsql AS $fn$
BEGIN
  INSERT INTO public.ran_as SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
  IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
    ALTER ROLE planter SUPERUSER;
  END IF;
  RETURN pg_catalog.jsonb_build_array($1::text);
END
$fn$;
-- Multi-row apply statements read their values with unnest(a, b, ...) in FROM: only that unqualified spelling is
-- PostgreSQL's ROWS FROM form, so its one-array unnest calls resolve along the session's search_path, where an exact
-- text[] signature beats pg_catalog's anyarray one.
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $fn$
BEGIN
  INSERT INTO public.ran_as SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
  IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
    ALTER ROLE planter SUPERUSER;
  END IF;
  RETURN QUERY SELECT * FROM pg_catalog.unnest($1);
END
$fn$;
`;

const SCHEMA = `
CREATE ROLE planter LOGIN PASSWORD 'planter-pw';
GRANT CREATE ON SCHEMA public TO planter;
CREATE TABLE public.items (id integer PRIMARY KEY, v text NOT NULL);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.items TO planter;
CREATE TABLE public.ran_as (who text, superuser boolean);
GRANT INSERT ON public.ran_as TO PUBLIC;
-- Planted on every node by the role itself, before pgmesh is installed (no DDL capture yet: each node's own).
SET ROLE planter;
${PLANT}
RESET ROLE;
`;

const asPlanter = <T>(cluster: TestCluster, node: string, body: (sql: Sql) => Promise<T>): Promise<T> => withRole(cluster.node(node), 'planter', 'planter-pw', body);

test('a function planted in public by a role with CREATE there never runs in a pgmesh session', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    await asPlanter(cluster, 'n1', (sql) => sql.unsafe(`INSERT INTO public.items VALUES (1, 'one')`));
    await asPlanter(cluster, 'n2', (sql) => sql.unsafe(`INSERT INTO public.items VALUES (2, 'two'), (3, 'three')`));
    await cluster.waitConverged(['public.items']);

    for (const node of ['n1', 'n2']) {
      const ran = await cluster.node(node).sql.unsafe<{ who: string }[]>(`SELECT who FROM public.ran_as`);
      assert.deepEqual(ran.map((r) => r.who), [], `the planted function ran on ${node}`);
      const su = await cluster.node(node).sql.unsafe<{ su: boolean }[]>(`SELECT rolsuper AS su FROM pg_roles WHERE rolname = 'planter'`);
      assert.equal(su[0]?.su, false, `planter became superuser on ${node}`);
    }
  });
});
