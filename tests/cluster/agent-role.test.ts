/**
 * Topology: 2-3 nodes, full mesh; the agents are real `pgmesh start` processes that connect, locally and to every
 * peer, as a role that is not a superuser. pgmesh is installed once by the superuser (`cluster create`).
 * Scenarios: `cluster create --agent-role` grants the role what an agent needs and the whole cluster replicates under
 * it (and a table added later too); for a role that lacks privileges, `check` and the agent name every missing one
 * with the GRANT that fixes it, and those GRANTs are enough to run the cluster.
 * Without the code under test: an agent that is not a superuser dies on its first missing privilege with
 * "unexpected error", `check` says "ok" for it, and nothing says what to grant.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, localDdl, withCluster, type TestCluster } from '../support/cluster.ts';
import { pgmesh } from '../support/cli.ts';
import { dsnAs } from '../support/roles.ts';

const ROLE = 'pgmesh_agent';
const PASSWORD = 'agent-pw';
const SCHEMA = `
CREATE TABLE public.accounts (id integer PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
CREATE TABLE public.journal (id integer PRIMARY KEY, note text);
CREATE ROLE ${ROLE} LOGIN PASSWORD '${PASSWORD}';
`;

/** Every node's connection string as the agent's role, as environment overrides of the configuration. */
function agentEnv(cluster: TestCluster): Record<string, string> {
  return Object.fromEntries(cluster.nodes.map((n) => [`PGMESH_DSN_${n.name.toUpperCase()}`, dsnAs(n, ROLE, PASSWORD)]));
}

/** The roles that pgmesh's sessions on a node run as: its agent's, and the peers' replication connections. */
async function pgmeshSessionRoles(cluster: TestCluster, node: string): Promise<{ roles: string[]; sessions: number }> {
  const rows = await cluster.node(node).sql.unsafe<{ usename: string }[]>(
    `SELECT usename FROM pg_stat_activity WHERE application_name LIKE 'pgmesh%' AND pid <> pg_backend_pid()`,
  );
  return { roles: [...new Set(rows.map((r) => r.usename))], sessions: rows.length };
}

/** Until every node streams to each of its peers (every agent is up). */
async function waitStreaming(cluster: TestCluster): Promise<void> {
  await eventually(
    async () => {
      for (const node of cluster.nodes) {
        const rows = await node.sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM pg_replication_slots WHERE active AND slot_name LIKE 'pgmesh\\_%' AND slot_name NOT LIKE 'pgmesh\\_\\_%'`);
        if (rows[0]?.n !== cluster.nodes.length - 1) return false;
      }
      return true;
    },
    {
      what: 'every agent to stream from its peers',
      abort: () => {
        const exited = [...cluster.processes.values()].find((p) => !p.running);
        return exited ? `the agent of ${exited.node} exited` : undefined;
      },
    },
  );
}

/** Each node writes its own rows, changes the others', deletes one and changes a key. */
async function workload(cluster: TestCluster): Promise<void> {
  for (const [i, node] of cluster.nodes.entries()) {
    await node.sql.unsafe(`INSERT INTO public.accounts SELECT g, $1, 100 FROM generate_series($2::int, $2::int + 9) g`, [node.name, String(i * 100)]);
  }
  await cluster.waitConverged(['public.accounts']);
  for (const [i, node] of cluster.nodes.entries()) {
    const other = ((i + 1) % cluster.nodes.length) * 100;
    await node.sql.unsafe(`UPDATE public.accounts SET balance = balance + 1 WHERE id BETWEEN $1::int AND $1::int + 4`, [String(other)]);
    await node.sql.unsafe(`DELETE FROM public.accounts WHERE id = $1::int + 9`, [String(i * 100)]);
    await node.sql.unsafe(`UPDATE public.accounts SET id = id + 50 WHERE id = $1::int + 8`, [String(i * 100)]);
  }
}

test('cluster create --agent-role: three agents connect as a non-superuser role everywhere, and the cluster replicates', { timeout: 240_000 }, async () => {
  // Tombstones are collected soon, so that the agents' maintenance runs as the role too.
  const tuning = { tombstoneGcIntervalMs: 200, tombstoneMarginMs: 0 };
  await withCluster({ nodes: 3, schema: SCHEMA, link: false, tuning }, async (cluster) => {
    const create = await pgmesh(['cluster', 'create', '--agent-role', ROLE], { config: cluster.configPath });
    assert.equal(create.code, 0, create.output);
    const env = agentEnv(cluster);
    const check = await pgmesh(['check'], { config: cluster.configPath, env });
    assert.equal(check.code, 0, check.output);
    assert.deepEqual(check.stdout.trim().split('\n'), ['n1: ok', 'n2: ok', 'n3: ok']);

    for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);
    await workload(cluster);
    await cluster.node('n1').sql.unsafe(`INSERT INTO public.journal SELECT g, 'entry' FROM generate_series(1, 5) g`);
    await cluster.waitConverged(['public.journal']);
    await cluster.node('n3').sql.unsafe(`TRUNCATE public.journal`);
    const hashes = await cluster.waitConverged(['public.accounts', 'public.journal']);
    assert.match(hashes['public.accounts'] ?? '', /^27:/, '30 rows less 3 deleted');
    assert.match(hashes['public.journal'] ?? '', /^0:/, 'the truncate reached every node');
    for (const node of cluster.nodes) {
      await eventually(async () => (await node.sql.unsafe(`SELECT 1 FROM pgmesh.tombstone`)).length === 0, {
        what: `the tombstones on ${node.name} to be collected by its agent`,
      });
    }
    for (const node of cluster.nodes) {
      // The version horizon moves as the role too: its slot made, a step past the first (S known).
      await eventually(async () => (await node.sql.unsafe(`SELECT 1 FROM pgmesh.version_horizon WHERE stable_ts IS NOT NULL`)).length === 1, {
        what: `the version horizon of ${node.name} to move`,
      });
    }
    for (const node of cluster.nodes) {
      const { roles, sessions } = await pgmeshSessionRoles(cluster, node.name);
      // The node's own agent (catalog and apply sessions) and both peers' streams and clock readings.
      assert.ok(sessions >= 6, `${node.name} has pgmesh sessions: ${sessions}`);
      assert.deepEqual(roles, [ROLE], `every pgmesh session on ${node.name} runs as ${ROLE}`);
    }
    const status = await pgmesh(['status', '--json'], { config: cluster.configPath, env });
    assert.equal(status.code, 0, status.output);
    for (const node of cluster.nodes) assert.ok(cluster.processes.get(node.name)?.running, `the agent of ${node.name} still runs`);
  });
});

test('a table added after cluster create --agent-role is granted to the agent role and replicates', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, link: false }, async (cluster) => {
    const create = await pgmesh(['cluster', 'create', '--agent-role', ROLE], { config: cluster.configPath });
    assert.equal(create.code, 0, create.output);
    const env = agentEnv(cluster);
    for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);
    await waitStreaming(cluster);
    for (const node of cluster.nodes) await localDdl(node, `CREATE TABLE public.later (id integer PRIMARY KEY, v text)`);
    const add = await pgmesh(['tables', 'add', 'public.later'], { config: cluster.configPath });
    assert.equal(add.code, 0, add.output);
    await cluster.node('n1').sql.unsafe(`INSERT INTO public.later VALUES (1, 'from n1')`);
    await cluster.node('n2').sql.unsafe(`INSERT INTO public.later VALUES (2, 'from n2')`);
    await cluster.waitConverged(['public.later']);
    await cluster.node('n2').sql.unsafe(`DELETE FROM public.later WHERE id = 1`);
    const hashes = await cluster.waitConverged(['public.later']);
    assert.match(hashes['public.later'] ?? '', /^1:/);
    const check = await pgmesh(['check'], { config: cluster.configPath, env });
    assert.equal(check.code, 0, check.output);
  });
});

test('check and the agent list every privilege a role lacks with its GRANT; those GRANTs are enough to run the cluster', { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const env = agentEnv(cluster);
    const check = await pgmesh(['check'], { config: cluster.configPath, env });
    assert.equal(check.code, 1, check.output);
    assert.doesNotMatch(check.output, /: ok$|unexpected error/m);
    const grants = new Map<string, string[]>();
    for (const node of ['n1', 'n2']) {
      const lines = check.stdout.split('\n').filter((l) => l.startsWith(`${node}: role ${ROLE} on node ${node} lacks `));
      for (const needed of [
        /lacks REPLICATION/,
        /lacks SET on parameter session_replication_role/,
        /lacks EXECUTE on functions .*pg_replication_origin_session_setup/,
        /lacks USAGE on schema pgmesh/,
        /lacks SELECT, INSERT, UPDATE, DELETE on pgmesh\.tombstone/,
        /lacks USAGE on sequence pgmesh\.conflict_id_seq/,
        /lacks EXECUTE on functions pgmesh\..*pgmesh\.row_version/,
        /lacks SELECT, INSERT, UPDATE, DELETE, TRUNCATE on public\.accounts/,
      ]) {
        assert.ok(lines.some((l) => needed.test(l)), `check on ${node} says ${needed}:\n${check.stdout}`);
      }
      grants.set(node, lines.map((l) => /as a superuser: (.*);$/.exec(l)?.[1] ?? assert.fail(`no GRANT in: ${l}`)));
    }

    // The agent refuses to start with the same list, not with the first error it would meet; but for the rights on
    // replicated tables, which their owners control (without them those tables' changes become exceptions).
    const start = await pgmesh(['start', '--node', 'n1'], { config: cluster.configPath, env });
    assert.equal(start.code, 1, start.output);
    assert.doesNotMatch(start.output, /unexpected error/);
    for (const grant of grants.get('n1') ?? []) {
      if (/ON (SCHEMA )?public/.test(grant)) assert.ok(!start.stderr.includes(grant), `the agent refuses to start for ${grant}`);
      else assert.ok(start.stderr.includes(grant), `the agent says ${grant}:\n${start.stderr}`);
    }

    for (const [node, statements] of grants) for (const statement of statements) await cluster.node(node).sql.unsafe(statement);
    const again = await pgmesh(['check'], { config: cluster.configPath, env });
    assert.equal(again.code, 0, again.output);
    for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);
    await workload(cluster);
    const hashes = await cluster.waitConverged(['public.accounts']);
    assert.match(hashes['public.accounts'] ?? '', /^18:/, '20 rows less 2 deleted');
  });
});
