/**
 * The shape of the replicated tables (columns, types, primary key) on two nodes, and what differs between them.
 * A joining node must already have the source's replicated tables, with the same columns and keys: pgmesh verifies
 * the schema, it does not create it (create it with `pg_dump --schema-only` of the source, or the application's
 * migrations), and refuses with every difference listed.
 */
import type { Sql } from '../pg/connect.ts';
import { qualifiedName } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { TableRef } from '../cluster/node-admin.ts';

export interface ColumnShape {
  readonly name: string;
  /** format_type(): the type with its modifier, as \d prints it. */
  readonly type: string;
  readonly notNull: boolean;
  /** A stored generated column: computed on each node, never copied. */
  readonly generated: boolean;
}

export interface TableShape extends TableRef {
  readonly qualified: string;
  readonly columns: readonly ColumnShape[];
  readonly primaryKey: readonly string[];
  /** REPLICA IDENTITY: 'd' default, 'f' full (pgmesh sets it for delta columns), 'i' index, 'n' nothing. */
  readonly replicaIdentity: string;
  /** A partitioned table (its rows are in its partitions). */
  readonly partitioned: boolean;
}

/** Shapes of the given tables on one node; a table missing there is left out of the map. */
export async function readTableShapes(sql: Sql, tables: readonly TableRef[]): Promise<Map<string, TableShape>> {
  const shapes = new Map<string, TableShape>();
  if (tables.length === 0) return shapes;
  const rows = await sql.unsafe<{ schema: string; name: string; columns: ColumnShape[]; pkey: string[] | null; replident: string; partitioned: boolean }[]>(
    `SELECT n.nspname AS schema, c.relname AS name, c.relreplident::text AS replident, c.relkind = 'p' AS partitioned,
            (SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                                                          'notNull', a.attnotnull, 'generated', a.attgenerated <> '')
                                       ORDER BY a.attnum), '[]')
               FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
            (SELECT jsonb_agg(a.attname ORDER BY k.n)
               FROM pg_catalog.pg_index i
               JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON true
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary) AS pkey
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND c.relkind IN ('r', 'p')
      ORDER BY 1, 2`,
    [textArrayLiteral(tables.map((t) => t.schema)), textArrayLiteral(tables.map((t) => t.name))],
  );
  for (const row of rows) {
    const columns = typeof row.columns === 'string' ? (JSON.parse(row.columns) as ColumnShape[]) : row.columns;
    const pkey = typeof row.pkey === 'string' ? (JSON.parse(row.pkey) as string[]) : (row.pkey ?? []);
    shapes.set(`${row.schema}.${row.name}`, { schema: row.schema, name: row.name, qualified: qualifiedName(row.schema, row.name), columns, primaryKey: pkey, replicaIdentity: row.replident, partitioned: row.partitioned });
  }
  return shapes;
}

/**
 * Every difference that stops a copy from `source` to `target`, one line each, naming the table and the column.
 * Column order may differ (the copy names its columns); names, types, NOT NULL, generated columns and the primary key
 * may not.
 */
export function diffTableShapes(
  source: ReadonlyMap<string, TableShape>,
  target: ReadonlyMap<string, TableShape>,
  names: { readonly source: string; readonly target: string },
): string[] {
  const out: string[] = [];
  for (const [key, s] of source) {
    const t = target.get(key);
    if (!t) {
      out.push(`table ${key} is missing on ${names.target}`);
      continue;
    }
    const targetColumns = new Map(t.columns.map((c) => [c.name, c]));
    for (const c of s.columns) {
      const other = targetColumns.get(c.name);
      if (!other) {
        out.push(`${key}: column ${c.name} (${c.type}) is missing on ${names.target}`);
        continue;
      }
      if (other.type !== c.type) out.push(`${key}.${c.name}: type ${c.type} on ${names.source}, ${other.type} on ${names.target}`);
      if (other.notNull !== c.notNull) out.push(`${key}.${c.name}: ${c.notNull ? 'NOT NULL' : 'nullable'} on ${names.source}, ${other.notNull ? 'NOT NULL' : 'nullable'} on ${names.target}`);
      if (other.generated !== c.generated) out.push(`${key}.${c.name}: ${c.generated ? 'generated' : 'not generated'} on ${names.source}, ${other.generated ? 'generated' : 'not generated'} on ${names.target}`);
    }
    const sourceColumns = new Set(s.columns.map((c) => c.name));
    for (const c of t.columns) {
      if (!sourceColumns.has(c.name)) out.push(`${key}: column ${c.name} (${c.type}) is on ${names.target} but not on ${names.source}`);
    }
    // Default and full are pgmesh's to set (the copy makes them equal); another replica identity is the user's.
    const settable = (r: string) => r === 'd' || r === 'f';
    if (s.replicaIdentity !== t.replicaIdentity && !(settable(s.replicaIdentity) && settable(t.replicaIdentity))) {
      out.push(`${key}: REPLICA IDENTITY ${describeIdentity(s.replicaIdentity)} on ${names.source}, ${describeIdentity(t.replicaIdentity)} on ${names.target}`);
    }
    if (s.primaryKey.join(',') !== t.primaryKey.join(',')) {
      out.push(`${key}: primary key (${s.primaryKey.join(', ')}) on ${names.source}, (${t.primaryKey.join(', ') || 'none'}) on ${names.target}`);
    }
  }
  return out;
}

function describeIdentity(code: string): string {
  return code === 'd' ? 'DEFAULT' : code === 'f' ? 'FULL' : code === 'i' ? 'USING INDEX' : 'NOTHING';
}

/** Makes the target's replica identity (default or full) that of the source, table by table. */
export async function alignReplicaIdentity(target: Sql, source: ReadonlyMap<string, TableShape>, current: ReadonlyMap<string, TableShape>): Promise<void> {
  for (const [key, s] of source) {
    const t = current.get(key);
    if (!t || t.replicaIdentity === s.replicaIdentity) continue;
    if (s.replicaIdentity === 'f') await target.unsafe(`ALTER TABLE ${t.qualified} REPLICA IDENTITY FULL`);
    else if (s.replicaIdentity === 'd') await target.unsafe(`ALTER TABLE ${t.qualified} REPLICA IDENTITY DEFAULT`);
  }
}
