/**
 * Topology: 2 nodes, full mesh, agents in this process (as the installing superuser).
 * Scenario: an application role `app` that owns its schema and its replicated table, and nothing else, changes a
 * column's type with a USING expression that calls a function of its own (it runs over every row). On the origin the function does nothing; where it runs in replica mode
 * (a peer replaying the DDL) it tries to leave its role (`RESET ROLE`, `SET ROLE`) and make `app` a superuser.
 * Replayed DDL must run with `app`'s rights and no more: on n2 the role change is refused, the statement fails and is
 * kept as an exception, and `app` is no superuser anywhere. The settings of the apply session that the function
 * changed with a plain SET (search_path, a pgmesh setting) are put back.
 * Without the code under test (apply_ddl running the statement under SET LOCAL ROLE in the agent's session): the
 * function's RESET ROLE makes it the agent again, and `app` is superuser on n2.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { eventually, withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';

const SCHEMA = `
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE SCHEMA app AUTHORIZATION app;
CREATE TABLE app.items (id integer PRIMARY KEY, v text);
ALTER TABLE app.items OWNER TO app;
INSERT INTO app.items VALUES (1, 'one'), (2, 'two');
SET ROLE app;
-- In replica mode (a peer's apply session) the default tries every way out of its role.
CREATE FUNCTION app.escape(how text) RETURNS integer LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_setting('session_replication_role') = 'replica' THEN
    EXECUTE how;
    ALTER ROLE app SUPERUSER;
  END IF;
  RETURN 1;
END
$fn$;
-- In replica mode: leaves settings of its own behind (a plain SET outlives the function that ran it).
CREATE FUNCTION app.leave() RETURNS integer LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_setting('session_replication_role') = 'replica' THEN
    SET application_name = 'leaked';
    SET pgmesh.ddl_capture = 'leaked';
    SET search_path = app, pg_catalog;
  END IF;
  RETURN 1;
END
$fn$;
-- In replica mode: fails if it finds them.
CREATE FUNCTION app.probe() RETURNS integer LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_setting('session_replication_role') = 'replica' AND (current_setting('application_name') = 'leaked' OR current_setting('pgmesh.ddl_capture', true) = 'leaked') THEN
    RAISE EXCEPTION 'found settings left by app.leave() in the apply session';
  END IF;
  RETURN 1;
END
$fn$;
RESET ROLE;
`;

async function asApp(cluster: TestCluster, node: string, statement: string): Promise<void> {
  const sql = postgres(dsnAs(cluster.node(node), 'app', 'app-pw'), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
  try {
    await sql.unsafe(statement);
  } finally {
    await sql.end({ timeout: 1 });
  }
}

async function isSuperuser(cluster: TestCluster, node: string): Promise<boolean> {
  const rows = await cluster.node(node).sql.unsafe<{ su: boolean }[]>(`SELECT rolsuper AS su FROM pg_roles WHERE rolname = 'app'`);
  return rows[0]?.su === true;
}

for (const how of ['RESET ROLE', 'SET ROLE postgres', 'SET SESSION AUTHORIZATION postgres']) {
  test(`replayed DDL whose default does "${how}" runs as its role on the peer: refused there, app stays a plain role`, { timeout: 120_000 }, async () => {
    await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
      await cluster.startAgents();
      // A USING expression runs over the existing rows and leaves nothing behind: no replicated table keeps code of
      // app's, which pgmesh would refuse at the origin (owner-code-sql.ts), so the statement reaches n2.
      await asApp(cluster, 'n1', `ALTER TABLE app.items ALTER COLUMN v TYPE text USING v || app.escape(${JSON.stringify(how).replaceAll('"', "'")})`);
      await eventually(
        async () => {
          const rows = await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pgmesh.exception WHERE change_kind = 'ddl'`);
          return rows.length > 0 || (await isSuperuser(cluster, 'n2'));
        },
        { what: 'the ALTER TABLE to be replayed on n2' },
      );
      assert.equal(await isSuperuser(cluster, 'n2'), false, 'app became superuser on n2 through replayed DDL');
      assert.equal(await isSuperuser(cluster, 'n1'), false);
      const errors = await cluster.node('n2').sql.unsafe<{ error: string; sqlstate: string }[]>(
        `SELECT error, sqlstate FROM pgmesh.exception WHERE change_kind = 'ddl'`,
      );
      assert.equal(errors.length, 1);
      assert.equal(errors[0]?.sqlstate, '42501', errors[0]?.error);
      assert.match(errors[0]?.error ?? '', /cannot set parameter "(role|session_authorization)" within security-definer function/);

      // The apply session goes on with its own settings: rows written after the failed DDL still arrive.
      await cluster.node('n1').sql.unsafe(`INSERT INTO app.items (id, v) VALUES (3, 'three')`);
      await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM app.items WHERE id = 3`)).length === 1, {
        what: 'a row written after the DDL to reach n2',
      });
    });
  });
}

test('replayed DDL whose code changes session settings with a plain SET: the apply session gets its own back', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    await asApp(cluster, 'n1', `ALTER TABLE app.items ALTER COLUMN v TYPE text USING v || app.leave()`);
    await asApp(cluster, 'n1', `ALTER TABLE app.items ADD COLUMN w integer, ALTER COLUMN v TYPE text USING v || app.probe()`);
    await eventually(
      async () => {
        const columns = await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pg_attribute WHERE attrelid = 'app.items'::regclass AND attname = 'w'`);
        const exceptions = await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pgmesh.exception WHERE change_kind = 'ddl'`);
        return columns.length === 1 || exceptions.length > 0;
      },
      { what: 'the second ALTER TABLE to be replayed on n2' },
    );
    const errors = await cluster.node('n2').sql.unsafe<{ error: string }[]>(`SELECT error FROM pgmesh.exception WHERE change_kind = 'ddl'`);
    assert.deepEqual(errors.map((e) => e.error), [], 'the first statement left its settings in the apply session');
  });
});
