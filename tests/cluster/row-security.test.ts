/**
 * Topology: 2 nodes, full mesh, agents as child processes connecting as the least-privilege agent role of
 * `cluster create --agent-role` (a superuser agent bypasses row-level security: nothing to test there).
 * Scenario: `app`, an application role that owns its schema and a replicated table, enables row-level security on it
 * with a policy that calls its own function (a trap that records who runs it, and tries to read pgmesh.cluster_key and
 * another tenant's table), then writes rows on n2. n1's agent applies them.
 * Then app revokes the agent's rights on its table (an owner may) and writes again on n2.
 * Without the code under test (row_security = off in every pgmesh session): the policy runs in n1's apply session as
 * the agent role: the trap reads the cluster key (with which app could sign DDL messages as any role, a superuser
 * included) and the other tenant's rows. With it, the change fails in the apply session (42501) and is kept as an
 * exception; the trap never runs there. Without 42501 among the errors applied change by change
 * (src/core/sqlstate.ts): that failure, and the revoke's, stop the stream from n2 for every tenant. Without the agent
 * starting when it lacks only rights on replicated tables (ownerControlled, src/agent/agent.ts): n1's agent,
 * restarted, refuses to start ("lacks BYPASSRLS", "lacks SELECT ... on app.items"), for every tenant.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { eventually, localDdl, withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';
import { pgmesh } from '../support/cli.ts';

const SCHEMA = `
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE ROLE other LOGIN PASSWORD 'other-pw';
CREATE ROLE pgmesh_agent LOGIN PASSWORD 'agent-pw';
-- Replayed DDL runs as its role: the least-privilege agent must be allowed to become it (not to inherit its rights).
GRANT app TO pgmesh_agent WITH INHERIT FALSE;
CREATE SCHEMA app AUTHORIZATION app;
CREATE SCHEMA other AUTHORIZATION other;
SET ROLE other;
CREATE TABLE other.secret (id integer PRIMARY KEY, s text);
SET ROLE app;
CREATE TABLE app.items (id integer PRIMARY KEY, v text);
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE FUNCTION app.trap(tag text) RETURNS boolean LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_user::text <> 'app' THEN
    INSERT INTO public.loot (who, what) VALUES (current_user, tag);
    BEGIN
      INSERT INTO public.loot (who, what) SELECT current_user, 'cluster key ' || encode(k.key, 'hex') FROM pgmesh.cluster_key k;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
      INSERT INTO public.loot (who, what) SELECT current_user, 'secret ' || s.s FROM other.secret s;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
  END IF;
  RETURN true;
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

test('with the least-privilege agent: a row-level security policy of a table\'s owner never runs in the apply session', { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, link: false }, async (cluster) => {
    const create = await pgmesh(['cluster', 'create', '--agent-role', 'pgmesh_agent'], { config: cluster.configPath });
    assert.equal(create.code, 0, create.output);
    for (const node of cluster.nodes) {
      await localDdl(node, `CREATE TABLE public.loot (who text, what text); GRANT INSERT ON public.loot TO PUBLIC`);
    }
    const env = Object.fromEntries(cluster.nodes.map((n) => [`PGMESH_DSN_${n.name.toUpperCase()}`, dsnAs(n, 'pgmesh_agent', 'agent-pw')]));
    for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);

    await cluster.node('n1').sql.unsafe(`INSERT INTO other.secret VALUES (1, 'other-secret')`);
    await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM other.secret WHERE id = 1`)).length === 1, {
      what: 'the agents to run',
    });
    await asApp(cluster, 'n1', `ALTER TABLE app.items ENABLE ROW LEVEL SECURITY`);
    await asApp(cluster, 'n1', `CREATE POLICY p ON app.items USING (app.trap('policy using')) WITH CHECK (app.trap('policy check'))`);
    await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pg_policy WHERE polname = 'p'`)).length === 1, {
      what: 'the policy on n2',
    });
    await asApp(cluster, 'n2', `INSERT INTO app.items VALUES (1, 'a'), (2, 'b')`);
    await asApp(cluster, 'n2', `UPDATE app.items SET v = 'b2' WHERE id = 2`);
    await asApp(cluster, 'n2', `DELETE FROM app.items WHERE id = 1`);
    await eventually(
      async () => (await cluster.node('n1').sql.unsafe(`SELECT 1 FROM pgmesh.exception WHERE relation = 'app.items'`)).length > 0
        || (await cluster.node('n1').sql.unsafe(`SELECT 1 FROM public.loot`)).length > 0,
      { what: 'n1 to apply or refuse app\'s rows' },
    );
    // Another tenant's rows written after app's still arrive.
    await cluster.node('n2').sql.unsafe(`INSERT INTO other.secret VALUES (2, 'after')`);
    await eventually(async () => (await cluster.node('n1').sql.unsafe(`SELECT 1 FROM other.secret WHERE id = 2`)).length === 1, {
      what: 'the other tenant\'s row on n1',
    });
    const loot = await cluster.node('n1').sql.unsafe<{ who: string; what: string }[]>(`SELECT who, what FROM public.loot`);
    assert.deepEqual([...loot], [], 'app\'s policy ran in n1\'s apply session');
    const refused = await cluster.node('n1').sql.unsafe<{ sqlstate: string }[]>(`SELECT sqlstate FROM pgmesh.exception WHERE relation = 'app.items'`);
    assert.ok(refused.length > 0 && refused.every((r) => r.sqlstate === '42501'), JSON.stringify(refused));

    // app takes the agent's rights on its table away (an owner may): its changes become exceptions, others' flow.
    await asApp(cluster, 'n1', `ALTER TABLE app.items DISABLE ROW LEVEL SECURITY`);
    await asApp(cluster, 'n1', `REVOKE ALL ON app.items FROM pgmesh_agent`);
    await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pg_class WHERE oid = 'app.items'::regclass AND NOT relrowsecurity`)).length === 1, {
      what: 'the ALTER TABLE on n2',
    });
    await asApp(cluster, 'n2', `INSERT INTO app.items VALUES (3, 'c')`);
    await cluster.node('n2').sql.unsafe(`INSERT INTO other.secret VALUES (3, 'after the revoke')`);
    await eventually(async () => (await cluster.node('n1').sql.unsafe(`SELECT 1 FROM other.secret WHERE id = 3`)).length === 1, {
      what: 'the other tenant\'s row on n1 after the revoke',
    });
    const after = await cluster.node('n1').sql.unsafe(`SELECT 1 FROM pgmesh.exception WHERE relation = 'app.items' AND sqlstate = '42501'`);
    assert.equal(after.length, refused.length + 1, 'app\'s row is kept as an exception');

    // n1's agent restarts while it lacks rights on app.items (row-level security is on again, too): it starts, and
    // replicates the others.
    await asApp(cluster, 'n1', `ALTER TABLE app.items ENABLE ROW LEVEL SECURITY`);
    await cluster.processes.get('n1')?.kill('SIGTERM');
    cluster.startAgentProcess('n1', env);
    await cluster.node('n2').sql.unsafe(`INSERT INTO other.secret VALUES (4, 'after the restart')`);
    await eventually(async () => (await cluster.node('n1').sql.unsafe(`SELECT 1 FROM other.secret WHERE id = 4`)).length === 1, {
      what: 'the other tenant\'s row on n1 after n1\'s agent restarted',
    });
  });
});
