/**
 * Administration of one node: install the catalog, choose the replicated tables, link it with a peer.
 * These are the library functions behind `pgmesh init`, `pgmesh tables add` and `pgmesh cluster create`.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Queryable, Sql } from '../pg/connect.ts';
import { qualifiedName, quoteIdent, quoteLiteral, NODE_NAME_PATTERN } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import { agentRoles, grantAgentPrivileges } from './agent-privileges.ts';
import {
  CATALOG_SCHEMA,
  CATALOG_VERSION,
  MIGRATIONS,
  PUBLICATION,
  PUBLIC_FUNCTIONS,
} from './catalog-schema.ts';
import { memberProblems, type SequenceResult } from './sequences.ts';
import { DDL_CAPTURE_SETTING } from '../ddl/capture-sql.ts';
import { checkServerFacts, formatProblems, readServerFacts } from './server-checks.ts';
import type { PeerIdentity } from './peer-identity.ts';
import { databaseOid, originNameFor, publisherSlotName, replayOriginNameFor } from './link-names.ts';
import type { TableRef, TableRefusal } from './table-ref.ts';

export interface LocalNode {
  readonly nodeName: string;
  readonly nodeSlot: number;
  readonly maxNodes: number;
}

export type { TableRef, TableRefusal };

export interface AddTablesResult {
  readonly added: readonly TableRef[];
  readonly alreadyReplicated: readonly TableRef[];
  readonly refused: readonly TableRefusal[];
  /** What was done to the sequences of these tables (cluster-wide adds only; see sequences.ts). */
  readonly sequences?: readonly SequenceResult[];
}

export interface RemoveTablesResult {
  readonly removed: readonly TableRef[];
  /** Tables that exist but were not replicated (anything pgmesh had left on them is gone all the same). */
  readonly notReplicated: readonly TableRef[];
  readonly missing: readonly TableRef[];
}

/** Why a table can never be replicated, whatever it holds: it belongs to the system or to pgmesh itself. */
function notAUserTable(table: TableRef): string | undefined {
  const name = `${table.schema}.${table.name}`;
  if (table.schema === CATALOG_SCHEMA) return `${name} is part of pgmesh's own catalog, which is local to each node; it is never replicated`;
  // PostgreSQL reserves schema names starting with pg_ (pg_catalog, pg_toast, temporary schemas).
  if (table.schema === 'information_schema' || table.schema.startsWith('pg_')) return `${name} is a system table; only user tables can be replicated`;
  return undefined;
}

/** Refuses, all at once, tables named for replication that are system or pgmesh tables: bad input, not a failure. */
export function requireUserTables(tables: readonly TableRef[] | 'all'): void {
  if (tables === 'all') return;
  const problems = tables.map(notAUserTable).filter((p) => p !== undefined);
  if (problems.length > 0) throw new PgmeshError('CONFIG_INVALID', problems.join('\n'));
}

export function validateNodeName(name: string): void {
  if (!NODE_NAME_PATTERN.test(name)) {
    throw new PgmeshError(
      'CONFIG_INVALID',
      `node name "${name}" is not valid: use 1-40 characters, lowercase letters, digits and "_", starting with a letter`,
    );
  }
}

export async function readLocalNode(sql: Sql): Promise<LocalNode | undefined> {
  const exists = await sql.unsafe<{ ok: boolean }[]>(`SELECT to_regclass('pgmesh.local_node') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return undefined;
  const rows = await sql.unsafe<{ node_name: string; node_slot: number; max_nodes: number }[]>(
    `SELECT node_name, node_slot, max_nodes FROM pgmesh.local_node`,
  );
  const row = rows[0];
  return row ? { nodeName: row.node_name, nodeSlot: row.node_slot, maxNodes: row.max_nodes } : undefined;
}

export async function requireLocalNode(sql: Sql, expectedName: string): Promise<LocalNode> {
  const node = await readLocalNode(sql);
  if (!node) {
    throw new PgmeshError('NOT_INITIALIZED', `node ${expectedName} has no pgmesh catalog; run "pgmesh init" for it first`, {
      context: { node: expectedName },
    });
  }
  if (node.nodeName !== expectedName) {
    throw new PgmeshError(
      'CONFIG_INVALID',
      `the server configured as node ${expectedName} was initialized as node ${node.nodeName}; fix the connection string in the config`,
      { context: { node: expectedName } },
    );
  }
  return node;
}

export interface InitOptions {
  readonly nodeName: string;
  readonly nodeSlot: number;
  readonly maxNodes: number;
  /** How many peers this node will have; used to check slot and sender limits. */
  readonly expectedPeers: number;
  /** A role that agents will connect as: it gets every privilege the agent needs (see agent-privileges.ts). */
  readonly agentRole?: string;
}

export interface InitResult {
  readonly created: boolean;
  readonly node: LocalNode;
}

/**
 * Everything that stops `init` on this server, each with what to do; changes nothing. Empty when init can run.
 * `cluster create` asks every node first, so that a refusal leaves no node half-installed.
 */
export async function initProblems(sql: Sql, options: InitOptions): Promise<PgmeshError[]> {
  validateNodeName(options.nodeName);
  const found: PgmeshError[] = [];
  const context = { node: options.nodeName };
  const facts = await readServerFacts(sql);
  const problems = checkServerFacts(facts, options.expectedPeers);
  if (problems.length > 0) found.push(new PgmeshError('SERVER_SETTINGS', formatProblems(options.nodeName, problems), { context }));
  if (!facts.isSuperuser) {
    found.push(
      new PgmeshError(
        'SERVER_SETTINGS',
        `node ${options.nodeName}: installing pgmesh needs a superuser once (it creates a publication and catalog functions); connect as a superuser for "init"`,
        { context },
      ),
    );
  }
  if (options.agentRole !== undefined) {
    const role = await sql.unsafe(`SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1`, [options.agentRole]);
    if (role.length === 0) {
      found.push(
        new PgmeshError(
          'CONFIG_INVALID',
          `node ${options.nodeName} has no role ${options.agentRole} for the agent; create it there first (CREATE ROLE ${quoteIdent(options.agentRole)} LOGIN PASSWORD '...')`,
          { context },
        ),
      );
    }
  }
  const existing = await readLocalNode(sql);
  if (!existing) {
    for (const problem of memberProblems([{ node: options.nodeName, slot: options.nodeSlot, maxNodes: options.maxNodes, initialized: false }])) {
      found.push(new PgmeshError('CONFIG_INVALID', problem, { context }));
    }
  }
  if (existing && existing.nodeName !== options.nodeName) {
    found.push(
      new PgmeshError(
        'ALREADY_INITIALIZED',
        `the server configured as node ${options.nodeName} is already pgmesh node ${existing.nodeName}; it cannot also be node ${options.nodeName}: check its connection string in the configuration`,
        { context },
      ),
    );
  }
  return found;
}

/**
 * Prepares a server to be a pgmesh node: checks settings (all problems at once), installs or upgrades the catalog,
 * creates the publication. Safe to run again on the same node.
 */
export async function initNode(sql: Sql, options: InitOptions): Promise<InitResult> {
  const problems = await initProblems(sql, options);
  const first = problems[0];
  if (first) {
    throw problems.length === 1 ? first : new PgmeshError(first.code, problems.map((p) => p.message).join('\n'), { context: first.context });
  }
  const existing = await readLocalNode(sql);
  await sql.begin(async (tx) => {
    await tx.unsafe(`SELECT pg_advisory_xact_lock(hashtext('pgmesh.catalog'))`);
    // The catalog and the publication are this node's own: not DDL to replicate (see src/ddl/capture-sql.ts).
    await tx.unsafe(`SELECT pg_catalog.set_config('${DDL_CAPTURE_SETTING}', 'off', true)`);
    const versionRows = await tx.unsafe<{ v: number | null }[]>(
      `SELECT CASE WHEN to_regclass('pgmesh.catalog_version') IS NULL THEN 0 END AS v`,
    );
    let version = versionRows[0]?.v ?? undefined;
    if (version === undefined) {
      const rows = await tx.unsafe<{ version: number }[]>(`SELECT version FROM pgmesh.catalog_version`);
      version = rows[0]?.version ?? 0;
    }
    for (let i = version; i < MIGRATIONS.length; i++) {
      await tx.unsafe(MIGRATIONS[i] as string);
    }
    await tx.unsafe(
      `INSERT INTO pgmesh.catalog_version (version) VALUES (${CATALOG_VERSION})
       ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version`,
    );
    if (!existing) {
      await tx.unsafe(`INSERT INTO pgmesh.local_node (node_name, node_slot, max_nodes) VALUES ($1, $2, $3)`, [
        options.nodeName,
        options.nodeSlot,
        options.maxNodes,
      ]);
    }
    const pub = await tx.unsafe(`SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1`, [PUBLICATION]);
    if (pub.length === 0) {
      await tx.unsafe(`CREATE PUBLICATION ${PUBLICATION} WITH (publish = 'insert, update, delete, truncate')`);
    }
    // New functions are executable by everyone unless revoked; pgmesh's are for agent roles (and superusers) only,
    // but for those meant for applications.
    const closed = await tx.unsafe<{ fn: string }[]>(
      `SELECT p.oid::regprocedure::text AS fn FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = $1::regnamespace AND NOT p.proname = ANY($2::text[])`,
      [CATALOG_SCHEMA, textArrayLiteral(PUBLIC_FUNCTIONS)],
    );
    for (const { fn } of closed) await tx.unsafe(`REVOKE ALL ON FUNCTION ${fn} FROM PUBLIC`);
    if (options.agentRole !== undefined) await grantAgentPrivileges(tx, options.agentRole);
    // Again for every agent role: an upgrade may have added catalog tables or functions that the agent uses.
    for (const role of await agentRoles(tx)) await grantAgentPrivileges(tx, role);
  });
  const node = await readLocalNode(sql);
  if (!node) throw new PgmeshError('INTERNAL', 'catalog was installed but pgmesh.local_node is empty');
  return { created: !existing, node };
}

/** User tables of the database, outside system schemas and pgmesh's own. */
export async function listUserTables(sql: Sql): Promise<TableRef[]> {
  const rows = await sql.unsafe<{ schema: string; name: string }[]>(
    `SELECT n.nspname AS schema, c.relname AS name
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgmesh') AND n.nspname NOT LIKE 'pg\\_%'
        AND c.relpersistence = 'p'
      ORDER BY 1, 2`,
  );
  return rows.map((r) => ({ schema: r.schema, name: r.name }));
}

export async function listReplicatedTables(sql: Sql): Promise<TableRef[]> {
  const rows = await sql.unsafe<{ schema: string; name: string }[]>(
    `SELECT schemaname AS schema, tablename AS name FROM pg_catalog.pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2`,
    [PUBLICATION],
  );
  return rows.map((r) => ({ schema: r.schema, name: r.name }));
}

/**
 * Adds tables to replication on this node. A table needs a primary key: it is how a row is found on every node, and
 * last-update-wins compares versions of the same key. Tables without one are refused with the fix.
 * With `dryRun`, changes nothing and reports what would be added. (To add on every node or on none, as a cluster
 * needs, use addTablesEverywhere in cluster-ops.)
 */
export async function addTables(sql: Sql, tables: readonly TableRef[] | 'all', options: { dryRun?: boolean } = {}): Promise<AddTablesResult> {
  requireUserTables(tables);
  const candidates = tables === 'all' ? await listUserTables(sql) : tables;
  const already = new Set((await listReplicatedTables(sql)).map((t) => `${t.schema}.${t.name}`));
  const added: TableRef[] = [];
  const alreadyReplicated: TableRef[] = [];
  const refused: TableRefusal[] = [];
  for (const table of candidates) {
    const qualified = qualifiedName(table.schema, table.name);
    const info = await sql.unsafe<{ kind: string | null; has_pk: boolean; persistence: string }[]>(
      `SELECT c.relkind::text AS kind, c.relpersistence::text AS persistence,
              EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2`,
      [table.schema, table.name],
    );
    const row = info[0];
    if (!row) {
      const near = await sql.unsafe<{ schema: string; name: string }[]>(
        `SELECT n.nspname AS schema, c.relname AS name
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind IN ('r', 'p') LIMIT 1`,
        [table.schema, table.name],
      );
      const hint = near[0] ? `; did you mean ${near[0].schema}.${near[0].name}?` : '';
      refused.push({
        ...table,
        problem: 'missing',
        reason: `table ${qualified} does not exist; check the schema and name (names are case-sensitive)${hint}`,
      });
      continue;
    }
    if (row.kind !== 'r' && row.kind !== 'p') {
      refused.push({ ...table, problem: 'not_a_table', reason: `${qualified} is not a table (relkind ${row.kind}); only tables can be replicated` });
      continue;
    }
    if (row.persistence !== 'p') {
      refused.push({ ...table, problem: 'not_logged', reason: `${qualified} is unlogged or temporary; logical replication cannot see its changes` });
      continue;
    }
    if (!row.has_pk) {
      refused.push({
        ...table,
        problem: 'no_primary_key',
        reason:
          `table ${qualified} has no primary key; pgmesh needs one to find the same row on every node. ` +
          `Add one (ALTER TABLE ${qualified} ADD PRIMARY KEY (...)), then run "pgmesh tables add ${table.schema}.${table.name}"`,
      });
      continue;
    }
    if (already.has(`${table.schema}.${table.name}`)) {
      alreadyReplicated.push(table);
      continue;
    }
    added.push(table);
    if (options.dryRun) continue;
    // One commit: from the moment its changes are published, its deletes leave tombstones and the agents' roles
    // may write it (an agent that starts in between would otherwise refuse to, for want of the grant).
    await sql.begin(async (tx) => {
      await joinTable(tx, table);
      for (const role of await agentRoles(tx)) await grantAgentPrivileges(tx, role);
    });
  }
  if (!options.dryRun) for (const table of alreadyReplicated) await joinTable(sql, table);
  return { added, alreadyReplicated, refused };
}

/**
 * Local deletes must leave tombstones (the delete's version), so that an older change of the same row arriving
 * later from another node loses to the delete everywhere; an UPDATE that changes the primary key removes the old key
 * as a delete does. pgmesh.join_table (src/ddl/capture-sql.ts) installs the triggers that record them, and puts the
 * table in the publication: the one entry point for tables added here and tables created by replicated DDL.
 */
export async function joinTable(sql: Queryable, table: TableRef): Promise<void> {
  await sql.unsafe(`SELECT pgmesh.join_table($1::text::regclass)`, [qualifiedName(table.schema, table.name)]);
}

/**
 * Takes tables out of replication on this node: out of the publication, so its changes are no longer sent; its
 * pgmesh triggers, tombstones, version overrides and policy go. Its rows stay. (On every node at once:
 * removeClusterTables in cluster-ops.)
 */
export async function removeTables(sql: Sql, tables: readonly TableRef[]): Promise<RemoveTablesResult> {
  requireUserTables(tables);
  const replicated = new Set((await listReplicatedTables(sql)).map((t) => `${t.schema}.${t.name}`));
  const removed: TableRef[] = [];
  const notReplicated: TableRef[] = [];
  const missing: TableRef[] = [];
  for (const table of tables) {
    const qualified = qualifiedName(table.schema, table.name);
    const exists = await sql.unsafe<{ ok: boolean }[]>(`SELECT to_regclass($1) IS NOT NULL AS ok`, [qualified]);
    if (!exists[0]?.ok) {
      missing.push(table);
      continue;
    }
    const published = replicated.has(`${table.schema}.${table.name}`);
    await sql.begin(async (tx) => {
      // Every node removes the table itself: not DDL to replicate.
      await tx.unsafe(`SELECT pg_catalog.set_config('${DDL_CAPTURE_SETTING}', 'off', true)`);
      if (published) await tx.unsafe(`ALTER PUBLICATION ${PUBLICATION} DROP TABLE ${qualified}`);
      await tx.unsafe(`DROP TRIGGER IF EXISTS pgmesh_record_deletes ON ${qualified}`);
      await tx.unsafe(`DROP TRIGGER IF EXISTS pgmesh_record_key_change ON ${qualified}`);
      await tx.unsafe(`DROP TRIGGER IF EXISTS pgmesh_record_truncate ON ${qualified}`);
      await tx.unsafe(`DROP TRIGGER IF EXISTS pgmesh_unique_release_update ON ${qualified}`);
      await tx.unsafe(`DROP TRIGGER IF EXISTS pgmesh_unique_release_delete ON ${qualified}`);
      await tx.unsafe(`DROP TRIGGER IF EXISTS pgmesh_ddl_fence ON ${qualified}`);
      await tx.unsafe(`DELETE FROM pgmesh.tombstone WHERE relid = $1::text::regclass`, [qualified]);
      await tx.unsafe(`DELETE FROM pgmesh.version_override WHERE relid = $1::text::regclass`, [qualified]);
      await tx.unsafe(`DELETE FROM pgmesh.table_policy WHERE relation_schema = $1 AND relation_name = $2`, [table.schema, table.name]);
    });
    (published ? removed : notReplicated).push(table);
  }
  return { removed, notReplicated, missing };
}

export interface PeerLink {
  readonly name: string;
  readonly nodeSlot: number;
  readonly endpoint: string;
  /**
   * Who the peer is, read on its own connection (readPeerIdentity): the agent streams only from that node. Every
   * command that links nodes gives it; without it (a bench's or test's loop-back link), the agent's first connect
   * records it.
   */
  readonly identity?: PeerIdentity;
  /**
   * The name of the slot on the peer that streams to this node (publisherSlotName on the peer's connection). Every
   * command that links nodes gives it; without it a link keeps the one it has (none for a new one).
   */
  readonly slot?: string;
}

/**
 * Makes `local` ready to stream from `peer`: a replication origin and a progress row on the local node.
 * The slot on the peer is created by ensureSlotFor on the peer's connection.
 */
export async function ensurePeer(sql: Sql, peer: PeerLink): Promise<void> {
  validateNodeName(peer.name);
  const identity = peer.identity;
  if (identity && identity.nodeName !== peer.name) {
    throw new PgmeshError(
      'PEER_MISMATCH',
      `the connection string of ${peer.name} (${peer.endpoint}) reaches ${identity.nodeName === null ? 'a database without a pgmesh node' : `node ${identity.nodeName}`}; fix it in the configuration`,
      { context: { peer: peer.name } },
    );
  }
  const oid = await databaseOid(sql);
  await sql.begin(async (tx) => {
    // Linking (again) records who the peer is now: the operator's command, with every node's connection at hand.
    // A link made before keeps its origins' names (they hold its progress; slot_name is the one the peer has).
    const names = await tx.unsafe<{ origin_name: string; replay_origin_name: string }[]>(
      `INSERT INTO pgmesh.peer (node_name, node_slot, endpoint, system_identifier, database_name, cluster_id, identity_recorded_at, identity_source,
                                slot_name, origin_name, replay_origin_name)
       VALUES ($1, $2, $3, $4::pg_catalog.text, $5::pg_catalog.text, $6::pg_catalog.text::pg_catalog.uuid,
               CASE WHEN $4::pg_catalog.text IS NOT NULL THEN pg_catalog.now() END, CASE WHEN $4::pg_catalog.text IS NOT NULL THEN 'link' END,
               $7::pg_catalog.text, $8, $9)
       ON CONFLICT (node_name) DO UPDATE SET node_slot = EXCLUDED.node_slot, endpoint = EXCLUDED.endpoint,
         system_identifier = EXCLUDED.system_identifier, database_name = EXCLUDED.database_name, cluster_id = EXCLUDED.cluster_id,
         identity_recorded_at = EXCLUDED.identity_recorded_at, identity_source = EXCLUDED.identity_source,
         slot_name = coalesce(EXCLUDED.slot_name, pgmesh.peer.slot_name)
       RETURNING origin_name, replay_origin_name`,
      [
        peer.name,
        peer.nodeSlot,
        peer.endpoint,
        identity?.systemIdentifier ?? null,
        identity?.database ?? null,
        identity?.clusterId ?? null,
        peer.slot ?? null,
        originNameFor(oid, peer.name),
        replayOriginNameFor(oid, peer.name),
      ],
    );
    await tx.unsafe(`INSERT INTO pgmesh.apply_progress (peer) VALUES ($1) ON CONFLICT DO NOTHING`, [peer.name]);
    // The link starts at the beginning of the peer's slot: a seed row of the progress log, not an applied transaction.
    await tx.unsafe(
      `INSERT INTO pgmesh.applied_xact (peer, end_lsn, counted) SELECT $1, '0/0', false
        WHERE NOT EXISTS (SELECT 1 FROM pgmesh.applied_xact WHERE peer = $1)`,
      [peer.name],
    );
    // The replay origin too (for "pgmesh exceptions replay"): creating origins is for the installing role only.
    const row = names[0];
    if (!row) throw new PgmeshError('INTERNAL', `recording the link from ${peer.name} returned no row`);
    for (const origin of [row.origin_name, row.replay_origin_name]) {
      await tx.unsafe(
        `SELECT pg_catalog.pg_replication_origin_create($1)
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)`,
        [origin],
      );
    }
  });
}

/**
 * Creates, on this (publishing) node, the logical slot that streams its changes to `subscriber`, unless its database
 * has it already; returns its name (publisherSlotName).
 */
export async function ensureSlotFor(sql: Sql, subscriber: string): Promise<{ slot: string; created: boolean }> {
  validateNodeName(subscriber);
  const slot = await publisherSlotName(sql, subscriber);
  const rows = await sql.unsafe<{ plugin: string | null; database: string | null; db: string }[]>(
    `SELECT plugin, database, current_database() AS db FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  const existing = rows[0];
  if (existing) {
    if (existing.plugin !== 'pgoutput' || existing.database !== existing.db) {
      // The name carries this database's OID, yet the slot is not of this database (or not a pgoutput slot): pgmesh
      // did not make it as it is, so it is not pgmesh's to drop or to use.
      const what = existing.database === null ? 'a physical slot' : existing.database !== existing.db ? `a slot of database ${existing.database}` : `a slot of plugin ${existing.plugin ?? '(none)'}`;
      throw new PgmeshError(
        'CONFIG_INVALID',
        `slot ${slot}, the name pgmesh gives the slot of database ${existing.db} for ${subscriber}, is taken on this server by ${what}, which pgmesh did not create for this link: pgmesh will neither use nor drop it. Find out what made it; ${subscriber} cannot be linked from database ${existing.db} while it exists`,
        { context: { slot, subscriber } },
      );
    }
    return { slot, created: false };
  }
  await sql.unsafe(`SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
  return { slot, created: true };
}
