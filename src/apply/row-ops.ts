/**
 * Turns a remote row change into the row operations that apply it: the statement kind, the positions of the values
 * it sends, and the text values in parameter order (see statement-builder). One change may be two operations:
 * an update that changes the primary key is the old key's delete and the new row's upsert.
 *
 * pgoutput does not send an out-of-line (TOAST) value that an update left unchanged ("unchanged"). Replicated tables
 * have REPLICA IDENTITY FULL, so the update's old row carries it (the server writes the whole old row, with its
 * out-of-line values, to the WAL), and the update is applied as the whole row: the newest version wins whole even
 * where the row is missing or differs. Only an update without a whole old row (a peer whose table is not FULL yet)
 * is a partial update, which can only change a row that exists.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Tuple, TupleValue } from '../protocol/messages.ts';
import type { RemoteChange } from '../stream/remote-transaction.ts';
import type { RelationBinding } from './local-relation.ts';
import type { BatchKind } from './statement-builder.ts';

export interface RowOp {
  readonly kind: BatchKind;
  readonly binding: RelationBinding;
  readonly valuePositions: readonly number[];
  /** The values of one row, in the statement's parameter order. */
  readonly values: readonly (string | null)[];
  /** The primary key values joined, to keep one batch from touching a row twice. */
  readonly key: string;
  /** The primary key values (of the row written; of the row removed for a delete). */
  readonly keyValues: readonly (string | null)[];
  /**
   * Remote column positions whose values the update left unchanged (taken from the old row): the local value is
   * kept where it is the same, so that an out-of-line value is not written again.
   */
  readonly unchangedPositions: readonly number[];
}

/** No unchanged positions (one array, so that shapes compare it by identity). */
export const NO_POSITIONS: readonly number[] = [];

type RowChange = Extract<RemoteChange, { kind: 'insert' | 'update' | 'delete' }>;

export function rowOps(change: RowChange, binding: RelationBinding): RowOp[] {
  switch (change.kind) {
    case 'insert':
      return [upsert(binding, change.newTuple, 'i')];
    case 'update': {
      const { tuple: newTuple, unchanged } = wholeRow(change);
      const sent = sentPositions(newTuple);
      if (binding.deltaPositions.length > 0) {
        if (!change.oldTuple || change.oldTuple.length !== newTuple.length) {
          throw new PgmeshError(
            'SCHEMA_MISMATCH',
            `table ${binding.local.qualified} has delta columns, but the peer did not send the old row: set REPLICA IDENTITY FULL on it on every node (pgmesh tables delta does that)`,
            { context: { relation: binding.local.qualified } },
          );
        }
        if (keyChanged(binding, change.oldTuple, newTuple)) {
          // A changed primary key is the old row's delete and the new row's insert, as in other tables: one delta
          // update of the old key would lose whole (the new key with it) where the old key's row is newer.
          return [remove(binding, change.oldTuple), upsert(binding, newTuple, 'u', unchanged)];
        }
        const keyValues = keyOf(binding, change.oldTuple);
        const values = [
          ...keyValues,
          ...sent.map((p) => textOf(newTuple[p], binding, p)),
          ...binding.deltaPositions.map((p) => textOf(change.oldTuple?.[p], binding, p)),
        ];
        return [{ kind: 'delta_update', binding, valuePositions: sent, values, key: keyValues.join('\u0000'), keyValues, unchangedPositions: unchanged }];
      }
      if (sent.length < newTuple.length) {
        // Unchanged TOAST values were not sent, nor a whole old row: only an UPDATE of the existing row can keep them.
        const keyValues = keyOf(binding, change.oldTuple ?? newTuple);
        const values = [...keyValues, ...sent.map((p) => textOf(newTuple[p], binding, p))];
        return [{ kind: 'partial_update', binding, valuePositions: sent, values, key: keyValues.join('\u0000'), keyValues, unchangedPositions: NO_POSITIONS }];
      }
      const ops: RowOp[] = [];
      if (change.oldTuple && keyChanged(binding, change.oldTuple, newTuple)) {
        // A changed primary key is the old row's delete and the new row's write, both under the remote version.
        ops.push(remove(binding, change.oldTuple));
      }
      // An update carries the whole row, so it is applied as an upsert: if the row has not arrived yet (its insert
      // comes from a third node), it is created now and the late insert then loses to this newer version.
      ops.push(upsert(binding, newTuple, 'u', unchanged));
      return ops;
    }
    case 'delete':
      return [remove(binding, change.oldTuple)];
  }
}

/**
 * An update's new row with its unchanged out-of-line values taken from the old row, and their positions; the new row
 * as sent where nothing was left out, or where the old row is not whole (its table is not REPLICA IDENTITY FULL on
 * the peer: then the old row has the key columns only, or is absent).
 */
function wholeRow(change: Extract<RemoteChange, { kind: 'update' }>): { tuple: Tuple; unchanged: readonly number[] } {
  const { newTuple, oldTuple } = change;
  let unchanged: number[] | undefined;
  for (let i = 0; i < newTuple.length; i++) if (newTuple[i]?.kind === 'unchanged') (unchanged ??= []).push(i);
  if (!unchanged) return { tuple: newTuple, unchanged: NO_POSITIONS };
  if (change.relation.replicaIdentity !== 'f' || !oldTuple || oldTuple.length !== newTuple.length) return { tuple: newTuple, unchanged: NO_POSITIONS };
  if (unchanged.some((p) => oldTuple[p]?.kind === 'unchanged')) return { tuple: newTuple, unchanged: NO_POSITIONS };
  return { tuple: newTuple.map((v, i) => (v.kind === 'unchanged' ? (oldTuple[i] ?? v) : v)), unchanged };
}

/** The positions of the values an update sent (all but unchanged TOAST values). */
function sentPositions(tuple: Tuple): number[] {
  const positions: number[] = [];
  for (let i = 0; i < tuple.length; i++) if (tuple[i]?.kind !== 'unchanged') positions.push(i);
  return positions;
}

/** Every column position of a binding, one array per binding (so batches compare them by identity). */
const allPositions = new WeakMap<RelationBinding, readonly number[]>();

function upsert(binding: RelationBinding, tuple: Tuple, op: 'i' | 'u', unchanged: readonly number[] = NO_POSITIONS): RowOp {
  let positions = allPositions.get(binding);
  if (!positions) {
    positions = binding.columns.map((_, i) => i);
    allPositions.set(binding, positions);
  }
  const keyValues = keyOf(binding, tuple);
  const values: (string | null)[] = new Array(positions.length + 1);
  for (let p = 0; p < positions.length; p++) values[p] = textOf(tuple[p], binding, p);
  values[positions.length] = op;
  return {
    kind: 'upsert',
    binding,
    valuePositions: positions,
    values,
    key: keyValues.length === 1 ? String(keyValues[0]) : keyValues.join('\u0000'),
    keyValues,
    unchangedPositions: unchanged,
  };
}

function remove(binding: RelationBinding, oldTuple: Tuple): RowOp {
  const keyValues = keyOf(binding, oldTuple);
  return { kind: 'delete', binding, valuePositions: [], values: keyValues, key: keyValues.join('\u0000'), keyValues, unchangedPositions: NO_POSITIONS };
}

function keyOf(binding: RelationBinding, tuple: Tuple): (string | null)[] {
  return binding.keyPositions.map((p) => textOf(tuple[p], binding, p));
}

function keyChanged(binding: RelationBinding, oldTuple: Tuple, newTuple: Tuple): boolean {
  return binding.keyPositions.some((p) => {
    const a = oldTuple[p];
    const b = newTuple[p];
    return a?.kind !== b?.kind || (a?.kind === 'text' && b?.kind === 'text' && a.value !== b.value);
  });
}

export function textOf(value: TupleValue | undefined, binding: RelationBinding, position: number): string | null {
  if (value === undefined) {
    throw new PgmeshError('PROTOCOL', `tuple for ${binding.local.qualified} has no column ${position}`);
  }
  switch (value.kind) {
    case 'null':
      return null;
    case 'text':
      return value.value;
    case 'binary':
      throw new PgmeshError('PROTOCOL', `binary column value for ${binding.local.qualified}; pgmesh streams in text mode`);
    case 'unchanged':
      throw new PgmeshError(
        'PROTOCOL',
        `column ${binding.columns[position]?.name ?? position} of ${binding.local.qualified} was not sent (unchanged TOAST) where a value is needed`,
      );
  }
}

/** The change as an operator reads it in the exception table: column names to text values. */
export function describeChange(change: RowChange, binding: RelationBinding): Record<string, unknown> {
  const row = (tuple: Tuple | undefined) =>
    tuple
      ? Object.fromEntries(
          tuple.map((v, i): [string, unknown] => {
            const name = binding.remote.columns[i]?.name ?? String(i);
            if (v.kind === 'unchanged') return [name, { unchanged_toast: true }];
            return [name, v.kind === 'null' ? null : v.kind === 'text' ? v.value : `\\x${v.value.toString('hex')}`];
          }),
        )
      : null;
  const keyTuple = change.kind === 'insert' ? change.newTuple : change.kind === 'delete' ? change.oldTuple : (change.oldTuple ?? change.newTuple);
  return {
    kind: change.kind,
    relation: `${binding.local.schema}.${binding.local.name}`,
    key: Object.fromEntries(binding.keyPositions.map((p) => [binding.columns[p]?.name, textOfSafe(keyTuple[p])])),
    new: change.kind === 'delete' ? null : row(change.newTuple),
    old: change.kind === 'insert' ? null : row(change.oldTuple),
    // An update's old row is whole under REPLICA IDENTITY FULL ('f'): a replay takes the unchanged values from it.
    ...(change.kind === 'update' ? { replica_identity: binding.remote.replicaIdentity } : {}),
  };
}

function textOfSafe(value: TupleValue | undefined): string | null {
  return value?.kind === 'text' ? value.value : null;
}
