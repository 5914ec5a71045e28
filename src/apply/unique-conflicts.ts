/**
 * A remote insert or update that failed on a unique constraint other than the primary key is a conflict too, named as
 * PostgreSQL 18 names it: `insert_exists` or `update_exists` when one constraint is violated,
 * `multiple_unique_conflicts` when several are. Collisions on plain unique indexes are resolved before the apply
 * statement (unique-resolution.ts); what fails here is a constraint pgmesh does not resolve (deferrable, or an
 * expression or partial index). It cannot be applied, so it goes to the exception table; this module finds the local
 * rows that hold the values (with their versions) and records the conflict with resolution `exception`, so that it
 * is in the conflict log and counted like every other conflict.
 *
 * Runs in the careful-mode transaction, after the failing change was rolled back to its savepoint.
 */
import { quoteIdent, quoteLiteral } from '../pg/quote.ts';
import type { Sql } from '../pg/connect.ts';
import type { Tuple } from '../protocol/messages.ts';
import type { RelationBinding } from './local-relation.ts';

export type UniqueConflictType = 'insert_exists' | 'update_exists' | 'multiple_unique_conflicts';

export interface UniqueConflict {
  readonly type: UniqueConflictType;
  /** Unique indexes whose values are taken by another local row. */
  readonly indexes: readonly string[];
  /** The local rows holding the values (distinct), with their versions. */
  readonly localRows: readonly { readonly row: unknown; readonly ts: string | null; readonly node: string | null }[];
  /** The change's primary key as the conflict log spells it (a jsonb array), and its new row, typed. */
  readonly pkey: string;
  readonly remoteRow: unknown;
}

interface UniqueIndex {
  readonly name: string;
  readonly columns: readonly string[];
}

async function uniqueIndexes(sql: Sql, relid: number): Promise<UniqueIndex[]> {
  // Plain column indexes only: for expression and partial indexes the clashing row cannot be found this simply.
  const rows = await sql.unsafe<{ name: string; columns: string }[]>(
    `SELECT c.relname AS name, json_agg(a.attname ORDER BY k.n)::text AS columns
       FROM pg_catalog.pg_index i
       JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
       JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON k.n <= i.indnkeyatts
       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      WHERE i.indrelid = $1::text::oid AND i.indisunique AND NOT i.indisprimary AND i.indpred IS NULL AND i.indexprs IS NULL
      GROUP BY c.relname ORDER BY c.relname`,
    [String(relid)],
  );
  return rows.map((r) => ({ name: r.name, columns: JSON.parse(r.columns) as string[] }));
}

/** The text value sent for a local column name, or undefined when it was not sent (unchanged TOAST). */
function sentValue(binding: RelationBinding, tuple: Tuple, column: string): { position: number; value: string | null } | undefined {
  const position = binding.columns.findIndex((c) => c.name === column);
  const v = tuple[position];
  if (position < 0 || !v || v.kind === 'unchanged' || v.kind === 'binary') return undefined;
  return { position, value: v.kind === 'null' ? null : v.value };
}

/**
 * Finds which unique constraints a failed remote insert or update collides with and the local rows holding the
 * values. `oldTuple` (an update's old key) names a row that is the changed row itself, not a clashing one.
 */
export async function findUniqueConflict(
  sql: Sql,
  binding: RelationBinding,
  kind: 'insert' | 'update',
  newTuple: Tuple,
  oldTuple: Tuple | undefined,
  localNode: string,
): Promise<UniqueConflict> {
  const table = binding.local.qualified;
  const keyColumns = binding.keyPositions.map((p) => binding.columns[p]?.name ?? '');
  const keyValue = (tuple: Tuple | undefined) => keyColumns.map((c) => (tuple ? sentValue(binding, tuple, c) : undefined));
  const ownKeys = [keyValue(newTuple), keyValue(oldTuple)].filter((k) => k.every((v) => v !== undefined && v.value !== null));
  const version =
    binding.deltaPositions.length > 0
      ? `pgmesh.row_version_keyed(${binding.local.oid}::oid, pg_catalog.jsonb_build_array(${keyColumns.map((c) => `x.${quoteIdent(c)}`).join(', ')})::text, x.xmin, $1)`
      : `pgmesh.row_version(x.xmin, $1)`;
  const indexes: string[] = [];
  const localRows = new Map<string, { row: unknown; ts: string | null; node: string | null }>();
  for (const index of await uniqueIndexes(sql, binding.local.oid)) {
    const values = index.columns.map((c) => sentValue(binding, newTuple, c));
    // NULLs do not clash (NULLS DISTINCT, the default); unsent values cannot be compared.
    if (values.some((v) => v === undefined || v.value === null)) continue;
    const params: (string | null)[] = [localNode];
    const param = (value: string | null, position: number) => {
      params.push(value);
      return `$${params.length}::text::${binding.columns[position]?.type ?? 'text'}`;
    };
    const match = index.columns.map((c, i) => `x.${quoteIdent(c)} = ${param(values[i]?.value ?? null, values[i]?.position ?? 0)}`);
    const notSelf = ownKeys.map(
      (key) => `NOT (${keyColumns.map((c, i) => `x.${quoteIdent(c)} = ${param(key[i]?.value ?? null, key[i]?.position ?? 0)}`).join(' AND ')})`,
    );
    const rows = await sql.unsafe<{ row: string; ts: string | null; node: string | null }[]>(
      `SELECT pg_catalog.to_jsonb(x)::text AS row, v.ts::text AS ts, v.node FROM ${table} x CROSS JOIN LATERAL ${version} v
        WHERE ${[...match, ...notSelf].join(' AND ')} LIMIT 1`,
      params as string[],
    );
    const hit = rows[0];
    if (!hit) continue;
    indexes.push(index.name);
    if (!localRows.has(hit.row)) localRows.set(hit.row, { row: JSON.parse(hit.row) as unknown, ts: hit.ts, node: hit.node });
  }
  // The change as typed values, and its key as the apply statements spell it.
  const sent = binding.columns.flatMap((c, position) => {
    const v = sentValue(binding, newTuple, c.name);
    return v ? [{ name: c.name, type: c.type, position, value: v.value }] : [];
  });
  const params = sent.map((s) => s.value);
  const pairs = sent.map((s, i) => `${quoteLiteral(s.name)}, $${i + 1}::text::${s.type}`);
  const chunks: string[] = [];
  for (let i = 0; i < pairs.length; i += 50) chunks.push(`pg_catalog.jsonb_build_object(${pairs.slice(i, i + 50).join(', ')})`);
  const keyRefs = binding.keyPositions.map((p) => {
    const i = sent.findIndex((s) => s.position === p);
    return i >= 0 ? `$${i + 1}::text::${sent[i]?.type}` : 'NULL';
  });
  const typed = await sql.unsafe<{ row: string; pkey: string }[]>(
    `SELECT (${chunks.length > 0 ? chunks.join(' || ') : `'{}'::jsonb`})::text AS row, pg_catalog.jsonb_build_array(${keyRefs.join(', ')})::text AS pkey`,
    params as string[],
  );
  const type: UniqueConflictType = indexes.length > 1 ? 'multiple_unique_conflicts' : kind === 'insert' ? 'insert_exists' : 'update_exists';
  return {
    type,
    indexes,
    localRows: [...localRows.values()],
    pkey: typed[0]?.pkey ?? '[]',
    remoteRow: JSON.parse(typed[0]?.row ?? 'null') as unknown,
  };
}

/**
 * Records the conflict in pgmesh.conflict with resolution `exception`. The local side is the row holding the
 * value; when several rows hold the values (multiple_unique_conflicts) local_row is the array of them and the
 * version is the first one's.
 */
export async function recordUniqueConflict(
  sql: Sql,
  conflict: UniqueConflict,
  context: { peer: string; relation: string; remoteTs: string; remoteCommitLsn: string },
): Promise<void> {
  const first = conflict.localRows[0];
  const localRow = conflict.localRows.length > 1 ? conflict.localRows.map((r) => r.row) : (first?.row ?? null);
  await sql.unsafe(
    `INSERT INTO pgmesh.conflict (peer, relation, pkey, conflict_type, resolution, local_ts, local_node, local_row,
                                  remote_ts, remote_node, remote_row, remote_commit_lsn)
     VALUES ($1::text, $2::text, $3::text, $4::text, 'exception', $5::text::timestamptz, $6::text, $7::text::jsonb,
             $8::text::timestamptz, $1::text, $9::text::jsonb, $10::text::pg_lsn)`,
    [
      context.peer,
      context.relation,
      conflict.pkey,
      conflict.type,
      first?.ts ?? null,
      first?.node ?? null,
      localRow === null ? null : JSON.stringify(localRow),
      context.remoteTs,
      JSON.stringify(conflict.remoteRow),
      context.remoteCommitLsn,
    ] as string[],
  );
}
