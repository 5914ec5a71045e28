/**
 * One real server with pgmesh installed; `app` owns its schema and a replicated table.
 * Scenario: app makes a domain whose CHECK calls its own function, a range type over that domain, and adds a column
 * of the range (then of its multirange) to its replicated table.
 * Without the code under test (the owner-code guard following range subtypes): both columns are accepted, and every
 * value a peer sends for them is cast from text by pgmesh's apply statement: range_in reads each bound with the
 * domain's input, which runs app's function with the rights of the apply session (the agent; a superuser agent).
 * A superuser's cast of such a value runs it too (shown below): that is what the guard must keep away.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { addTables, initNode } from '../../src/cluster/node-admin.ts';
import { withServer, type Sql } from '../support/cluster.ts';

test('a range or multirange over a domain whose CHECK calls a role\'s function is refused on a replicated table', { timeout: 120_000 }, async () => {
  await withServer('n1', async (server, sql) => {
    await sql.unsafe(`
      CREATE ROLE app LOGIN PASSWORD 'app-pw';
      CREATE SCHEMA app AUTHORIZATION app;
      CREATE TABLE public.ran (who text);
      GRANT INSERT ON public.ran TO PUBLIC;
      SET ROLE app;
      CREATE TABLE app.items (id integer PRIMARY KEY, v text);
      CREATE FUNCTION app.trap(integer) RETURNS boolean LANGUAGE plpgsql AS $fn$
      BEGIN INSERT INTO public.ran VALUES (current_user); RETURN true; END $fn$;
      CREATE DOMAIN app.d AS integer CHECK (app.trap(VALUE));
      CREATE TYPE app.rng AS RANGE (subtype = app.d);
      RESET ROLE;
    `);
    await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 4, expectedPeers: 1 });
    await addTables(sql, [{ schema: 'app', name: 'items' }]);

    // What pgmesh's apply would do with a value of such a column: the cast runs app's function as the caller.
    await sql.unsafe(`SELECT '[1,5)'::text::app.rng`);
    assert.deepEqual([...(await sql.unsafe(`SELECT who FROM public.ran`))], [{ who: 'postgres' }, { who: 'postgres' }]);

    const url = new URL(server.dsn);
    url.username = 'app';
    url.password = 'app-pw';
    const app = postgres(url.toString(), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
    try {
      await assert.rejects(app.unsafe(`ALTER TABLE app.items ADD COLUMN r app.rng`), /PM011|app\.trap\(integer\), owned by app/);
      await assert.rejects(app.unsafe(`ALTER TABLE app.items ADD COLUMN m app.rng_multirange`), /PM011|app\.trap\(integer\), owned by app/);
    } finally {
      await app.end({ timeout: 1 });
    }
  });
});
