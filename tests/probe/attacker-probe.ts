/**
 * The attacker's probe of docs/security-probe.md: not a test of the suite (it asserts nothing), a script that runs
 * each attack on a live 2-node cluster and prints what happened, one JSON line per attack.
 * Topology: 2 nodes, full mesh; `node --import tsx tests/probe/attacker-probe.ts superuser|agent-role` (agents as
 * the installing superuser in this process, or as the least-privilege role of `cluster create --agent-role` in child
 * processes).
 * Attackers, on both nodes: `lo` (LOGIN only), `app` (owns schema app and its replicated tables), `pub` (CREATE on
 * public). Another tenant, `other`, owns other.secret. A trap (app.trap) records in public.loot (not replicated) every
 * time it runs as a role other than app, and tries there to read pgmesh.cluster_key and other.secret and to make app
 * superuser.
 */
import postgres from 'postgres';
import { eventually, localDdl, withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';
import { pgmesh } from '../support/cli.ts';

const mode = process.argv[2] === 'agent-role' ? 'agent-role' : 'superuser';
const only = process.argv[3];

const SCHEMA = `
CREATE ROLE lo LOGIN PASSWORD 'lo-pw';
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE ROLE other LOGIN PASSWORD 'other-pw';
CREATE ROLE pub LOGIN PASSWORD 'pub-pw';
CREATE ROLE pgmesh_agent LOGIN PASSWORD 'agent-pw';
-- Replayed DDL runs as its role: the least-privilege agent must be allowed to become it (not to inherit its rights).
GRANT app TO pgmesh_agent WITH INHERIT FALSE;
GRANT CREATE ON SCHEMA public TO pub;
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
      INSERT INTO public.loot (who, what) SELECT current_user, tag || ': cluster key ' || encode(k.key, 'hex') FROM pgmesh.cluster_key k;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
      INSERT INTO public.loot (who, what) SELECT current_user, tag || ': secret ' || s.s FROM other.secret s;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
      EXECUTE 'ALTER ROLE app SUPERUSER';
      INSERT INTO public.loot (who, what) VALUES (current_user, tag || ': app made superuser');
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
  END IF;
  RETURN true;
END
$fn$;
RESET ROLE;
`;

interface Result {
  mode: string;
  attack: string;
  role: string;
  outcome: string;
}
const results: Result[] = [];

function connect(cluster: TestCluster, node: string, role: string): Sql {
  return postgres(dsnAs(cluster.node(node), role, `${role}-pw`), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
}

function describe(error: unknown): string {
  const e = error as { code?: string; message?: string };
  return `refused ${e.code ?? ''}: ${(e.message ?? String(error)).slice(0, 200)}`;
}

async function attempt(cluster: TestCluster, attack: string, role: string, statements: readonly string[], node = 'n1'): Promise<string> {
  if (only && !attack.includes(only)) return 'skipped';
  const sql = connect(cluster, node, role);
  let outcome = 'accepted';
  try {
    for (const statement of statements) await sql.unsafe(statement);
  } catch (error) {
    outcome = describe(error);
  } finally {
    await sql.end({ timeout: 1 });
  }
  results.push({ mode, attack, role, outcome });
  process.stdout.write(`${JSON.stringify({ mode, attack, role, outcome })}\n`);
  return outcome;
}

function note(attack: string, role: string, outcome: string): void {
  results.push({ mode, attack, role, outcome });
  process.stdout.write(`${JSON.stringify({ mode, attack, role, outcome })}\n`);
}

let marker = 1000;
/** A row of the other tenant written on n1 reaches n2: replication goes on for others. */
async function flows(cluster: TestCluster): Promise<boolean> {
  const id = marker++;
  await cluster.node('n1').sql.unsafe(`INSERT INTO other.secret VALUES (${id}, 'marker')`);
  try {
    await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM other.secret WHERE id = ${id}`)).length === 1, {
      what: 'a marker row', timeoutMs: 30_000,
    });
    return true;
  } catch {
    return false;
  }
}

async function state(cluster: TestCluster, after: string): Promise<void> {
  const flowing = await flows(cluster);
  for (const node of ['n1', 'n2']) {
    const supers = await cluster.node(node).sql.unsafe<{ r: string }[]>(`SELECT rolname AS r FROM pg_roles WHERE rolsuper AND rolname IN ('lo', 'app', 'pub', 'other')`);
    const loot = await cluster.node(node).sql.unsafe<{ who: string; what: string }[]>(`SELECT who, what FROM public.loot`);
    const exceptions = await cluster.node(node).sql.unsafe<{ k: string; s: string; n: number; e: string }[]>(
      `SELECT change_kind AS k, state, coalesce(sqlstate, '') AS s, count(*)::int AS n, min(left(error, 160)) AS e
         FROM pgmesh.exception GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
    );
    note(`state after ${after} on ${node}`, '-', JSON.stringify({ flowing, supers: supers.map((s) => s.r), loot, exceptions }));
  }
  await cluster.node('n1').sql.unsafe(`DELETE FROM public.loot`);
  await cluster.node('n2').sql.unsafe(`DELETE FROM public.loot`);
}

async function probe(cluster: TestCluster): Promise<void> {
  for (const node of cluster.nodes) {
    await localDdl(node, `CREATE TABLE public.loot (who text, what text); GRANT INSERT ON public.loot TO PUBLIC`);
  }
  await cluster.node('n1').sql.unsafe(`INSERT INTO other.secret VALUES (1, 'other-secret')`);
  await cluster.node('n1').sql.unsafe(`INSERT INTO app.items VALUES (1, 'a')`);
  if (!(await flows(cluster))) throw new Error('replication does not flow at the start');

  // --- lo: LOGIN only ---
  await attempt(cluster, 'read another tenant', 'lo', [`SELECT * FROM other.secret`]);
  await attempt(cluster, 'read pgmesh catalog', 'lo', [`SELECT * FROM pgmesh.cluster_key`]);
  await attempt(cluster, 'call snowflake_id', 'lo', [`SELECT pgmesh.snowflake_id()`]);
  await attempt(cluster, 'call a row trigger function', 'lo', [`SELECT pgmesh.record_key_change()`]);
  await attempt(cluster, 'session_replication_role = replica', 'lo', [`SET session_replication_role = replica`]);
  await attempt(cluster, 'replication origin setup', 'lo', [`SELECT pg_replication_origin_session_setup('pgmesh_n2')`]);
  await attempt(cluster, 'replication origin advance', 'lo', [`SELECT pg_replication_origin_advance('pgmesh_n2', '0/FFFFFFF')`]);
  await attempt(cluster, 'terminate pgmesh sessions', 'lo', [`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename <> 'lo' AND backend_type = 'client backend'`]);
  await attempt(cluster, 'read a pgmesh slot', 'lo', [`SELECT * FROM pg_logical_slot_peek_changes('pgmesh_n2', NULL, 1, 'proto_version', '1', 'publication_names', 'pgmesh')`]);
  await attempt(cluster, 'drop a pgmesh slot', 'lo', [`SELECT pg_drop_replication_slot('pgmesh_n2')`]);
  await attempt(cluster, 'lock a pgmesh table by OID (pg_relation_size)', 'lo', [`SELECT pg_relation_size('pgmesh.apply_lock'::regclass)`]);
  await attempt(cluster, 'forged DDL message (plain JSON, as postgres)', 'lo', [
    `SELECT pg_logical_emit_message(true, 'pgmesh.ddl', '{"version":1,"statement":"ALTER ROLE lo SUPERUSER","role":"postgres","search_path":"public"}')`,
  ]);
  await attempt(cluster, 'forged DDL message (signature format, zero MAC)', 'lo', [
    `SELECT pg_logical_emit_message(true, 'pgmesh.ddl', 'pgmesh1:' || repeat('0', 64) || ':{"version":1,"statement":"ALTER ROLE lo SUPERUSER","role":"postgres"}')`,
  ]);
  for (const prefix of ['pgmesh.join', 'pgmesh.leave', 'pgmesh.resync', 'pgmesh.ddl_lock', 'pgmesh.other', 'pgmesh']) {
    await attempt(cluster, `forged marker ${prefix}`, 'lo', [`SELECT pg_logical_emit_message(true, '${prefix}', '{"node":"n2"}')`]);
  }
  await attempt(cluster, 'forged DDL message, non-transactional', 'lo', [`SELECT pg_logical_emit_message(false, 'pgmesh.ddl', '{"version":1}')`]);
  await attempt(cluster, 'forged DDL message of 64 MB', 'lo', [`SELECT pg_logical_emit_message(true, 'pgmesh.ddl', repeat('x', 64 * 1024 * 1024))`]);
  await attempt(cluster, '2000 forged messages in one transaction', 'lo', [`SELECT count(pg_logical_emit_message(true, 'pgmesh.ddl', repeat('y', 4000))) FROM generate_series(1, 2000)`]);
  await state(cluster, 'forged messages');

  await attempt(cluster, 'SET pgmesh.ddl_capture = off (lo)', 'lo', [`SET pgmesh.ddl_capture = off`, `CREATE TEMP TABLE t (a int)`]);
  await attempt(cluster, 'ALTER ROLE lo SET pgmesh.ddl_capture = off', 'lo', [`ALTER ROLE lo SET pgmesh.ddl_capture = off`]);

  // Advisory locks pgmesh still takes by fixed key: held by lo, then what waits.
  const holder = connect(cluster, 'n1', 'lo');
  try {
    await holder.unsafe(`SELECT pg_advisory_lock(hashtext('pgmesh.snowflake')), pg_advisory_lock(hashtext('pgmesh.version_horizon')), pg_advisory_lock(hashtext('pgmesh.join'))`);
    await holder.unsafe(`SELECT pg_advisory_lock_shared(pgmesh_key) FROM (VALUES ((x'706d7368'::bigint << 32))) v(pgmesh_key)`).catch(() => undefined);
    const waiter = connect(cluster, 'n1', 'app');
    try {
      await waiter.unsafe(`SET statement_timeout = '3s'`);
      await attempt(cluster, 'snowflake_id while lo holds hashtext(pgmesh.snowflake)', 'app', [`SET statement_timeout = '3s'`, `SELECT pgmesh.snowflake_id()`]);
    } finally {
      await waiter.end({ timeout: 1 });
    }
    note('replication while lo holds the snowflake, horizon and join keys', 'lo', (await flows(cluster)) ? 'flows' : 'STALLED');
  } finally {
    await holder.end({ timeout: 1 });
  }

  // --- pub: CREATE on public ---
  await attempt(cluster, 'plant public functions named like built-ins', 'pub', [
    `CREATE FUNCTION public.jsonb_build_array(integer) RETURNS jsonb LANGUAGE sql AS $$ SELECT app.trap('public.jsonb_build_array')::text::jsonb $$`,
    `CREATE FUNCTION public.to_jsonb(integer) RETURNS jsonb LANGUAGE sql AS $$ SELECT app.trap('public.to_jsonb')::text::jsonb $$`,
    `CREATE FUNCTION public.format(text, integer) RETURNS text LANGUAGE sql AS $$ SELECT app.trap('public.format')::text $$`,
    `CREATE FUNCTION public.eqx(integer, integer) RETURNS boolean LANGUAGE sql AS $$ SELECT app.trap('public.=') $$`,
    `CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.eqx)`,
    `CREATE FUNCTION public.textx(integer) RETURNS text LANGUAGE sql AS $$ SELECT app.trap('public.text')::text $$`,
  ]);
  await attempt(cluster, 'pub: a table in public, rows written', 'pub', [`CREATE TABLE public.pubt (id integer PRIMARY KEY, v text)`, `INSERT INTO public.pubt VALUES (1, 'x')`]);
  await cluster.node('n1').sql.unsafe(`INSERT INTO app.items VALUES (2, 'b')`);
  await cluster.node('n2').sql.unsafe(`UPDATE app.items SET id = 3 WHERE id = 1`);
  await cluster.node('n2').sql.unsafe(`DELETE FROM app.items WHERE id = 3`);
  await attempt(cluster, 'SET pgmesh.ddl_capture = off (pub)', 'pub', [`SET pgmesh.ddl_capture = off`, `CREATE TABLE public.local_only (id integer PRIMARY KEY)`]);
  await attempt(cluster, 'SET pgmesh.ddl_drop_local = on, CREATE TABLE (pub)', 'pub', [`SET pgmesh.ddl_drop_local = on`, `CREATE TABLE public.droplocal (id integer PRIMARY KEY)`]);
  await attempt(cluster, 'SET pgmesh.ddl_statement / ddl_names_before (pub)', 'pub', [`SET pgmesh.ddl_statement = 'x/5'`, `SET pgmesh.ddl_names_before = '{}'`, `CREATE TABLE public.stmt1 (id integer PRIMARY KEY); CREATE TABLE public.stmt2 (id integer PRIMARY KEY)`]);
  await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pg_class WHERE relname = 'stmt2'`)).length === 1, { what: 'stmt2 on n2', timeoutMs: 30_000 }).catch(() => undefined);
  const n2tables = await cluster.node('n2').sql.unsafe<{ t: string }[]>(`SELECT relname AS t FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1`);
  note('public tables on n2 after pub DDL', 'pub', n2tables.map((t) => t.t).join(','));
  await state(cluster, 'pub plants');

  // --- app: owns schema app and its replicated table ---
  const ownerCode: Array<[string, string[]]> = [
    ['enum cast to json, then column', [`CREATE TYPE app.e AS ENUM ('a', 'b')`, `CREATE FUNCTION app.e_json(app.e) RETURNS json LANGUAGE sql AS $$ SELECT app.trap('cast e->json')::text::json $$`, `CREATE CAST (app.e AS json) WITH FUNCTION app.e_json(app.e)`, `ALTER TABLE app.items ADD COLUMN e app.e`]],
    ['enum column, then cast from text', [`CREATE TYPE app.e2 AS ENUM ('a', 'b')`, `ALTER TABLE app.items ADD COLUMN e2 app.e2`, `CREATE FUNCTION app.e2_in(text) RETURNS app.e2 LANGUAGE plpgsql AS $$ BEGIN PERFORM app.trap('cast text->e2'); RETURN $1::regtype::text::app.e2; END $$`, `CREATE CAST (text AS app.e2) WITH FUNCTION app.e2_in(text)`]],
    ['domain CHECK inside a composite column', [`CREATE DOMAIN app.dc AS integer CHECK (app.trap('domain in composite'))`, `CREATE TYPE app.comp AS (x app.dc)`, `ALTER TABLE app.items ADD COLUMN c app.comp`]],
    ['domain CHECK inside an array column', [`CREATE DOMAIN app.da AS integer CHECK (app.trap('domain in array'))`, `ALTER TABLE app.items ADD COLUMN da app.da[]`]],
    ['domain CHECK as a range subtype', [`CREATE DOMAIN app.dr AS integer CHECK (app.trap('domain in range'))`, `CREATE TYPE app.rng AS RANGE (subtype = app.dr)`, `ALTER TABLE app.items ADD COLUMN r app.rng`]],
    ['domain over domain with CHECK', [`CREATE DOMAIN app.d0 AS integer CHECK (app.trap('domain over domain'))`, `CREATE DOMAIN app.d1 AS app.d0`, `ALTER TABLE app.items ADD COLUMN dd app.d1`]],
    ['generated column calling own function', [`CREATE FUNCTION app.gen(text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN PERFORM app.trap('generated'); RETURN $1; END $$`, `ALTER TABLE app.items ADD COLUMN g text GENERATED ALWAYS AS (app.gen(v)) STORED`]],
    ['SECURITY DEFINER function of its own in a default', [`CREATE FUNCTION app.sd() RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN PERFORM app.trap('definer default'); RETURN 'x'; END $$`, `ALTER TABLE app.items ALTER COLUMN v SET DEFAULT app.sd()`]],
    ['operator of its own in a CHECK', [`CREATE FUNCTION app.opf(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT app.trap('operator') $$`, `CREATE OPERATOR app.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = app.opf)`, `ALTER TABLE app.items ADD CONSTRAINT op CHECK (v OPERATOR(app.===) v)`]],
    ['ENABLE ALWAYS rule', [`CREATE RULE r AS ON INSERT TO app.items DO ALSO SELECT app.trap('rule')`, `ALTER TABLE app.items ENABLE ALWAYS RULE r`]],
    ['index expression', [`CREATE FUNCTION app.ix(text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN PERFORM app.trap('index'); RETURN $1; END $$`, `CREATE INDEX ON app.items (app.ix(v))`]],
    ['text search configuration in a generated column', [`CREATE TEXT SEARCH CONFIGURATION app.tsc (COPY = pg_catalog.english)`, `ALTER TABLE app.items ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('app.tsc'::regconfig, coalesce(v, ''))) STORED`]],
    ['nondeterministic collation on a column', [`CREATE COLLATION app.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`, `ALTER TABLE app.items ADD COLUMN ci text COLLATE app.ci`]],
    ['default with ts_rewrite (runs SQL)', [`ALTER TABLE app.items ADD COLUMN tr text DEFAULT (ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery'))::text`]],
    ['default with query_to_xml_and_xmlschema', [`ALTER TABLE app.items ADD COLUMN qx text DEFAULT query_to_xml_and_xmlschema('SELECT 1', true, false, '')::text`]],
  ];
  for (const [attack, statements] of ownerCode) await attempt(cluster, attack, 'app', statements);
  // Rows through every column that was accepted, from n1 (applied on n2) and from n2.
  for (const [node, id] of [['n1', 10], ['n2', 20]] as const) {
    const cols = await cluster.node(node).sql.unsafe<{ a: string }[]>(`SELECT attname AS a FROM pg_attribute WHERE attrelid = 'app.items'::regclass AND attnum > 0 AND NOT attisdropped`);
    note(`app.items columns on ${node}`, 'app', cols.map((c) => c.a).join(','));
    await attempt(cluster, `app writes rows on ${node}`, 'app', [
      `INSERT INTO app.items (id, v) VALUES (${id}, 'w')`,
      `UPDATE app.items SET v = 'w2' WHERE id = ${id}`,
      `UPDATE app.items SET id = ${id + 1} WHERE id = ${id}`,
      `DELETE FROM app.items WHERE id = ${id + 1}`,
      `INSERT INTO app.items (id, v) VALUES (${id + 2}, 'kept')`,
    ], node);
  }
  await state(cluster, 'owner code');

  await attempt(cluster, 'app revokes the agent\'s rights on its table, then writes on n2', 'app', [
    `REVOKE ALL ON app.items FROM pgmesh_agent`,
  ]);
  await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM information_schema.role_table_grants WHERE grantee = 'pgmesh_agent' AND table_name = 'items'`)).length === 0, { what: 'the revoke on n2', timeoutMs: 20_000 }).catch(() => undefined);
  await attempt(cluster, 'app writes on n2 after the revoke', 'app', [`INSERT INTO app.items (id, v) VALUES (500, 'after revoke')`], 'n2');
  note('replication n2 -> n1 after app revoked the agent\'s rights', 'app', await (async () => {
    await cluster.node('n2').sql.unsafe(`INSERT INTO other.secret VALUES (${marker++ + 100000}, 'from n2')`);
    try {
      await eventually(async () => (await cluster.node('n1').sql.unsafe(`SELECT 1 FROM other.secret WHERE s = 'from n2'`)).length > 0, { what: 'n2 row', timeoutMs: 30_000 });
      return 'flows';
    } catch {
      return 'STALLED for every tenant';
    }
  })());
  await attempt(cluster, 'app grants the agent its rights again (on n1)', 'app', [`GRANT ALL ON app.items TO pgmesh_agent`]);
  await state(cluster, 'revoke');
  await attempt(cluster, 'app drops pgmesh triggers on its table', 'app', [`DROP TRIGGER pgmesh_ddl_fence ON app.items`]);
  await attempt(cluster, 'app leaves the publication', 'app', [`ALTER PUBLICATION pgmesh DROP TABLE app.items`]);
  await attempt(cluster, 'app partition of a replicated table', 'app', [
    `CREATE TABLE app.parts (id integer PRIMARY KEY, v text) PARTITION BY RANGE (id)`,
    `CREATE TABLE app.parts_1 PARTITION OF app.parts FOR VALUES FROM (0) TO (100)`,
    `INSERT INTO app.parts VALUES (1, 'p')`,
  ]);
  await attempt(cluster, 'app attaches a table that replicates on its own as a partition', 'app', [
    `CREATE TABLE app.parts_9 (id integer PRIMARY KEY, v text)`,
    `ALTER TABLE app.parts ATTACH PARTITION app.parts_9 FOR VALUES FROM (900) TO (1000)`,
    `INSERT INTO app.parts VALUES (901, 'p9')`,
  ]);
  // A row lock held by app on n2 in front of the stream from n1: replication of other tenants stalls behind it?
  const locker = connect(cluster, 'n2', 'app');
  try {
    await locker.unsafe(`BEGIN`);
    await locker.unsafe(`SELECT * FROM app.items WHERE id = 12 FOR UPDATE`);
    await cluster.node('n1').sql.unsafe(`UPDATE app.items SET v = 'behind a lock' WHERE id = 12`);
    note('replication while app holds a row lock on n2 (SELECT FOR UPDATE in an open transaction)', 'app', (await flows(cluster)) ? 'flows' : 'STALLED for every tenant');
    await locker.unsafe(`ROLLBACK`);
  } finally {
    await locker.end({ timeout: 1 });
  }
  await state(cluster, 'app table tricks');

  // Last: it may stop app's own changes from applying.
  await attempt(cluster, 'RLS policy calling own function', 'app', [
    `GRANT ALL ON app.items TO pgmesh_agent`,
    `ALTER TABLE app.items ENABLE ROW LEVEL SECURITY`,
    `CREATE POLICY p ON app.items USING (app.trap('policy using')) WITH CHECK (app.trap('policy check'))`,
  ]);
  await eventually(async () => (await cluster.node('n2').sql.unsafe(`SELECT 1 FROM pg_policy WHERE polname = 'p'`)).length === 1, { what: 'policy on n2', timeoutMs: 20_000 }).catch(() => undefined);
  await attempt(cluster, 'app writes under its policy on n1', 'app', [`INSERT INTO app.items (id, v) VALUES (600, 'rls')`, `UPDATE app.items SET v = 'rls2' WHERE id = 600`, `DELETE FROM app.items WHERE id = 600`]);
  await state(cluster, 'RLS policy');
  if (mode === 'agent-role') {
    const env = Object.fromEntries(cluster.nodes.map((n) => [`PGMESH_DSN_${n.name.toUpperCase()}`, dsnAs(n, 'pgmesh_agent', 'agent-pw')]));
    const check = await pgmesh(['check'], { config: cluster.configPath, env });
    note('pgmesh check as the agent after app enabled row-level security', 'app', `exit ${check.code}: ${check.output.replace(/\s+/g, ' ').slice(0, 400)}`);
  }
}

async function main(): Promise<void> {
  await withCluster({ nodes: 2, schema: SCHEMA, link: mode === 'superuser' }, async (cluster) => {
    if (mode === 'superuser') {
      await cluster.startAgents();
    } else {
      const create = await pgmesh(['cluster', 'create', '--agent-role', 'pgmesh_agent'], { config: cluster.configPath });
      if (create.code !== 0) throw new Error(create.output);
      const env = Object.fromEntries(cluster.nodes.map((n) => [`PGMESH_DSN_${n.name.toUpperCase()}`, dsnAs(n, 'pgmesh_agent', 'agent-pw')]));
      for (const node of cluster.nodes) cluster.startAgentProcess(node.name, env);
    }
    await probe(cluster);
  });
}

await main();
