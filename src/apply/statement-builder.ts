/**
 * SQL for applying row changes, one statement for many rows of the same table and kind (the values travel as
 * text arrays and are unnested), or for one row (the values as scalar parameters). Every statement carries the
 * last-update-wins check; values are cast from their text form to the local column type.
 *
 * Parameters: first the value columns (one per source column), then $remote_ts, $remote_node, $local_node.
 */
import { quoteIdent } from '../pg/quote.ts';
import type { LocalColumn, RelationBinding } from './local-relation.ts';

export type BatchKind = 'insert' | 'update' | 'delete';

export interface StatementShape {
  readonly kind: BatchKind;
  readonly binding: RelationBinding;
  /** Remote column positions that the statement writes (insert: all; update: all sent, not unchanged TOAST). */
  readonly valuePositions: readonly number[];
  readonly multiRow: boolean;
}

function source(count: number, multiRow: boolean, aliases: readonly string[]): string {
  const params = Array.from({ length: count }, (_, i) => `$${i + 1}::text${multiRow ? '[]' : ''}`);
  return multiRow
    ? `unnest(${params.join(', ')}) AS u(${aliases.join(', ')})`
    : `(VALUES (${params.join(', ')})) AS u(${aliases.join(', ')})`;
}

function cast(alias: string, column: LocalColumn): string {
  return `u.${alias}::${column.type}`;
}

function versionCheck(paramBase: number): string {
  return `pgmesh.remote_wins(x.xmin, $${paramBase + 1}::text::timestamptz, $${paramBase + 2}::text, $${paramBase + 3}::text)`;
}

export function buildStatement(shape: StatementShape): string {
  const { binding, valuePositions } = shape;
  const table = binding.local.qualified;
  const keyColumns = binding.keyPositions.map((p) => binding.columns[p] as LocalColumn);
  switch (shape.kind) {
    case 'insert': {
      const columns = valuePositions.map((p) => binding.columns[p] as LocalColumn);
      const aliases = columns.map((_, i) => `v${i}`);
      const names = columns.map((c) => quoteIdent(c.name));
      const nonKey = columns.filter((c) => !binding.local.primaryKey.includes(c.name));
      const set = (nonKey.length > 0 ? nonKey : keyColumns).map((c) => `${quoteIdent(c.name)} = EXCLUDED.${quoteIdent(c.name)}`);
      return (
        `INSERT INTO ${table} AS x (${names.join(', ')}) ` +
        `SELECT ${columns.map((c, i) => cast(aliases[i] as string, c)).join(', ')} FROM ${source(columns.length, shape.multiRow, aliases)} ` +
        `ON CONFLICT (${binding.local.primaryKey.map(quoteIdent).join(', ')}) DO UPDATE SET ${set.join(', ')} ` +
        `WHERE ${versionCheck(columns.length)}`
      );
    }
    case 'update': {
      const columns = valuePositions.map((p) => binding.columns[p] as LocalColumn);
      const keyAliases = keyColumns.map((_, i) => `k${i}`);
      const valueAliases = columns.map((_, i) => `v${i}`);
      const count = keyColumns.length + columns.length;
      const set = columns.map((c, i) => `${quoteIdent(c.name)} = ${cast(valueAliases[i] as string, c)}`);
      const match = keyColumns.map((c, i) => `x.${quoteIdent(c.name)} = ${cast(keyAliases[i] as string, c)}`);
      return (
        `UPDATE ${table} AS x SET ${set.join(', ')} FROM ${source(count, shape.multiRow, [...keyAliases, ...valueAliases])} ` +
        `WHERE ${match.join(' AND ')} AND ${versionCheck(count)}`
      );
    }
    case 'delete': {
      const keyAliases = keyColumns.map((_, i) => `k${i}`);
      const match = keyColumns.map((c, i) => `x.${quoteIdent(c.name)} = ${cast(keyAliases[i] as string, c)}`);
      return (
        `DELETE FROM ${table} AS x USING ${source(keyColumns.length, shape.multiRow, keyAliases)} ` +
        `WHERE ${match.join(' AND ')} AND ${versionCheck(keyColumns.length)}`
      );
    }
  }
}
