/**
 * Administration of one node: install the catalog, choose the replicated tables, link it with a peer.
 * These are the library functions behind `pgmesh init`, `pgmesh tables add` and `pgmesh cluster create`.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Sql } from '../pg/connect.ts';
import { qualifiedName, quoteIdent, quoteLiteral, NODE_NAME_PATTERN } from '../pg/quote.ts';
import { CATALOG_VERSION, MIGRATIONS, PUBLICATION, originName, slotName } from './catalog-schema.ts';
import { checkServerFacts, formatProblems, readServerFacts } from './server-checks.ts';

export interface LocalNode {
  readonly nodeName: string;
  readonly nodeSlot: number;
  readonly maxNodes: number;
}

export interface TableRef {
  readonly schema: string;
  readonly name: string;
}

export interface TableRefusal extends TableRef {
  readonly problem: 'missing' | 'not_a_table' | 'not_logged' | 'no_primary_key' | 'refused_elsewhere';
  /** What is wrong and what to do, for the user. */
  readonly reason: string;
}

export interface AddTablesResult {
  readonly added: readonly TableRef[];
  readonly alreadyReplicated: readonly TableRef[];
  readonly refused: readonly TableRefusal[];
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
  const existing = await readLocalNode(sql);
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
    await sql.unsafe(`ALTER PUBLICATION ${PUBLICATION} ADD TABLE ${qualified}`);
    await ensureDeleteTrigger(sql, table);
  }
  if (!options.dryRun) for (const table of alreadyReplicated) await ensureDeleteTrigger(sql, table);
  return { added, alreadyReplicated, refused };
}

/**
 * Local deletes must leave tombstones (the delete's version), so that an older change of the same row arriving
 * later from another node loses to the delete everywhere. A statement-level trigger with a transition table
 * records them; it does not fire in apply sessions (replica mode), whose statements write tombstones themselves.
 * An UPDATE that changes the primary key removes the old key as a delete does (peers apply it as one): a row-level
 * trigger that fires only when the key really changes records that tombstone.
 */
export async function ensureDeleteTrigger(sql: Sql, table: TableRef): Promise<void> {
  const keys = await sql.unsafe<{ attname: string }[]>(
    `SELECT a.attname FROM pg_catalog.pg_index i
       JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON true
       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.n`,
    [qualifiedName(table.schema, table.name)],
  );
  if (keys.length === 0) return;
  const args = keys.map((k) => quoteLiteral(k.attname)).join(', ');
  await sql.unsafe(
    `CREATE OR REPLACE TRIGGER pgmesh_record_deletes AFTER DELETE ON ${qualifiedName(table.schema, table.name)}
       REFERENCING OLD TABLE AS pgmesh_deleted FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.record_deletes(${args})`,
  );
  const columns = keys.map((k) => quoteIdent(k.attname));
  const row = (alias: string) => `ROW(${columns.map((c) => `${alias}.${c}`).join(', ')})`;
  await sql.unsafe(
    `CREATE OR REPLACE TRIGGER pgmesh_record_key_change AFTER UPDATE OF ${columns.join(', ')} ON ${qualifiedName(table.schema, table.name)}
       FOR EACH ROW WHEN (${row('OLD')} IS DISTINCT FROM ${row('NEW')}) EXECUTE FUNCTION pgmesh.record_key_change(${args})`,
  );
  await ensureUniqueReleaseTriggers(sql, table, args);
}

/**
 * A local update that changes a value of a unique index (other than the primary key), or a local delete, lets go
 * of the value: the old row's version is kept as a claim on it (pgmesh.unique_claim), so that an older row taking
 * the value later, from any node, gives way as it would have had it arrived before (docs/conflicts.md). Row-level
 * triggers, only on tables that have such indexes; run `pgmesh tables add` again after adding a unique constraint.
 */
async function ensureUniqueReleaseTriggers(sql: Sql, table: TableRef, args: string): Promise<void> {
  const qualified = qualifiedName(table.schema, table.name);
  const rows = await sql.unsafe<{ attname: string }[]>(
    `SELECT DISTINCT a.attname FROM pg_catalog.pg_index i
       JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON k.n <= i.indnkeyatts
       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      WHERE i.indrelid = $1::text::regclass AND i.indisunique AND NOT i.indisprimary AND i.indimmediate AND NOT i.indnullsnotdistinct
        AND i.indpred IS NULL AND i.indexprs IS NULL
      ORDER BY 1`,
    [qualified],
  );
  if (rows.length === 0) {
    await sql.unsafe(`DROP TRIGGER IF EXISTS pgmesh_unique_release_update ON ${qualified}`);
    await sql.unsafe(`DROP TRIGGER IF EXISTS pgmesh_unique_release_delete ON ${qualified}`);
    return;
  }
  const columns = rows.map((r) => quoteIdent(r.attname));
  const row = (alias: string) => `ROW(${columns.map((c) => `${alias}.${c}`).join(', ')})`;
  await sql.unsafe(
    `CREATE OR REPLACE TRIGGER pgmesh_unique_release_update AFTER UPDATE OF ${columns.join(', ')} ON ${qualified}
       FOR EACH ROW WHEN (${row('OLD')} IS DISTINCT FROM ${row('NEW')}) EXECUTE FUNCTION pgmesh.record_unique_release(${args})`,
  );
  await sql.unsafe(
    `CREATE OR REPLACE TRIGGER pgmesh_unique_release_delete AFTER DELETE ON ${qualified}
       FOR EACH ROW EXECUTE FUNCTION pgmesh.record_unique_release(${args})`,
  );
}

export interface PeerLink {
  readonly name: string;
  readonly nodeSlot: number;
  readonly endpoint: string;
}

/**
 * Makes `local` ready to stream from `peer`: a replication origin and a progress row on the local node.
 * The slot on the peer is created by ensureSlotFor on the peer's connection.
 */
export async function ensurePeer(sql: Sql, peer: PeerLink): Promise<void> {
  validateNodeName(peer.name);
  await sql.begin(async (tx) => {
    await tx.unsafe(
      `INSERT INTO pgmesh.peer (node_name, node_slot, endpoint) VALUES ($1, $2, $3)
       ON CONFLICT (node_name) DO UPDATE SET node_slot = EXCLUDED.node_slot, endpoint = EXCLUDED.endpoint`,
      [peer.name, peer.nodeSlot, peer.endpoint],
    );
    await tx.unsafe(`INSERT INTO pgmesh.apply_progress (peer) VALUES ($1) ON CONFLICT DO NOTHING`, [peer.name]);
    // The link starts at the beginning of the peer's slot: a seed row of the progress log, not an applied transaction.
    await tx.unsafe(
      `INSERT INTO pgmesh.applied_xact (peer, end_lsn, counted) SELECT $1, '0/0', false
        WHERE NOT EXISTS (SELECT 1 FROM pgmesh.applied_xact WHERE peer = $1)`,
      [peer.name],
    );
    await tx.unsafe(
      `SELECT pg_catalog.pg_replication_origin_create($1)
        WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)`,
      [originName(peer.name)],
    );
  });
}

/** Creates, on this (publishing) node, the logical slot that streams its changes to `subscriber`. */
export async function ensureSlotFor(sql: Sql, subscriber: string): Promise<'created' | 'exists'> {
  validateNodeName(subscriber);
  const slot = slotName(subscriber);
  const rows = await sql.unsafe<{ plugin: string | null; database: string | null; db: string }[]>(
    `SELECT plugin, database, current_database() AS db FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  const existing = rows[0];
  if (existing) {
    if (existing.plugin !== 'pgoutput' || existing.database !== existing.db) {
      throw new PgmeshError(
        'CONFIG_INVALID',
        `slot ${slot} exists but is not a pgoutput slot of database ${existing.db}; drop it (SELECT pg_drop_replication_slot(${quoteLiteral(slot)})) and try again`,
      );
    }
    return 'exists';
  }
  await sql.unsafe(`SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
  return 'created';
}
