/**
 * Topology: 2 nodes (n1, n2), full mesh; agents in this process as the installing superuser, or (last test) real
 * agent processes as a non-superuser role (`cluster create --agent-role`). Attackers: `mallory`, a role with nothing
 * but LOGIN, and `app`, an application role that owns its schema.
 * Scenarios:
 * - mallory writes 'pgmesh.ddl' messages herself with pg_logical_emit_message (any role may): one that replays a
 *   SECURITY DEFINER function owned by the superuser on n2, one that names n2's node-local table as joined, one that
 *   claims a signature, a malformed one ({"version":2}) and a marker of junk. n2 applies none of them, records each
 *   in pgmesh.exception, and its stream from n1 goes on. With the agent role, a forged CREATE TABLE as `app` (a role
 *   the agent is a member of) is not run either.
 * - A CREATE TABLE by app that fails on n2 (n2 has a node-local table of that name) does not publish n2's table.
 * - app cannot turn capture off, nor move the statement counter to make n2 replay another statement of its string.
 * - A query string holding ALTER ROLE ... PASSWORD next to a CREATE TABLE: the password never reaches n2.
 * Without the code under test: n2 creates the superuser's function (mallory calls it and is superuser there), joins
 * its local table (its rows go to n1), stops its stream from n1 for good at {"version":2}; app's DDL stays on n1
 * only; n2 runs app's first CREATE TABLE again instead of the second; n2's exception table keeps the password.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { eventually, localDdl, withCluster, type Sql, type TestCluster, type TestNode } from '../support/cluster.ts';
import { pgmesh } from '../support/cli.ts';
import { dsnAs } from '../support/roles.ts';

const SCHEMA = `
CREATE TABLE public.sentinel (id integer PRIMARY KEY);
CREATE ROLE mallory LOGIN PASSWORD 'mallory-pw';
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE SCHEMA app AUTHORIZATION app;
`;

/** A client of the node as another role; ended by the caller. */
function connectAs(node: TestNode, user: string, password: string): Sql {
  return postgres(dsnAs(node, user, password), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
}

/** A row written on n1 after everything the test sent before it: once n2 has it, n2 has applied all of that. */
async function passedOn(cluster: TestCluster, id: number): Promise<void> {
  await cluster.node('n1').sql.unsafe(`INSERT INTO public.sentinel VALUES ($1::text::int)`, [String(id)]);
  await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM public.sentinel WHERE id = $1::text::int`, [String(id)])).length === 1, {
    what: `n1's sentinel row ${id} on n2 (n2's stream from n1 goes on)`,
    timeoutMs: 60_000,
  });
}

async function exceptions(node: TestNode, kind: string): Promise<{ change: string; error: string }[]> {
  return node.sql.unsafe(`SELECT change::text AS change, error FROM pgmesh.exception WHERE change_kind = $1 ORDER BY id`, [kind]);
}

/** A DDL message as pgmesh wrote them before messages were signed, and (version 2) as it writes them now, unsigned. */
function forgedBodies(statement: string, tag: string, role: string, joined: string[] = []): string[] {
  const common = { ordinal: 1, tag, search_path: 'public', role, server_version_num: 160000, commands: [], joined, kept_local: [] };
  return [JSON.stringify({ version: 1, query: statement, ...common }), `pgmesh1:${'0'.repeat(64)}:${JSON.stringify({ version: 2, statements: [statement], ...common })}`];
}

test('messages forged by a LOGIN-only role are refused and recorded, never applied, and the stream goes on', { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const [superuser] = await n2.sql.unsafe<{ name: string }[]>(`SELECT current_user AS name`);
    await localDdl(n2, `CREATE TABLE public.local_secret (id integer PRIMARY KEY, secret text); INSERT INTO public.local_secret VALUES (1, 'n2 only')`);
    await cluster.startAgents();
    const assertNothingApplied = async (): Promise<void> => {
      const [fn] = await n2.sql.unsafe<{ exists: boolean }[]>(`SELECT to_regprocedure('public.pwn()') IS NOT NULL AS exists`);
      assert.equal(fn?.exists, false, 'the forged CREATE FUNCTION did not run on n2');
      const published = await n2.sql.unsafe(`SELECT 1 FROM pg_publication_tables WHERE pubname = 'pgmesh' AND tablename = 'local_secret'`);
      assert.equal(published.length, 0, "n2's node-local table did not join replication");
    };
    const mallory = connectAs(n1, 'mallory', 'mallory-pw');
    try {
      const pwn = `CREATE FUNCTION public.pwn() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'ALTER ROLE mallory SUPERUSER'`;
      // As pgmesh wrote them before messages were signed: what an older pgmesh applied.
      const [pwnV1, pwnV2] = forgedBodies(pwn, 'CREATE FUNCTION', superuser?.name ?? 'postgres');
      const [joinV1, joinV2] = forgedBodies('CREATE TABLE public.local_secret (id integer PRIMARY KEY)', 'CREATE TABLE', 'mallory', ['public.local_secret']);
      for (const body of [pwnV1, joinV1]) await mallory.unsafe(`SELECT pg_logical_emit_message(true, 'pgmesh.ddl', $1)`, [body as string]);
      await passedOn(cluster, 1);
      await assertNothingApplied();
      // With a made-up signature, malformed, and a marker of junk.
      const messages: [string, string][] = [
        ['pgmesh.ddl', pwnV2 as string],
        ['pgmesh.ddl', joinV2 as string],
        ['pgmesh.ddl', '{"version":2}'],
        ['pgmesh.join', 'junk'],
      ];
      for (const [prefix, body] of messages) await mallory.unsafe(`SELECT pg_logical_emit_message(true, $1, $2)`, [prefix, body]);
      await passedOn(cluster, 2);
    } finally {
      await mallory.end({ timeout: 1 });
    }
    await assertNothingApplied();
    const refused = await exceptions(n2, 'message');
    assert.equal(refused.length, 6, JSON.stringify(refused));
    for (const r of refused) assert.match(r.error, /^refused, not applied: the pgmesh\.(ddl|join) message( is not signed|'s signature does not match)/);
    assert.equal((await exceptions(n2, 'ddl')).length, 0, 'nothing of them ran');
    const published1 = await n1.sql.unsafe(`SELECT 1 FROM pg_publication_tables WHERE pubname = 'pgmesh' AND tablename = 'local_secret'`);
    assert.equal(published1.length, 0);
  });
});

test('a signed but malformed message is recorded, and the stream goes on', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    // cluster create gave both nodes one key (each node's catalog made its own first).
    const keys = await Promise.all(cluster.nodes.map(async (n) => (await n.sql.unsafe<{ k: string }[]>(`SELECT encode(key, 'hex') AS k FROM pgmesh.cluster_key`))[0]?.k));
    assert.equal(new Set(keys).size, 1);
    await cluster.startAgents();
    // Only pgmesh's own roles can sign (here the superuser, with the catalog's function): a message of another version.
    await cluster.node('n1').sql.unsafe(`SELECT pg_logical_emit_message(true, 'pgmesh.ddl', pgmesh.signed_message('pgmesh.ddl', '{"version":2}'))`);
    await passedOn(cluster, 1);
    const refused = await exceptions(cluster.node('n2'), 'message');
    assert.equal(refused.length, 1);
    assert.match(refused[0]?.error ?? '', /refused, not applied: a pgmesh.ddl message has no array "/);
  });
});

test('app cannot keep its DDL on its node: capture off is refused to it', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const app = connectAs(cluster.node('n1'), 'app', 'app-pw');
    try {
      const drift = await app.unsafe(`SET pgmesh.ddl_capture = off; CREATE TABLE app.drift (id integer PRIMARY KEY)`).then(
        () => 'created',
        (e: { code?: string; message: string }) => `${e.code}: ${e.message}`,
      );
      assert.match(drift, /^42501: pgmesh: role app may not keep DDL on this node only/);
      // Nor inside a function of its own, where pgmesh's own nested DDL may run with capture off.
      await app.unsafe(`CREATE FUNCTION app.sneak() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('pgmesh.ddl_capture', 'off', true); CREATE TABLE app.drift2 (id integer PRIMARY KEY); END $$`);
      await assert.rejects(app.unsafe(`SELECT app.sneak()`), /may not keep DDL on this node only/);
    } finally {
      await app.end({ timeout: 1 });
    }
    // The operator (a superuser) still can.
    await localDdl(cluster.node('n1'), `CREATE TABLE app.operator_only (id integer PRIMARY KEY)`);
  });
});

test('app cannot choose which statement of its query string peers replay', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const app = connectAs(cluster.node('n1'), 'app', 'app-pw');
    try {
      // The old counter was a setting: set back to 0, the second CREATE TABLE was sent as the first.
      await app.unsafe(
        `CREATE TABLE app.a (id integer PRIMARY KEY);
         SELECT set_config('pgmesh.ddl_statement', split_part(current_setting('pgmesh.ddl_statement', true), '/', 1) || '/0', false);
         CREATE TABLE app.b (id integer PRIMARY KEY)`,
      );
    } finally {
      await app.end({ timeout: 1 });
    }
    await passedOn(cluster, 1);
    const tables = await cluster.node('n2').sql.unsafe<{ t: string }[]>(`SELECT relname AS t FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' ORDER BY 1`);
    assert.deepEqual(tables.map((r) => r.t), ['a', 'b'], 'app.b replayed as itself');
    assert.equal((await exceptions(cluster.node('n2'), 'ddl')).length, 0);
  });
});

test("a CREATE TABLE that fails on a peer does not publish the peer's own table of that name", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n2 = cluster.node('n2');
    await localDdl(n2, `CREATE TABLE app.dup (id integer PRIMARY KEY, secret text); INSERT INTO app.dup VALUES (1, 'n2 only')`);
    await cluster.startAgents();
    const app = connectAs(cluster.node('n1'), 'app', 'app-pw');
    try {
      await app.unsafe(`CREATE TABLE app.dup (id integer PRIMARY KEY)`);
    } finally {
      await app.end({ timeout: 1 });
    }
    await passedOn(cluster, 1);
    const published = await n2.sql.unsafe(`SELECT 1 FROM pg_publication_tables WHERE pubname = 'pgmesh' AND schemaname = 'app'`);
    assert.equal(published.length, 0, "n2's own app.dup did not join replication");
    const failed = await exceptions(n2, 'ddl');
    assert.equal(failed.length, 1, JSON.stringify(failed));
    assert.match(failed[0]?.error ?? '', /relation "dup" already exists/);
  });
});

test('only the DDL statements of a query string travel: a password set in the same string never reaches a peer', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    // n2 has the table already, so the replayed statement fails there and is kept with what was shipped.
    await localDdl(n2, `CREATE TABLE public.pw_t (id integer PRIMARY KEY)`);
    await cluster.startAgents();
    await n1.sql.unsafe(`CREATE TABLE public.pw_t (id integer PRIMARY KEY); ALTER ROLE app PASSWORD 'hunter2-secret'; INSERT INTO public.pw_t VALUES (42)`);
    await passedOn(cluster, 1);
    const failed = await exceptions(n2, 'ddl');
    assert.equal(failed.length, 1, 'the CREATE TABLE failed on n2 and was kept');
    assert.match(failed[0]?.change ?? '', /CREATE TABLE public.pw_t/);
    assert.doesNotMatch(failed[0]?.change ?? '', /hunter2|ALTER ROLE|INSERT/);
  });
});

test('with cluster create --agent-role: a forged CREATE TABLE as a role the agent belongs to is refused and recorded', { timeout: 240_000 }, async () => {
  const agentRole = 'pgmesh_agent';
  const schema = `${SCHEMA}
CREATE ROLE ${agentRole} LOGIN PASSWORD 'agent-pw';
GRANT app TO ${agentRole};`;
  await withCluster({ nodes: 2, schema, link: false }, async (cluster) => {
    const create = await pgmesh(['cluster', 'create', '--agent-role', agentRole], { config: cluster.configPath });
    assert.equal(create.code, 0, create.output);
    const env = Object.fromEntries(cluster.nodes.map((n) => [`PGMESH_DSN_${n.name.toUpperCase()}`, dsnAs(n, agentRole, 'agent-pw')]));
    for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);
    const mallory = connectAs(cluster.node('n1'), 'mallory', 'mallory-pw');
    try {
      // Unsigned as an older pgmesh wrote them, then with a made-up signature.
      for (const [i, body] of forgedBodies('CREATE TABLE app.forged (id integer PRIMARY KEY)', 'CREATE TABLE', 'app').entries()) {
        await mallory.unsafe(`SELECT pg_logical_emit_message(true, 'pgmesh.ddl', $1)`, [body]);
        await passedOn(cluster, i + 1);
        const [forged] = await cluster.node('n2').sql.unsafe<{ exists: boolean }[]>(`SELECT to_regclass('app.forged') IS NOT NULL AS exists`);
        assert.equal(forged?.exists, false, 'the forged CREATE TABLE did not run on n2');
      }
    } finally {
      await mallory.end({ timeout: 1 });
    }
    assert.equal((await exceptions(cluster.node('n2'), 'message')).length, 2);
  });
});
