/**
 * Topology: 2 nodes, full mesh; agents in this process (as the installing superuser), and `pgmesh start` processes
 * connecting as the least-privilege agent role of `cluster create --agent-role`.
 * Scenarios: an application role `app` that owns its schema and a replicated table tries to have its own code run in
 * pgmesh's sessions, where it would run with their rights: a trigger enabled ALWAYS (it fires in the apply session's
 * replica mode) that makes `app` a superuser; a column default, a CHECK, an index expression calling its function; a
 * cast from text to its enum (pgmesh's statements cast every value from text). pgmesh refuses each at the DDL, on the
 * node where it runs, and refuses a replayed statement that brings it (kept as an
 * exception); rows inserted afterwards replicate, and `app` is no superuser anywhere.
 * An agent does not start on a node where a replicated table has such code (its guard was disabled).
 * Without the code under test (pgmesh.owner_code_guard and the check in run_ddl_as): `ALTER TABLE ... ENABLE ALWAYS
 * TRIGGER` is accepted, the next row from n1 fires the trigger in n2's apply session as the agent, and `app` is a
 * superuser on n2.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { pgmesh } from '../support/cli.ts';
import { dsnAs, isSuperuser, withRole } from '../support/roles.ts';

const SCHEMA = `
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE ROLE pgmesh_agent LOGIN PASSWORD 'agent-pw';
CREATE SCHEMA app AUTHORIZATION app;
SET ROLE app;
CREATE TYPE app.mood AS ENUM ('happy', 'sad');
CREATE TABLE app.items (id integer PRIMARY KEY, v text, mood app.mood);
-- Who the trap fired as, in replica mode (a pgmesh session).
CREATE TABLE app.fired (who text PRIMARY KEY);
GRANT INSERT ON app.fired TO PUBLIC;
CREATE FUNCTION app.trap() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_setting('session_replication_role') = 'replica' THEN
    INSERT INTO app.fired VALUES (current_user) ON CONFLICT DO NOTHING;
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
      ALTER ROLE app SUPERUSER;
    END IF;
  END IF;
  RETURN NEW;
END
$fn$;
CREATE FUNCTION app.f(integer) RETURNS integer LANGUAGE sql IMMUTABLE AS $fn$ SELECT $1 $fn$;
CREATE FUNCTION app.mood_in(text) RETURNS app.mood LANGUAGE sql AS $fn$ SELECT $1::regtype::text::app.mood $fn$;
CREATE TRIGGER trap BEFORE INSERT OR UPDATE ON app.items FOR EACH ROW EXECUTE FUNCTION app.trap();
-- Code that reaches a replicated table from elsewhere: a partition's own default; the row type of a view, used by a
-- replicated column.
CREATE TABLE app.parts (id integer PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE app.parts_1 PARTITION OF app.parts FOR VALUES FROM (0) TO (100);
CREATE VIEW app.shape AS SELECT 1 AS a;
CREATE TABLE app.nested (id integer PRIMARY KEY, s app.shape);
CREATE TYPE app.hue AS ENUM ('red', 'blue');
CREATE FUNCTION app.hue_in(text) RETURNS app.hue LANGUAGE sql AS $fn$ SELECT $1::regtype::text::app.hue $fn$;
CREATE CAST (text AS app.hue) WITH FUNCTION app.hue_in(text);
RESET ROLE;
`;

/** The SQLSTATE that `statement` fails with as app on the node (undefined: it ran). */
function asApp(cluster: TestCluster, node: string, statement: string): Promise<string | undefined> {
  return withRole(cluster.node(node), 'app', 'app-pw', (sql) => sql.unsafe(statement)).then(
    () => undefined,
    (error: { code?: string }) => error.code,
  );
}

async function fired(cluster: TestCluster, node: string): Promise<string[]> {
  return (await cluster.node(node).sql.unsafe<{ who: string }[]>(`SELECT who FROM app.fired ORDER BY 1`)).map((r) => r.who);
}

async function replicates(cluster: TestCluster, id: number): Promise<void> {
  await cluster.node('n1').sql.unsafe(`INSERT INTO app.items (id, v) VALUES (${id}, 'x')`);
  await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM app.items WHERE id = ${id}`)).length === 1, {
    what: `row ${id} to reach n2`,
  });
}

test('code of an application role that pgmesh sessions would run is refused at the DDL, locally and when replayed', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    // On n2: the trigger would fire when n2 applies n1's rows. (The statements would replicate; each is refused
    // where it runs, before it is captured.)
    const local = '';
    const always = await asApp(cluster, 'n2', `${local}ALTER TABLE app.items ENABLE ALWAYS TRIGGER trap`);
    await replicates(cluster, 100);
    assert.equal(await isSuperuser(cluster.node('n2'), 'app'), false, 'app became superuser on n2');
    assert.deepEqual(await fired(cluster, 'n2'), [], 'the trap fired in a pgmesh session on n2');
    assert.equal(always, 'PM011');
    assert.equal(await asApp(cluster, 'n2', `${local}ALTER TABLE app.items ENABLE REPLICA TRIGGER trap`), 'PM011');
    assert.equal(await asApp(cluster, 'n2', `${local}ALTER TABLE app.items ADD COLUMN z integer DEFAULT app.f(1)`), 'PM011');
    assert.equal(await asApp(cluster, 'n2', `${local}ALTER TABLE app.items ADD CHECK (app.f(id) > 0)`), 'PM011');
    assert.equal(await asApp(cluster, 'n2', `${local}CREATE INDEX ON app.items (app.f(id))`), 'PM011');
    assert.equal(await asApp(cluster, 'n2', `${local}CREATE CAST (text AS app.mood) WITH FUNCTION app.mood_in(text)`), 'PM011');
    // A built-in that acts with its caller's rights, in a CHECK evaluated by every applied row (in replica mode only).
    assert.equal(await asApp(cluster, 'n2', `${local}ALTER TABLE app.items ADD CHECK (current_setting('session_replication_role') <> 'replica' OR set_config('role', 'postgres', false) IS NOT NULL)`), 'PM011');
    // What pgmesh vouches for is not refused: a default of now() (it fills n2's extra column when n1's rows arrive).
    assert.equal(await asApp(cluster, 'n2', `${local}ALTER TABLE app.items ADD COLUMN at timestamptz DEFAULT now()`), undefined);
    assert.equal(
      await asApp(cluster, 'n2', `${local}CREATE DOMAIN app.num AS integer DEFAULT app.f(1); ALTER TABLE app.items ADD COLUMN n app.num`),
      'PM011',
    );
    // The guard checks the replicated tables a command reaches, not only those it names (it would be too slow to
    // check every table on every statement): a new partition's default, a view's row type in a replicated column,
    // a superuser giving a function that a default calls to app.
    // (The partition as a superuser: app may not create one, it would need EXECUTE on pgmesh's row triggers, which
    // PostgreSQL clones to a new partition.)
    const n2 = cluster.node('n2').sql;
    await assert.rejects(n2.unsafe(`CREATE TABLE app.parts_2 PARTITION OF app.parts (v DEFAULT app.f(1)::text) FOR VALUES FROM (100) TO (200)`), /PM011|app\.parts_2\.v calls app\.f\(integer\), owned by app/);
    assert.equal(await asApp(cluster, 'n2', `CREATE OR REPLACE VIEW app.shape AS SELECT 1 AS a, 'red'::app.hue AS h`), 'PM011');
    await n2.unsafe(`SET pgmesh.ddl_capture = off; CREATE FUNCTION public.g(integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT $1'; ALTER TABLE app.items ADD COLUMN g integer DEFAULT public.g(1)`);
    await assert.rejects(n2.unsafe(`ALTER FUNCTION public.g(integer) OWNER TO app`), /PM011|default or generation expression of app\.items\.g calls public\.g\(integer\), owned by app/);
    await n2.unsafe(`SET pgmesh.ddl_capture = off; ALTER TABLE app.items DROP COLUMN g; RESET pgmesh.ddl_capture`);
    await replicates(cluster, 1);
    assert.equal(await isSuperuser(cluster.node('n2'), 'app'), false, 'app became superuser on n2');

    // A node without the guard (disabled by its superuser) sends the statement: n2 refuses it when it replays it.
    await cluster.node('n1').sql.unsafe(`ALTER EVENT TRIGGER pgmesh_owner_code_guard DISABLE`);
    assert.equal(await asApp(cluster, 'n1', `ALTER TABLE app.items ENABLE ALWAYS TRIGGER trap`), undefined);
    await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pgmesh.exception WHERE change_kind = 'ddl' AND sqlstate = 'PM011'`)).length === 1, {
      what: 'n2 to refuse the replayed ALTER TABLE ... ENABLE ALWAYS TRIGGER',
    });
    await replicates(cluster, 2);
    assert.equal(await isSuperuser(cluster.node('n2'), 'app'), false, 'app became superuser on n2');
    assert.deepEqual(await fired(cluster, 'n2'), [], 'the trap fired in a pgmesh session on n2');

    // n1 has the trigger enabled ALWAYS now (its guard was off): its agent refuses to start until it is fixed.
    await cluster.stopAgent('n1');
    await assert.rejects(cluster.startAgents(['n1']), /PM011|trigger trap on app\.items is enabled ALWAYS/);
    await cluster.node('n1').sql.unsafe(`ALTER TABLE app.items ENABLE TRIGGER trap`);
    await cluster.startAgents(['n1']);
  });
});

test('with the least-privilege agent: an ENABLE ALWAYS trigger is refused too, and never fires in its apply session', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, link: false }, async (cluster) => {
    const create = await pgmesh(['cluster', 'create', '--agent-role', 'pgmesh_agent'], { config: cluster.configPath });
    assert.equal(create.code, 0, create.output);
    const env = Object.fromEntries(cluster.nodes.map((n) => [`PGMESH_DSN_${n.name.toUpperCase()}`, dsnAs(n, 'pgmesh_agent', 'agent-pw')]));
    for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);
    const refused = await asApp(cluster, 'n2', `ALTER TABLE app.items ENABLE ALWAYS TRIGGER trap`);
    await replicates(cluster, 1);
    assert.deepEqual(await fired(cluster, 'n2'), [], 'the trap fired in the agent role\'s apply session on n2');
    assert.equal(refused, 'PM011');
    const enabled = await cluster.node('n2').sql.unsafe<{ e: string }[]>(`SELECT tgenabled::text AS e FROM pg_trigger WHERE tgname = 'trap'`);
    assert.equal(enabled[0]?.e, 'O', 'the trap stays enabled for origin sessions only');
    assert.equal(await isSuperuser(cluster.node('n2'), 'app'), false);
    assert.deepEqual(await fired(cluster, 'n2'), [], 'the trap fired in the agent role\'s apply session on n2');
  });
});
