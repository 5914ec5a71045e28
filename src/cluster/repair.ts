/**
 * What an operator does about conflicts and failed changes: read the conflict log, restore a row that lost, list,
 * replay or discard exceptions, set a table's policies, declare delta columns, resume a paused peer. The CLI commands
 * `conflicts`, `conflicts restore`, `exceptions`, `tables policy`, `tables delta` and `resume` are thin shells over these.
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import { isoTimestampSql } from '../core/pg-time.ts';
import { SQLSTATE, sqlState } from '../core/sqlstate.ts';
import type { Logger } from '../core/logger.ts';
import { bindRelation, loadLocalRelation, type ConflictPolicy, type ExceptionPolicy } from '../apply/local-relation.ts';
import { rowOps } from '../apply/row-ops.ts';
import { buildDeferredUniqueCheck, buildStatement } from '../apply/statement-builder.ts';
import { buildUniqueResolution, needsUniqueResolution } from '../apply/unique-resolution.ts';
import { buildKeyLock } from '../apply/key-lock.ts';
import { openSql, type Sql } from '../pg/connect.ts';
import { qualifiedName, quoteIdent, quoteLiteral } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { RelationMessage, Tuple, TupleValue } from '../protocol/messages.ts';
import { databaseOid, readLinkNames, replayOriginNameFor } from './link-names.ts';
import type { TableRef } from './node-admin.ts';

export const CONFLICT_POLICIES: readonly ConflictPolicy[] = ['last_update_wins', 'keep_local', 'apply_remote', 'pause'];
/** The conflict types pgmesh records (the CHECK of pgmesh.conflict.conflict_type). */
export const CONFLICT_TYPES = [
  'insert_exists',
  'update_origin_differs',
  'update_exists',
  'update_missing',
  'delete_origin_differs',
  'delete_missing',
  'multiple_unique_conflicts',
] as const;
export const EXCEPTION_POLICIES: readonly ExceptionPolicy[] = ['skip_change', 'skip_transaction', 'pause'];

export interface ConflictRecord {
  readonly id: number;
  readonly recordedAt: string;
  readonly peer: string;
  readonly relation: string;
  readonly key: string;
  readonly type: string;
  readonly resolution: string;
  readonly local: { readonly ts: string | null; readonly node: string | null; readonly row: unknown };
  readonly remote: { readonly ts: string; readonly node: string; readonly row: unknown; readonly commitLsn: string | null };
  /** When the losing row was written back (restoreConflict), or null. */
  readonly restoredAt: string | null;
}

export async function listConflicts(
  sql: Sql,
  filter: { limit?: number; relation?: string; type?: string; peer?: string } = {},
): Promise<ConflictRecord[]> {
  const rows = await sql.unsafe<Record<string, string | null>[]>(
    `SELECT id::text, ${isoTimestampSql('recorded_at')} AS recorded_at, peer, relation, pkey, conflict_type, resolution,
            ${isoTimestampSql('local_ts')} AS local_ts, local_node, local_row::text, ${isoTimestampSql('remote_ts')} AS remote_ts,
            remote_node, remote_row::text, remote_commit_lsn::text, ${isoTimestampSql('restored_at')} AS restored_at
       FROM pgmesh.conflict
      WHERE ($1::text IS NULL OR relation = $1::text) AND ($2::text IS NULL OR conflict_type = $2::text) AND ($3::text IS NULL OR peer = $3::text)
      ORDER BY id DESC LIMIT $4::text::int`,
    [filter.relation ?? null, filter.type ?? null, filter.peer ?? null, String(filter.limit ?? 100)],
  );
  return rows.map((r) => ({
    id: Number(r.id),
    recordedAt: r.recorded_at ?? '',
    peer: r.peer ?? '',
    relation: r.relation ?? '',
    key: r.pkey ?? '',
    type: r.conflict_type ?? '',
    resolution: r.resolution ?? '',
    local: { ts: r.local_ts ?? null, node: r.local_node ?? null, row: r.local_row ? JSON.parse(r.local_row) : null },
    remote: { ts: r.remote_ts ?? '', node: r.remote_node ?? '', row: r.remote_row ? JSON.parse(r.remote_row) : null, commitLsn: r.remote_commit_lsn ?? null },
    restoredAt: r.restored_at ?? null,
  }));
}

export interface RestoreResult {
  readonly relation: string;
  /** The rows written back, as written (with the --set values). */
  readonly rows: readonly Record<string, unknown>[];
}

type JsonRow = Record<string, unknown>;

function isRow(value: unknown): value is JsonRow {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The rows a conflict's resolution removed or dropped: the local row(s) when the remote change won, else the remote row. */
function losingRows(id: bigint | number, record: { conflict_type: string; resolution: string; local_row: string | null; remote_row: string | null }): JsonRow[] {
  const rows = (text: string | null): JsonRow[] => {
    const value: unknown = text === null ? null : JSON.parse(text);
    return Array.isArray(value) ? value.filter(isRow) : isRow(value) ? [value] : [];
  };
  switch (record.resolution) {
    case 'apply_remote': {
      const lost = rows(record.local_row);
      if (lost.length === 0) throw new PgmeshError('CONFIG_INVALID', `conflict ${id} (${record.conflict_type}) lost no row: the remote change was applied where there was none`);
      return lost;
    }
    case 'keep_local':
    case 'skip': {
      if (record.conflict_type.startsWith('delete_')) {
        throw new PgmeshError('CONFIG_INVALID', `conflict ${id} (${record.conflict_type}) is a delete that was not applied; no row was lost, so there is nothing to restore`);
      }
      const lost = rows(record.remote_row);
      if (lost.length === 0) throw new PgmeshError('CONFIG_INVALID', `conflict ${id} (${record.conflict_type}) has no remote row to restore`);
      return lost;
    }
    default:
      throw new PgmeshError(
        'CONFIG_INVALID',
        `conflict ${id} was resolved by ${record.resolution}, which keeps the change (exception table, or the peer paused): no row was lost; see "pgmesh exceptions list"`,
      );
  }
}

/**
 * Writes the row that lost a conflict back as a new local change on this node: it gets a new version (this node,
 * now) and replicates like any other write, so restoring it on one node restores it everywhere. For a secondary
 * unique key conflict the winner usually still holds the value: `set` gives columns new values (text, cast to the
 * column's type) for the row written back. The conflict is marked restored. Runs as an ordinary session, so the
 * table's own triggers and constraints apply.
 */
export async function restoreConflict(sql: Sql, id: bigint | number, options: { set?: Readonly<Record<string, string>> } = {}): Promise<RestoreResult> {
  if (typeof id === 'number' ? !Number.isSafeInteger(id) || id <= 0 : id <= 0n) throw new PgmeshError('CONFIG_INVALID', `conflict id "${id}" is not a positive integer`);
  const records = await sql.unsafe<{ relation: string; conflict_type: string; resolution: string; local_row: string | null; remote_row: string | null }[]>(
    `SELECT relation, conflict_type, resolution, local_row::text, remote_row::text FROM pgmesh.conflict WHERE id = $1::text::bigint`,
    [String(id)],
  );
  const record = records[0];
  if (!record) throw new PgmeshError('CONFIG_INVALID', `there is no conflict ${id} on this node; "pgmesh conflicts --node <name>" lists them`);
  const lost = losingRows(id, record);
  const dot = record.relation.indexOf('.');
  const local = await loadLocalRelation(sql, record.relation.slice(0, dot), record.relation.slice(dot + 1));
  if (!local) throw new PgmeshError('UNKNOWN_TABLE', `table ${record.relation} of conflict ${id} does not exist on this node`);
  const set = options.set ?? {};
  const unknown = Object.keys(set).filter((c) => !local.columns.has(c));
  if (unknown.length > 0) {
    throw new PgmeshError('CONFIG_INVALID', `${record.relation} has no column ${unknown.map((c) => `"${c}"`).join(', ')}; --set takes column=value with a column of the table`);
  }
  const written = lost.map((row) => ({ ...row, ...set }));
  const keys = local.primaryKey.map(quoteIdent);
  try {
    await sql.begin(async (tx) => {
      for (const row of written) {
        const columns = Object.keys(row).filter((c) => local.columns.has(c));
        const names = columns.map(quoteIdent);
        const others = columns.filter((c) => !local.primaryKey.includes(c)).map(quoteIdent);
        await tx.unsafe(
          `INSERT INTO ${local.qualified} (${names.join(', ')}) SELECT ${names.map((n) => `r.${n}`).join(', ')} ` +
            `FROM jsonb_populate_record(NULL::${local.qualified}, $1::text::jsonb) r ` +
            `ON CONFLICT (${keys.join(', ')}) DO ${others.length > 0 ? `UPDATE SET ${others.map((n) => `${n} = EXCLUDED.${n}`).join(', ')}` : 'NOTHING'}`,
          [JSON.stringify(row)],
        );
      }
      await tx.unsafe(`UPDATE pgmesh.conflict SET restored_at = now() WHERE id = $1::text::bigint`, [String(id)]);
    });
  } catch (error) {
    if (sqlState(error) === SQLSTATE.uniqueViolation) {
      const server = error as { detail?: string; constraint_name?: string };
      throw new PgmeshError(
        'APPLY_FAILED',
        `conflict ${id}: the losing row cannot be written back as it was: ${server.detail ?? errorMessage(error)} (constraint ${server.constraint_name ?? '?'}); ` +
          `give it another value with --set column=value, or change the row that holds it first`,
        { cause: error, context: { relation: record.relation } },
      );
    }
    throw error;
  }
  return { relation: record.relation, rows: written };
}

export interface ExceptionRecord {
  readonly id: number;
  readonly recordedAt: string;
  readonly peer: string;
  readonly relation: string | null;
  readonly kind: string;
  readonly key: unknown;
  readonly change: Record<string, unknown>;
  readonly remoteTs: string;
  readonly remoteCommitLsn: string;
  readonly sqlstate: string | null;
  readonly error: string;
  /** The conflict type when the change failed on a unique constraint (insert_exists, update_exists, multiple_unique_conflicts). */
  readonly conflictType: string | null;
  readonly state: 'open' | 'replayed' | 'discarded';
  readonly resolvedAt: string | null;
  readonly note: string | null;
}

/**
 * An exception's id: a bigint in the catalog. The CLI parses it as decimal text into a bigint (a JS number would
 * round ids above 2^53); the records carry numbers, exact for every id a node can reach in practice.
 */
export type ExceptionId = bigint | number;

export async function listExceptions(sql: Sql, filter: { state?: string; limit?: number; id?: ExceptionId } = {}): Promise<ExceptionRecord[]> {
  const rows = await sql.unsafe<Record<string, string | null>[]>(
    `SELECT id::text, ${isoTimestampSql('recorded_at')} AS recorded_at, peer, relation, change_kind, pkey, change::text,
            ${isoTimestampSql('remote_ts')} AS remote_ts, remote_commit_lsn::text, sqlstate, error, conflict_type, state,
            ${isoTimestampSql('resolved_at')} AS resolved_at, resolution_note
       FROM pgmesh.exception
      WHERE ($1::text IS NULL OR state = $1::text) AND ($3::text IS NULL OR id = $3::text::bigint)
      ORDER BY id LIMIT $2::text::int`,
    [filter.state ?? null, String(filter.limit ?? 1000), filter.id === undefined ? null : String(filter.id)],
  );
  return rows.map((r) => ({
    id: Number(r.id),
    recordedAt: r.recorded_at ?? '',
    peer: r.peer ?? '',
    relation: r.relation ?? null,
    kind: r.change_kind ?? '',
    key: r.pkey ? JSON.parse(r.pkey) : null,
    change: JSON.parse(r.change ?? '{}') as Record<string, unknown>,
    remoteTs: r.remote_ts ?? '',
    remoteCommitLsn: r.remote_commit_lsn ?? '',
    sqlstate: r.sqlstate ?? null,
    error: r.error ?? '',
    conflictType: r.conflict_type ?? null,
    state: (r.state ?? 'open') as ExceptionRecord['state'],
    resolvedAt: r.resolved_at ?? null,
    note: r.resolution_note ?? null,
  }));
}

async function openException(sql: Sql, id: ExceptionId): Promise<ExceptionRecord> {
  const [found] = await listExceptions(sql, { id });
  if (!found) throw new PgmeshError('CONFIG_INVALID', `there is no exception ${id} on this node; "pgmesh exceptions list" shows them`);
  if (found.state !== 'open') throw new PgmeshError('CONFIG_INVALID', `exception ${id} is already ${found.state}`);
  return found;
}

export async function discardException(sql: Sql, id: ExceptionId, note: string): Promise<void> {
  await openException(sql, id);
  await sql.unsafe(`UPDATE pgmesh.exception SET state = 'discarded', resolved_at = now(), resolution_note = $2 WHERE id = $1::text::bigint`, [
    String(id),
    note,
  ]);
}

function tupleFrom(row: Record<string, unknown> | null, names: readonly string[]): Tuple {
  return names.map((name): TupleValue => {
    const value = row?.[name];
    if (value === null || value === undefined) return { kind: 'null' };
    if (typeof value === 'object') return { kind: 'unchanged' };
    return { kind: 'text', value: String(value) };
  });
}

/**
 * Applies an exception's change again, after the operator fixed what made it fail. It runs with the original
 * remote version (the peer's replay origin and commit timestamp), so last-update-wins still judges it fairly and
 * it is not sent on to other nodes (they applied it already). On success the exception is marked replayed.
 */
export async function replayException(localDsn: string, localNode: string, id: ExceptionId, logger: Logger): Promise<void> {
  const sql = openSql(localDsn, {
    node: localNode,
    applicationName: 'pgmesh replay',
    logger,
    max: 1,
    parameters: { session_replication_role: 'replica' },
  });
  try {
    await sql.unsafe('SELECT 1');
    const exception = await openException(sql, id);
    const change = exception.change as {
      kind?: string;
      relation?: string;
      new?: Record<string, unknown> | null;
      old?: Record<string, unknown> | null;
      replica_identity?: string;
    };
    if (!exception.relation || !change.relation || (change.kind !== 'insert' && change.kind !== 'update' && change.kind !== 'delete')) {
      throw new PgmeshError('CONFIG_INVALID', `exception ${id} is a ${exception.kind} change, which cannot be replayed; discard it`);
    }
    const dot = exception.relation.indexOf('.');
    const schema = exception.relation.slice(0, dot);
    const name = exception.relation.slice(dot + 1);
    const local = await loadLocalRelation(sql, schema, name);
    if (!local) throw new PgmeshError('UNKNOWN_TABLE', `table ${exception.relation} of exception ${id} does not exist on ${localNode}`);
    const names = Object.keys(change.new ?? change.old ?? {});
    const relation: RelationMessage = {
      tag: 'relation',
      relationOid: 0,
      schema,
      name,
      replicaIdentity: change.replica_identity === 'f' ? 'f' : 'd',
      columns: names.map((n) => ({ isKey: local.primaryKey.includes(n), name: n, typeOid: 0, typeModifier: -1 })),
    };
    const binding = bindRelation(relation, local, { peer: exception.peer, node: localNode });
    const newTuple = tupleFrom(change.new ?? null, names);
    const oldTuple = change.old ? tupleFrom(change.old, names) : undefined;
    const ops =
      change.kind === 'insert'
        ? rowOps({ kind: 'insert', relation, newTuple }, binding)
        : change.kind === 'update'
          ? rowOps({ kind: 'update', relation, oldTuple, newTuple }, binding)
          : rowOps({ kind: 'delete', relation, oldTuple: oldTuple ?? newTuple }, binding);
    // The link's replay origin; for a peer no longer linked, the one a link would have (this database's own name).
    const origin = (await readLinkNames(sql, exception.peer))?.replayOrigin ?? replayOriginNameFor(await databaseOid(sql), exception.peer);
    // Linking creates the replay origin (cluster create); created here only for nodes linked before it did. Asked
    // first, because naming pg_replication_origin_create in a statement needs the right to execute it, which an
    // agent's role does not have.
    const known = await sql.unsafe(`SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1`, [origin]);
    if (known.length === 0) await sql.unsafe(`SELECT pg_catalog.pg_replication_origin_create($1)`, [origin]);
    const session = await sql.reserve();
    try {
      await session.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup(${quoteLiteral(origin)})`);
      await session.unsafe('BEGIN');
      // The exception row stays locked until this replay commits: a second replay of it at the same time waits here,
      // then finds it replayed and stops (a delta applied twice otherwise).
      const still = await session.unsafe<{ state: string }[]>(`SELECT state FROM pgmesh.exception WHERE id = $1::text::bigint FOR UPDATE`, [String(id)]);
      if (still[0]?.state !== 'open') {
        await session.unsafe('ROLLBACK');
        throw new PgmeshError('CONFIG_INVALID', `exception ${id} is already ${still[0]?.state ?? 'gone'} (replayed at the same time by another command)`);
      }
      for (const op of ops) {
        const shape = { kind: op.kind, binding, valuePositions: op.valuePositions, multiRow: false, unchangedPositions: op.unchangedPositions };
        const ctx = { peer: exception.peer, localNode, conflictWindowMs: 0 };
        const params = [...op.values, exception.remoteTs, exception.remoteCommitLsn] as string[];
        // Serialised with the apply sessions on its key, as a streamed change is (key-lock.ts).
        const lock = buildKeyLock(shape, 'keys', true);
        await session.unsafe(lock.text, lock.parameters.map((i) => params[i] ?? null) as string[]);
        // A secondary unique key is judged as for a streamed change (unique-resolution.ts).
        if (needsUniqueResolution(shape)) await session.unsafe(buildUniqueResolution(shape, ctx, local.conflictPolicy), params);
        await session.unsafe(buildStatement(shape, ctx, local.conflictPolicy), params);
        // Deferrable unique constraints are not checked by the server in replica mode (see the applier).
        if (op.kind === 'delete') continue;
        for (const index of local.deferredUnique) {
          await session.unsafe(buildDeferredUniqueCheck(binding, index), op.keyValues.map((v) => textArrayLiteral([v])));
        }
      }
      await session.unsafe(`UPDATE pgmesh.exception SET state = 'replayed', resolved_at = now() WHERE id = $1::text::bigint`, [String(id)]);
      await session.unsafe(`SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2::text::timestamptz)`, [
        exception.remoteCommitLsn,
        exception.remoteTs,
      ]);
      await session.unsafe('COMMIT');
    } catch (error) {
      await session.unsafe('ROLLBACK').catch(() => undefined);
      throw new PgmeshError('APPLY_FAILED', `replaying exception ${id} failed again: ${errorMessage(error)}; fix the cause (or discard it)`, { cause: error });
    } finally {
      await session.unsafe('SELECT pg_catalog.pg_replication_origin_session_reset()').catch(() => undefined);
      session.release();
    }
  } finally {
    await sql.end({ timeout: 2 });
  }
}

async function requireTable(sql: Sql, table: TableRef): Promise<void> {
  const rows = await sql.unsafe(`SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = 'pgmesh' AND schemaname = $1 AND tablename = $2`, [
    table.schema,
    table.name,
  ]);
  if (rows.length === 0) {
    throw new PgmeshError('UNKNOWN_TABLE', `${table.schema}.${table.name} is not replicated on this node; add it first (pgmesh tables add)`);
  }
}

/** Sets a table's conflict and/or exception policy on one node (the CLI does it on every node). */
export async function setTablePolicy(
  sql: Sql,
  table: TableRef,
  policy: { conflictPolicy?: ConflictPolicy | undefined; exceptionPolicy?: ExceptionPolicy | undefined },
): Promise<void> {
  if (policy.conflictPolicy && !CONFLICT_POLICIES.includes(policy.conflictPolicy)) {
    throw new PgmeshError('CONFIG_INVALID', `conflict policy "${policy.conflictPolicy}" is not one of ${CONFLICT_POLICIES.join(', ')}`);
  }
  if (policy.exceptionPolicy && !EXCEPTION_POLICIES.includes(policy.exceptionPolicy)) {
    throw new PgmeshError('CONFIG_INVALID', `exception policy "${policy.exceptionPolicy}" is not one of ${EXCEPTION_POLICIES.join(', ')}`);
  }
  await requireTable(sql, table);
  await sql.unsafe(
    `INSERT INTO pgmesh.table_policy (relation_schema, relation_name, conflict_policy, exception_policy)
     VALUES ($1, $2, coalesce($3::text, 'last_update_wins'), coalesce($4::text, 'skip_change'))
     ON CONFLICT (relation_schema, relation_name) DO UPDATE
       SET conflict_policy = coalesce($3::text, pgmesh.table_policy.conflict_policy),
           exception_policy = coalesce($4::text, pgmesh.table_policy.exception_policy)`,
    [table.schema, table.name, policy.conflictPolicy ?? null, policy.exceptionPolicy ?? null],
  );
}

/**
 * Declares numeric columns as delta columns on one node (the CLI does it on every node): concurrent changes add up
 * (`local + (new - old)`). The peer must send the old row, so the table gets REPLICA IDENTITY FULL.
 */
export async function setDeltaColumns(sql: Sql, table: TableRef, columns: readonly string[]): Promise<void> {
  await requireTable(sql, table);
  const qualified = qualifiedName(table.schema, table.name);
  const types = await sql.unsafe<{ attname: string; numeric: boolean; is_key: boolean }[]>(
    `SELECT a.attname, t.typcategory = 'N' AS numeric,
            EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey)) AS is_key
       FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t0 ON t0.oid = a.atttypid
       JOIN pg_catalog.pg_type t ON t.oid = CASE WHEN t0.typtype = 'd' THEN t0.typbasetype ELSE t0.oid END
      WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped`,
    [qualified],
  );
  const problems: string[] = [];
  for (const column of columns) {
    const found = types.find((t) => t.attname === column);
    if (!found) problems.push(`column "${column}" does not exist in ${qualified}`);
    else if (!found.numeric) problems.push(`column "${column}" of ${qualified} is not numeric; only numbers can be added up`);
    else if (found.is_key) problems.push(`column "${column}" of ${qualified} is part of the primary key and cannot be a delta column`);
  }
  if (problems.length > 0) throw new PgmeshError('CONFIG_INVALID', problems.join('; '));
  await sql.begin(async (tx) => {
    // Done on every node by pgmesh itself: not DDL to replicate (docs/ddl.md).
    await tx.unsafe(`SET LOCAL pgmesh.ddl_capture = off`);
    await tx.unsafe(`ALTER TABLE ${qualified} REPLICA IDENTITY FULL`);
    await tx.unsafe(
      `INSERT INTO pgmesh.table_policy (relation_schema, relation_name, delta_columns) VALUES ($1, $2, $3::text::text[])
       ON CONFLICT (relation_schema, relation_name) DO UPDATE SET delta_columns = EXCLUDED.delta_columns`,
      [table.schema, table.name, `{${columns.map((c) => `"${c.replace(/[\\"]/g, '\\$&')}"`).join(',')}}`],
    );
  });
}

/** How the transaction that paused a peer is applied when it is resumed. */
export type ResumeResolution = Exclude<ConflictPolicy, 'pause'>;

/**
 * Lets a paused peer stream again; its agent notices within a second. The transaction that paused it is applied
 * once with `resolution` (default last_update_wins) for its conflicts on tables whose policy is pause: the
 * operator repairs the row first (a local write, newer than both sides, which then wins), or lets the rule
 * decide. Under the pause policy alone it would pause again, since any repair is a newer local version.
 */
export async function resumePeer(sql: Sql, peer: string, options: { resolution?: ResumeResolution } = {}): Promise<boolean> {
  const resolution = options.resolution ?? 'last_update_wins';
  if (!CONFLICT_POLICIES.includes(resolution) || (resolution as ConflictPolicy) === 'pause') {
    throw new PgmeshError('CONFIG_INVALID', `resume resolution "${resolution}" is not one of last_update_wins, keep_local, apply_remote`);
  }
  const rows = await sql.unsafe(
    `UPDATE pgmesh.apply_progress SET paused_at = NULL, paused_reason = NULL, resume_resolution = $2
      WHERE peer = $1 AND paused_at IS NOT NULL RETURNING 1`,
    [peer, resolution],
  );
  return rows.length > 0;
}
