/**
 * One real server with pgmesh installed and a table replicated; an application role with rights on that table only.
 * Scenario: what pgmesh's catalog lets such a role do, directly or through the triggers on its table, even when it
 * is given USAGE on schema pgmesh (as an administrator might for monitoring): call each pgmesh function, attach
 * pgmesh's trigger functions to a table of its own (the statement triggers' are closed; the row triggers' are open,
 * for partitions, and must record nothing there), and bend what the triggers run (which run as the catalog's
 * owner) with an operator of its own that it puts first on its search_path.
 * Without the code under test: every pgmesh function is executable by everyone; a trigger function without a pinned
 * search_path runs the role's operator with the owner's rights (a superuser's); the row triggers, attached to the
 * role's own table, write its keys into pgmesh's tombstones and claims as the catalog's owner.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { PUBLIC_FUNCTIONS } from '../../src/cluster/catalog-schema.ts';
import { addTables, initNode } from '../../src/cluster/node-admin.ts';
import { withServer, type Sql } from '../support/cluster.ts';

test('an application role cannot run pgmesh functions, attach its triggers, or bend them with its search_path', { timeout: 120_000 }, async () => {
  await withServer('n1', async (server, sql) => {
    await sql.unsafe(`
      CREATE TABLE public.items (id integer PRIMARY KEY, v text);
      CREATE ROLE app LOGIN PASSWORD 'app-pw';
      GRANT SELECT, INSERT, UPDATE, DELETE ON public.items TO app;
      GRANT CREATE ON DATABASE postgres TO app;
    `);
    await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 4, expectedPeers: 1 });
    await addTables(sql, [{ schema: 'public', name: 'items' }]);
    await sql.unsafe(`GRANT USAGE ON SCHEMA pgmesh TO PUBLIC`);

    const url = new URL(server.dsn);
    url.username = 'app';
    url.password = 'app-pw';
    const app = postgres(url.toString(), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
    try {
      const functions = await sql.unsafe<{ fn: string; call: string; trigger: boolean }[]>(
        `SELECT p.oid::regprocedure::text AS fn, p.prorettype = 'trigger'::regtype AS trigger,
                format('SELECT pgmesh.%I(%s)', p.proname,
                       (SELECT string_agg(format('NULL::%s', t::regtype), ', ') FROM unnest(p.proargtypes) AS t)) AS call
           FROM pg_proc p WHERE p.pronamespace = 'pgmesh'::regnamespace ORDER BY 1`,
      );
      assert.ok(functions.length >= 10, `pgmesh has its functions: ${functions.map((f) => f.fn).join(', ')}`);
      // Those meant for applications (column defaults) are open to every role, and run as pgmesh's owner.
      for (const f of functions.filter((f) => !PUBLIC_FUNCTIONS.some((name) => f.fn.startsWith(`pgmesh.${name}(`)))) {
        await assert.rejects(app.unsafe(f.call), /permission denied for function/, `app runs ${f.fn}`);
      }
      await app.unsafe(`CREATE SCHEMA mine; CREATE TABLE mine.t (id integer PRIMARY KEY)`);
      await assert.rejects(
        app.unsafe(`CREATE TRIGGER steal AFTER DELETE ON mine.t REFERENCING OLD TABLE AS pgmesh_deleted FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.record_deletes('id')`),
        /permission denied for function (pgmesh\.)?record_deletes/,
      );
      // The row triggers' functions are executable by every role (PostgreSQL checks that for a table's owner who makes
      // a partition: it clones them). Attached to a table pgmesh does not replicate (a temporary one: a new table
      // with a primary key joins replication), they record nothing.
      await app.unsafe(`CREATE TEMP TABLE u (id integer PRIMARY KEY, code integer UNIQUE)`);
      await app.unsafe(`INSERT INTO pg_temp.u VALUES (1, 1), (5, 5)`);
      await app.unsafe(`CREATE TRIGGER k AFTER UPDATE ON pg_temp.u FOR EACH ROW EXECUTE FUNCTION pgmesh.record_key_change('id')`);
      await app.unsafe(`CREATE TRIGGER r AFTER UPDATE OR DELETE ON pg_temp.u FOR EACH ROW EXECUTE FUNCTION pgmesh.record_unique_release('id')`);
      await app.unsafe(`UPDATE pg_temp.u SET id = 2, code = 3 WHERE id = 1`);
      await app.unsafe(`DELETE FROM pg_temp.u WHERE id = 5`);
      const temp = `(SELECT c.oid FROM pg_class c WHERE c.relname = 'u' AND c.relpersistence = 't')`;
      const planted = await sql.unsafe(
        `SELECT 'tombstone' AS what, pkey FROM pgmesh.tombstone WHERE relid = ${temp}
         UNION ALL SELECT 'claim', value FROM pgmesh.unique_claim WHERE relid = ${temp}`,
      );
      assert.deepEqual([...planted], [], 'pgmesh\'s triggers recorded keys of a table it does not replicate');

      // The triggers run as the catalog's owner: an operator of the role's own, first on its search_path, must not
      // be what they run.
      await app.unsafe(`
        CREATE FUNCTION mine.hijack(jsonb, text) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'hijacked: running as %', current_user; END $$;
        CREATE OPERATOR mine.-> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = mine.hijack);
      `);
      await app.unsafe(`INSERT INTO public.items VALUES (1, 'a'), (2, 'b')`);
      await app.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL search_path = mine, pg_catalog`);
        await tx.unsafe(`DELETE FROM public.items WHERE id = 1`);
        await tx.unsafe(`UPDATE public.items SET id = 3 WHERE id = 2`);
      });
      const tombstones = await sql.unsafe<{ pkey: string }[]>(`SELECT pkey FROM pgmesh.tombstone ORDER BY pkey`);
      assert.deepEqual(tombstones.map((t) => t.pkey), ['[1]', '[2]'], 'the delete and the key change left their tombstones');
      await assert.rejects(app.unsafe(`SELECT * FROM pgmesh.tombstone`), /permission denied for table tombstone/);
    } finally {
      await app.end({ timeout: 1 });
    }
  });
});
