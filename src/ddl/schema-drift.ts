/**
 * Changes written on a peer before a schema change reached it, arriving where the change ran first: a row with a
 * column that was renamed or dropped here, or a row of a table dropped here. Replication does not stop for them
 * (the peer's stream would stop for good: the peer's schema catches up, but the rows already sent do not change).
 *
 * - Columns the peer sends that this node does not have are left out, and the rest of the row is applied. When a
 *   left-out value is not NULL, the whole change is kept in pgmesh.exception as well, so that nothing is lost
 *   silently (a column renamed here and written there before the rename arrived keeps its value only there).
 * - A change of a table that does not exist here is not applied and is kept in pgmesh.exception.
 */
import { quoteLiteral } from '../pg/quote.ts';
import type { RelationMessage, Tuple, TupleValue } from '../protocol/messages.ts';
import type { RemoteChange } from '../stream/remote-transaction.ts';

type RowChange = Extract<RemoteChange, { kind: 'insert' | 'update' | 'delete' }>;

export interface Reduction {
  /** The peer's relation without the missing columns: what the change is bound to. */
  readonly relation: RelationMessage;
  /** Positions of the peer's columns that are kept, in order. */
  readonly keep: readonly number[];
  /** Names of the columns left out. */
  readonly missing: readonly string[];
}

/** The relation without the columns this node lacks, or undefined when it has them all. */
export function reduceRelation(remote: RelationMessage, localColumns: ReadonlySet<string>): Reduction | undefined {
  const keep: number[] = [];
  const missing: string[] = [];
  remote.columns.forEach((column, i) => (localColumns.has(column.name) ? keep.push(i) : missing.push(column.name)));
  if (missing.length === 0) return undefined;
  return { relation: { ...remote, columns: keep.map((i) => remote.columns[i] as RelationMessage['columns'][number]) }, keep, missing };
}

export function reduceChange(change: RowChange, reduction: Reduction): RowChange {
  const cut = (tuple: Tuple): Tuple => reduction.keep.map((i) => tuple[i] as TupleValue);
  switch (change.kind) {
    case 'insert':
      return { kind: 'insert', relation: reduction.relation, newTuple: cut(change.newTuple) };
    case 'update':
      return { kind: 'update', relation: reduction.relation, oldTuple: change.oldTuple && cut(change.oldTuple), newTuple: cut(change.newTuple) };
    case 'delete':
      return { kind: 'delete', relation: reduction.relation, oldTuple: cut(change.oldTuple) };
  }
}

/** The values of the left-out columns that are not NULL (undefined when there are none: nothing is lost). */
export function droppedValues(change: RowChange, reduction: Reduction): Record<string, string> | undefined {
  if (change.kind === 'delete') return undefined;
  const kept = new Set(reduction.keep);
  const dropped: Record<string, string> = {};
  change.newTuple.forEach((value, i) => {
    if (kept.has(i) || value.kind === 'null' || value.kind === 'unchanged') return;
    dropped[change.relation.columns[i]?.name ?? String(i)] = value.kind === 'text' ? value.value : `\\x${value.value.toString('hex')}`;
  });
  return Object.keys(dropped).length > 0 ? dropped : undefined;
}

/** The whole change as the exception table keeps it: column names to text values. */
function describe(change: RowChange): Record<string, unknown> {
  const row = (tuple: Tuple | undefined) =>
    tuple &&
    Object.fromEntries(
      tuple.map((v, i) => [
        change.relation.columns[i]?.name ?? String(i),
        v.kind === 'null' ? null : v.kind === 'text' ? v.value : v.kind === 'binary' ? `\\x${v.value.toString('hex')}` : { unchanged_toast: true },
      ]),
    );
  return {
    kind: change.kind,
    relation: `${change.relation.schema}.${change.relation.name}`,
    new: change.kind === 'delete' ? null : row(change.newTuple),
    old: change.kind === 'insert' ? null : row(change.oldTuple),
  };
}

export interface DriftContext {
  readonly peer: string;
  readonly node: string;
  readonly remoteTs: string;
  readonly remoteLsn: string;
}

/** The statement that keeps a change in pgmesh.exception, with why (sqlstate 42703 or 42P01, as PostgreSQL would say). */
export function driftExceptionSql(change: RowChange, reason: { missingColumns: readonly string[] } | { missingTable: true }, ctx: DriftContext): string {
  const relation = `${change.relation.schema}.${change.relation.name}`;
  const [sqlstate, error] =
    'missingTable' in reason
      ? ['42P01', `table ${relation} exists on ${ctx.peer} but not on ${ctx.node} (dropped here, or not created yet); the change was not applied`]
      : ['42703', `column(s) ${reason.missingColumns.join(', ')} of ${relation} exist on ${ctx.peer} but not on ${ctx.node} (renamed or dropped here); the change was applied without them`];
  return (
    `INSERT INTO pgmesh.exception (peer, relation, change_kind, change, remote_ts, remote_commit_lsn, sqlstate, error) VALUES (` +
    [ctx.peer, relation, change.kind, JSON.stringify(describe(change))].map(quoteLiteral).join(', ') +
    `::jsonb, ${quoteLiteral(ctx.remoteTs)}::timestamptz, ${quoteLiteral(ctx.remoteLsn)}::pg_lsn, ${quoteLiteral(sqlstate)}, ${quoteLiteral(error)})`
  );
}
