/**
 * The local table that a remote relation maps to: matched by schema and name, columns matched by name,
 * so a peer may have its columns in another order. Types come from the local catalog.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Sql } from '../pg/connect.ts';
import { qualifiedName } from '../pg/quote.ts';
import type { RelationMessage } from '../protocol/messages.ts';

export interface LocalColumn {
  readonly name: string;
  /** The type as format_type prints it, used in casts: `numeric(10,2)`, `public.mood`, `integer[]`. */
  readonly type: string;
  /**
   * GENERATED ALWAYS AS IDENTITY: inserts give its value with OVERRIDING SYSTEM VALUE, and updates leave it out (an
   * UPDATE may set it only to DEFAULT; pgmesh replicates such columns only as part of the primary key, which an
   * update does not change).
   */
  readonly identityAlways: boolean;
  /**
   * For a column whose type modifier a cast would fit a value to without an error (a string cut to varchar(n), a
   * number rounded to numeric(p,s)'s scale, a time to its precision): the type without the modifier, and the SQLSTATE
   * raised instead when a value does not fit (statement-builder's `asColumnType`).
   */
  readonly bounded?: { readonly unmodified: string; readonly sqlstate: '22001' | '22003' };
}

export type ConflictPolicy = 'last_update_wins' | 'keep_local' | 'apply_remote' | 'pause';
export type ExceptionPolicy = 'skip_change' | 'skip_transaction' | 'pause';

export interface LocalRelation {
  readonly oid: number;
  readonly schema: string;
  readonly name: string;
  readonly qualified: string;
  readonly columns: ReadonlyMap<string, LocalColumn>;
  readonly primaryKey: readonly string[];
  readonly conflictPolicy: ConflictPolicy;
  readonly exceptionPolicy: ExceptionPolicy;
  /** Numeric columns applied as `local + (new - old)`. */
  readonly deltaColumns: readonly string[];
  /**
   * Deferrable unique constraints (other than the primary key) on plain columns. PostgreSQL checks them with
   * triggers, which do not fire in the apply session (replica mode), so the applier checks them itself.
   */
  readonly deferredUnique: readonly DeferredUnique[];
  /**
   * Unique indexes other than the primary key, checked immediately, on plain columns, without a predicate, NULLs
   * distinct: a remote row that takes a value held by another local row is resolved by the table's policy
   * (unique-resolution.ts).
   */
  readonly uniqueIndexes: readonly UniqueIndex[];
}

export interface UniqueIndex {
  /** The index's OID on this node (claims on its values are kept under it). */
  readonly oid: number;
  readonly name: string;
  readonly columns: readonly string[];
}

export interface DeferredUnique {
  readonly name: string;
  readonly columns: readonly string[];
}

/** A remote relation bound to its local table: for each remote column position, the local column (or none). */
export interface RelationBinding {
  readonly remote: RelationMessage;
  readonly local: LocalRelation;
  readonly columns: readonly LocalColumn[];
  /** Remote column positions of the local primary key columns, in key order. */
  readonly keyPositions: readonly number[];
  /** Remote column positions of the delta columns. */
  readonly deltaPositions: readonly number[];
}

export async function loadLocalRelation(sql: Sql, schema: string, name: string): Promise<LocalRelation | undefined> {
  // Bounded: built-in types (and arrays of them) whose modifier cuts or rounds a value in a cast, all with equality.
  // format_type(oid, -1), not NULL: bpchar without a modifier would print as "character", which is character(1).
  const rows = await sql.unsafe<{ oid: number; attname: string; type: string; always: boolean; pk_pos: number | null; unmodified: string | null; bounded_state: string | null }[]>(
    `SELECT c.oid::int8 AS oid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attidentity = 'a' AS always,
            array_position(i.indkey::int2[], a.attnum) AS pk_pos,
            CASE WHEN b.state IS NOT NULL THEN pg_catalog.format_type(a.atttypid, -1) END AS unmodified, b.state AS bounded_state
       FROM pg_catalog.pg_class c
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
       LEFT JOIN LATERAL (
         SELECT CASE WHEN e IN ('varchar'::regtype, 'bpchar'::regtype, 'bit'::regtype, 'varbit'::regtype) THEN '22001'
                     WHEN e IN ('numeric'::regtype, 'time'::regtype, 'timetz'::regtype, 'timestamp'::regtype,
                                'timestamptz'::regtype, 'interval'::regtype) THEN '22003' END AS state
           FROM (SELECT CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END::regtype AS e) e
          WHERE a.atttypmod >= 0) b ON true
       LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
      WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
      ORDER BY a.attnum`,
    [schema, name],
  );
  const first = rows[0];
  if (!first) return undefined;
  const columns = new Map<string, LocalColumn>();
  const keyed: { pos: number; name: string }[] = [];
  for (const row of rows) {
    const state = row.bounded_state;
    const column: LocalColumn =
      row.unmodified !== null && (state === '22001' || state === '22003')
        ? { name: row.attname, type: row.type, identityAlways: row.always, bounded: { unmodified: row.unmodified, sqlstate: state } }
        : { name: row.attname, type: row.type, identityAlways: row.always };
    columns.set(row.attname, column);
    if (row.pk_pos !== null) keyed.push({ pos: row.pk_pos, name: row.attname });
  }
  keyed.sort((a, b) => a.pos - b.pos);
  const policies = await sql.unsafe<{ conflict_policy: ConflictPolicy; exception_policy: ExceptionPolicy; delta_columns: string }[]>(
    `SELECT conflict_policy, exception_policy, delta_columns::text AS delta_columns FROM pgmesh.table_policy
      WHERE relation_schema = $1 AND relation_name = $2`,
    [schema, name],
  );
  const policy = policies[0];
  const unique = await sql.unsafe<{ oid: string; name: string; immediate: boolean; resolvable: boolean; columns: string }[]>(
    `SELECT i.indexrelid::int8::text AS oid, ic.relname AS name, i.indimmediate AS immediate, i.indimmediate AND NOT i.indnullsnotdistinct AS resolvable,
            json_agg(a.attname ORDER BY k.n)::text AS columns
       FROM pg_catalog.pg_index i
       JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
       JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON k.n <= i.indnkeyatts
       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      WHERE i.indrelid = $1::text::oid AND i.indisunique AND NOT i.indisprimary
        AND i.indexprs IS NULL AND i.indpred IS NULL
      GROUP BY i.indexrelid, ic.relname, i.indimmediate, i.indnullsnotdistinct ORDER BY ic.relname`,
    [String(first.oid)],
  );
  const deferred = unique.filter((u) => !u.immediate);
  return {
    oid: Number(first.oid),
    schema,
    name,
    qualified: qualifiedName(schema, name),
    columns,
    primaryKey: keyed.map((k) => k.name),
    conflictPolicy: policy?.conflict_policy ?? 'last_update_wins',
    exceptionPolicy: policy?.exception_policy ?? 'skip_change',
    deltaColumns: policy ? parseTextArray(policy.delta_columns) : [],
    deferredUnique: deferred.map((d) => ({ name: d.name, columns: JSON.parse(d.columns) as string[] })),
    uniqueIndexes: unique.filter((u) => u.resolvable).map((u) => ({ oid: Number(u.oid), name: u.name, columns: JSON.parse(u.columns) as string[] })),
  };
}

/** Parses a one-dimensional text[] as PostgreSQL prints it: {a,"b c","d\"e"}. */
export function parseTextArray(text: string): string[] {
  const out: string[] = [];
  const body = text.trim().replace(/^\{|\}$/g, '');
  if (body === '') return out;
  let i = 0;
  while (i < body.length) {
    let value = '';
    if (body[i] === '"') {
      i++;
      while (i < body.length && body[i] !== '"') {
        if (body[i] === '\\') i++;
        value += body[i] ?? '';
        i++;
      }
      i++;
    } else {
      while (i < body.length && body[i] !== ',') value += body[i++];
    }
    out.push(value);
    i++; // the comma
  }
  return out;
}

export function bindRelation(remote: RelationMessage, local: LocalRelation, context: { peer: string; node: string }): RelationBinding {
  const where = `table ${local.qualified} (changes from ${context.peer}, applied on ${context.node})`;
  const columns: LocalColumn[] = [];
  for (const column of remote.columns) {
    const localColumn = local.columns.get(column.name);
    if (!localColumn) {
      throw new PgmeshError(
        'SCHEMA_MISMATCH',
        `${where}: column "${column.name}" exists on ${context.peer} but not on ${context.node}; add it on ${context.node} (same type) and replication resumes`,
        { context: { peer: context.peer, relation: local.qualified } },
      );
    }
    columns.push(localColumn);
  }
  if (local.primaryKey.length === 0) {
    throw new PgmeshError(
      'TABLE_WITHOUT_KEY',
      `${where}: the table has no primary key on ${context.node}; add the same primary key as on ${context.peer}`,
      { context: { peer: context.peer, relation: local.qualified } },
    );
  }
  const keyPositions = local.primaryKey.map((key) => {
    const position = remote.columns.findIndex((c) => c.name === key);
    if (position < 0) {
      throw new PgmeshError(
        'SCHEMA_MISMATCH',
        `${where}: primary key column "${key}" is not sent by ${context.peer}; the table definitions differ, make them equal`,
        { context: { peer: context.peer, relation: local.qualified } },
      );
    }
    return position;
  });
  const deltaPositions = local.deltaColumns.map((name) => {
    const position = remote.columns.findIndex((c) => c.name === name);
    if (position < 0) {
      throw new PgmeshError('SCHEMA_MISMATCH', `${where}: delta column "${name}" is not sent by ${context.peer}; the table definitions differ`, {
        context: { peer: context.peer, relation: local.qualified },
      });
    }
    return position;
  });
  return { remote, local, columns, keyPositions, deltaPositions };
}
