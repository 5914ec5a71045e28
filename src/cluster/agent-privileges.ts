/**
 * The privileges of the role an agent connects as. Installing pgmesh needs a superuser once; running it does not:
 * the agent's role needs REPLICATION (to stream from its peers), SET on session_replication_role and EXECUTE on the
 * replication origin functions (for its apply session), its share of the pgmesh catalog, and the rights to write
 * the replicated tables. missingAgentPrivileges lists every one a role lacks, each with the statement that grants
 * it; grantAgentPrivileges runs exactly those statements, so `pgmesh check` and the grant can never disagree.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Queryable } from '../pg/connect.ts';
import { quoteIdent } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import { CATALOG_SCHEMA, PUBLICATION } from './catalog-schema.ts';
import type { ServerFacts } from './server-checks.ts';

export interface MissingPrivilege {
  /** What the role lacks, for the user: "SET on parameter session_replication_role". */
  readonly privilege: string;
  /** The statement, to run as a superuser, that grants it. */
  readonly grant: string;
  /**
   * A right on a replicated table (or its schema, or BYPASSRLS for its row-level security) that the table's owner can
   * take away at any time (REVOKE, ENABLE ROW LEVEL SECURITY). Without it only that table's changes fail (into
   * pgmesh.exception): the agent starts anyway, with a warning, so that no table's owner can stop replication for
   * the others (docs/security-probe.md).
   */
  readonly ownerControlled?: boolean;
}

/** The replication origin functions the agent's apply session calls (all overloads of each). */
export const AGENT_ORIGIN_FUNCTIONS = [
  'pg_replication_origin_session_setup',
  'pg_replication_origin_session_reset',
  'pg_replication_origin_xact_setup',
  'pg_replication_origin_xact_reset',
  'pg_replication_origin_progress',
] as const;

/**
 * What the agent (and the operator commands run with its connection string: conflicts, exceptions, resume) writes
 * in each catalog table; it reads every table and view of the catalog. The others (the node's identity, its peers,
 * the table policies, the agent roles) change only through commands that need the installing role.
 */
export const AGENT_CATALOG_WRITES: Readonly<Record<string, readonly string[]>> = {
  applied_xact: ['INSERT', 'DELETE'],
  apply_progress: ['UPDATE'],
  tombstone: ['INSERT', 'UPDATE', 'DELETE'],
  version_override: ['INSERT', 'UPDATE', 'DELETE'],
  // UPDATE: "conflicts restore" marks the record restored.
  conflict: ['INSERT', 'UPDATE'],
  unique_claim: ['INSERT', 'UPDATE', 'DELETE'],
  resolved_change: ['INSERT', 'DELETE'],
  exception: ['INSERT', 'UPDATE'],
  fast_path_check: ['INSERT'],
  peer_clock: ['INSERT', 'UPDATE'],
  peer_horizon: ['INSERT', 'UPDATE'],
  version_horizon: ['INSERT', 'UPDATE'],
  version_checkpoint: ['INSERT', 'DELETE'],
  peer_ack: ['INSERT', 'UPDATE'],
  // Row locks (FOR UPDATE, FOR KEY SHARE) of the apply sessions' key and table slots (src/apply/key-lock.ts).
  apply_lock: ['UPDATE'],
  // "pgmesh ddl --lock" run with the agent's connection string records its sessions (src/ddl/ddl-lock-sql.ts).
  ddl_fence_session: ['INSERT', 'DELETE'],
  // The version horizon's step serializes itself with a lock of this table (src/cluster/probe-fixes-sql.ts).
  version_horizon_lock: ['UPDATE'],
};

/** Applying a peer's changes inserts, updates, deletes (after reading) and truncates. */
export const AGENT_TABLE_RIGHTS = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] as const;

interface RoleRow {
  readonly super: boolean;
  readonly replication: boolean;
  readonly login: boolean;
  readonly bypassrls: boolean;
  readonly who: string;
}

/**
 * Every privilege `role` lacks to run an agent on this node, each with its GRANT; empty for a superuser. The catalog
 * and the replicated tables are checked only where pgmesh is installed.
 */
export async function missingAgentPrivileges(sql: Queryable, role: string): Promise<MissingPrivilege[]> {
  // Names in the statements are quoted by the server's quote_ident: only where needed, so they read as written.
  const roles = await sql.unsafe<RoleRow[]>(
    `SELECT rolsuper AS super, rolreplication AS replication, rolcanlogin AS login, rolbypassrls AS bypassrls,
            quote_ident(rolname) AS who
       FROM pg_catalog.pg_roles WHERE rolname = $1`,
    [role],
  );
  const attributes = roles[0];
  if (!attributes) {
    throw new PgmeshError('CONFIG_INVALID', `role ${role} does not exist; create it first (CREATE ROLE ${quoteIdent(role)} LOGIN PASSWORD '...')`);
  }
  if (attributes.super) return [];
  const who = attributes.who;
  const missing: MissingPrivilege[] = [];
  if (!attributes.login) missing.push({ privilege: 'LOGIN', grant: `ALTER ROLE ${who} LOGIN` });
  if (!attributes.replication) missing.push({ privilege: 'REPLICATION (to stream from its peers)', grant: `ALTER ROLE ${who} REPLICATION` });

  const session = await sql.unsafe<{ db: string; connect: boolean; srr: boolean; installed: boolean }[]>(
    `SELECT quote_ident(current_database()) AS db, has_database_privilege($1, current_database(), 'CONNECT') AS connect,
            has_parameter_privilege($1, 'session_replication_role', 'SET') AS srr,
            to_regnamespace($2) IS NOT NULL AS installed`,
    [role, CATALOG_SCHEMA],
  );
  const facts = session[0];
  if (!facts) throw new PgmeshError('INTERNAL', 'reading the role privileges returned no row');
  if (!facts.connect) missing.push({ privilege: `CONNECT on database ${facts.db}`, grant: `GRANT CONNECT ON DATABASE ${facts.db} TO ${who}` });
  if (!facts.srr) {
    missing.push({
      privilege: 'SET on parameter session_replication_role (its apply session must not fire triggers)',
      grant: `GRANT SET ON PARAMETER session_replication_role TO ${who}`,
    });
  }
  const origin = await sql.unsafe<{ name: string; fn: string }[]>(
    `SELECT format('pg_catalog.%I', p.proname) AS name, format('pg_catalog.%I(%s)', p.proname, pg_catalog.oidvectortypes(p.proargtypes)) AS fn
       FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY($2::text[])
        AND NOT has_function_privilege($1, p.oid, 'EXECUTE')
      ORDER BY 1`,
    [role, textArrayLiteral([...AGENT_ORIGIN_FUNCTIONS])],
  );
  if (origin.length > 0) missing.push(executeOn(origin, who));
  if (facts.installed) missing.push(...(await missingCatalogPrivileges(sql, role, who)), ...(await missingTablePrivileges(sql, role, who, attributes)));
  return missing;
}

function executeOn(functions: readonly { name: string; fn: string }[], who: string): MissingPrivilege {
  const names = [...new Set(functions.map((f) => f.name))];
  return {
    privilege: `EXECUTE on function${names.length > 1 ? 's' : ''} ${names.join(', ')}`,
    grant: `GRANT EXECUTE ON FUNCTION ${functions.map((f) => f.fn).join(', ')} TO ${who}`,
  };
}

/** Tables that lack the same privileges share one GRANT. */
function grantsOn(lacking: ReadonlyMap<string, readonly string[]>, who: string): MissingPrivilege[] {
  const bySet = new Map<string, string[]>();
  for (const [table, privileges] of lacking) {
    if (privileges.length === 0) continue;
    const key = privileges.join(', ');
    bySet.set(key, [...(bySet.get(key) ?? []), table]);
  }
  return [...bySet].map(([privileges, tables]) => ({
    privilege: `${privileges} on ${tables.join(', ')}`,
    grant: `GRANT ${privileges} ON ${tables.join(', ')} TO ${who}`,
  }));
}

async function missingCatalogPrivileges(sql: Queryable, role: string, who: string): Promise<MissingPrivilege[]> {
  const missing: MissingPrivilege[] = [];
  const usage = await sql.unsafe<{ ok: boolean }[]>(`SELECT has_schema_privilege($1, $2, 'USAGE') AS ok`, [role, CATALOG_SCHEMA]);
  if (!usage[0]?.ok) missing.push({ privilege: `USAGE on schema ${CATALOG_SCHEMA}`, grant: `GRANT USAGE ON SCHEMA ${CATALOG_SCHEMA} TO ${who}` });
  const relations = await sql.unsafe<
    { name: string; qualified: string; kind: string; s: boolean; i: boolean; u: boolean; d: boolean; usage: boolean; owner: string | null }[]
  >(
    `SELECT c.relname AS name, format('%I.%I', $2::text, c.relname) AS qualified, c.relkind::text AS kind,
            c.relkind <> 'S' AND has_table_privilege($1, c.oid, 'SELECT') AS s,
            c.relkind <> 'S' AND has_table_privilege($1, c.oid, 'INSERT') AS i,
            c.relkind <> 'S' AND has_table_privilege($1, c.oid, 'UPDATE') AS u,
            c.relkind <> 'S' AND has_table_privilege($1, c.oid, 'DELETE') AS d,
            c.relkind = 'S' AND has_sequence_privilege($1, c.oid, 'USAGE') AS usage,
            (SELECT t.relname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
                AND d.refclassid = 'pg_catalog.pg_class'::regclass LIMIT 1) AS owner
       FROM pg_catalog.pg_class c
      WHERE c.relnamespace = $2::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S')
      ORDER BY c.relname`,
    [role, CATALOG_SCHEMA],
  );
  const lacking = new Map<string, string[]>();
  const sequences: string[] = [];
  for (const r of relations) {
    const name = r.qualified;
    if (r.kind === 'S') {
      // The id sequences of the tables the agent inserts into; no other sequence of the catalog.
      if (!r.usage && r.owner !== null && AGENT_CATALOG_WRITES[r.owner]?.includes('INSERT')) sequences.push(name);
      continue;
    }
    const has: Readonly<Record<string, boolean>> = { SELECT: r.s, INSERT: r.i, UPDATE: r.u, DELETE: r.d };
    const needed = ['SELECT', ...(AGENT_CATALOG_WRITES[r.name] ?? [])];
    lacking.set(name, needed.filter((p) => !has[p]));
  }
  missing.push(...grantsOn(lacking, who));
  if (sequences.length > 0) {
    missing.push({ privilege: `USAGE on sequence ${sequences.join(', ')}`, grant: `GRANT USAGE ON SEQUENCE ${sequences.join(', ')} TO ${who}` });
  }
  // Trigger functions are left out: they fire without EXECUTE, and nobody may attach them to other tables.
  const functions = await sql.unsafe<{ name: string; fn: string }[]>(
    `SELECT format('%I.%I', $2::text, p.proname) AS name, format('%I.%I(%s)', $2::text, p.proname, pg_catalog.oidvectortypes(p.proargtypes)) AS fn
       FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = $2::regnamespace AND p.prorettype <> 'trigger'::regtype
        AND NOT has_function_privilege($1, p.oid, 'EXECUTE')
      ORDER BY 1`,
    [role, CATALOG_SCHEMA],
  );
  if (functions.length > 0) missing.push(executeOn(functions, who));
  return missing;
}

async function missingTablePrivileges(sql: Queryable, role: string, who: string, attributes: RoleRow): Promise<MissingPrivilege[]> {
  const missing: MissingPrivilege[] = [];
  const schemas = await sql.unsafe<{ schema: string }[]>(
    `SELECT DISTINCT quote_ident(schemaname) AS schema FROM pg_catalog.pg_publication_tables
      WHERE pubname = $2 AND NOT has_schema_privilege($1, schemaname, 'USAGE') ORDER BY 1`,
    [role, PUBLICATION],
  );
  for (const { schema } of schemas) missing.push({ privilege: `USAGE on schema ${schema}`, grant: `GRANT USAGE ON SCHEMA ${schema} TO ${who}`, ownerControlled: true });
  const tables = await sql.unsafe<{ name: string; lacking: string; rls: boolean }[]>(
    `SELECT format('%I.%I', t.schemaname, t.tablename) AS name,
            array_to_string(ARRAY(SELECT p FROM unnest($3::text[]) WITH ORDINALITY AS u(p, n)
                                   WHERE NOT has_table_privilege($1, c.oid, p) ORDER BY n), ', ') AS lacking,
            c.relrowsecurity AND (c.relforcerowsecurity OR pg_catalog.pg_get_userbyid(c.relowner) <> $1) AS rls
       FROM pg_catalog.pg_publication_tables t
       JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname
       JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
      WHERE t.pubname = $2
      ORDER BY t.schemaname, t.tablename`,
    [role, PUBLICATION, textArrayLiteral([...AGENT_TABLE_RIGHTS])],
  );
  missing.push(...grantsOn(new Map(tables.map((t) => [t.name, t.lacking ? t.lacking.split(', ') : []])), who).map((m) => ({ ...m, ownerControlled: true })));
  const policed = tables.filter((t) => t.rls).map((t) => t.name);
  if (policed.length > 0 && !attributes.bypassrls) {
    missing.push({
      privilege: `BYPASSRLS (row-level security on ${policed.join(', ')} would hide rows from the agent)`,
      grant: `ALTER ROLE ${who} BYPASSRLS`,
      ownerControlled: true,
    });
  }
  return missing;
}

/**
 * Grants `role` everything missingAgentPrivileges finds missing and records it as an agent role, so that later
 * catalog upgrades and added tables extend its rights. Needs a superuser.
 */
export async function grantAgentPrivileges(sql: Queryable, role: string): Promise<readonly MissingPrivilege[]> {
  const missing = await missingAgentPrivileges(sql, role);
  for (const m of missing) await sql.unsafe(m.grant);
  await sql.unsafe(`INSERT INTO pgmesh.agent_role (role_name) VALUES ($1) ON CONFLICT DO NOTHING`, [role]);
  return missing;
}

/** The agent roles recorded on this node that still exist. */
export async function agentRoles(sql: Queryable): Promise<string[]> {
  const rows = await sql.unsafe<{ role: string }[]>(
    `SELECT a.role_name AS role FROM pgmesh.agent_role a JOIN pg_catalog.pg_roles r ON r.rolname = a.role_name ORDER BY 1`,
  );
  return rows.map((r) => r.role);
}

/**
 * What `pgmesh check` says about the role of a node's connection string, the role its agent runs as: every privilege
 * it lacks with its GRANT, and that pgmesh must be installed by a superuser first if it is not yet.
 */
export async function agentRoleProblems(sql: Queryable, node: string, facts: ServerFacts): Promise<string[]> {
  // Before 16 the server itself is the problem (checkServerFacts says so), and privileges on parameters do not exist.
  if (facts.isSuperuser || facts.major < 16) return [];
  const role = facts.currentUser;
  const installed = await sql.unsafe<{ ok: boolean }[]>(`SELECT to_regnamespace($1) IS NOT NULL AS ok`, [CATALOG_SCHEMA]);
  const lines = installed[0]?.ok
    ? []
    : [
        `node ${node} has no pgmesh catalog yet, and role ${role} is not a superuser: install pgmesh once as a superuser, ` +
          `for example PGMESH_DSN_${node.toUpperCase()}=postgres://<superuser>@... pgmesh cluster create --agent-role ${role}`,
      ];
  return [...lines, ...formatMissingPrivileges(node, role, await missingAgentPrivileges(sql, role))];
}

/** One line per missing privilege, with its GRANT; and how to grant them all at once. */
export function formatMissingPrivileges(node: string, role: string, missing: readonly MissingPrivilege[]): string[] {
  if (missing.length === 0) return [];
  return [
    ...missing.map((m) => `role ${role} on node ${node} lacks ${m.privilege}; as a superuser: ${m.grant};`),
    `role ${role} on node ${node}: or grant it everything an agent needs at once, as a superuser: pgmesh cluster create --agent-role ${role}`,
  ];
}
