/**
 * Batching: consecutive row changes of one table and shape in a transaction become one multi-row statement (one
 * array per parameter), appended to the message being built (apply-session.ts). A fast-mode transaction's batches
 * take the fast path (a plain write that raises PM004 when a row is not the common case); a full-mode one's, or a
 * table's that missed lately, take the full statements (row lock, unique-key resolution, apply statement).
 */
import { formatLsn } from '../core/lsn.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { ApplySession } from './apply-session.ts';
import { rememberKeys, type Finish, type OpenTransaction } from './apply-types.ts';
import type { ConflictPolicy, RelationBinding } from './local-relation.ts';
import type { RowOp } from './row-ops.ts';
import type { StatementCatalog } from './statement-catalog.ts';
import { keyLockMode } from './key-lock.ts';

interface Batch {
  readonly first: RowOp;
  /** The rows, in order (turned into one array per parameter when the batch is sent). */
  readonly ops: RowOp[];
  /** The primary keys of the rows, once there are two (one row needs no set to compare against). */
  keys: Set<string> | undefined;
}

export class Batcher {
  private batch: Batch | undefined;

  constructor(
    private readonly session: ApplySession,
    private readonly statements: StatementCatalog,
    private readonly maxBatchRows: number,
    private readonly policyFor: (binding: RelationBinding, txn: OpenTransaction) => ConflictPolicy,
  ) {}

  /** Adds a row to the batch being built; returns a promise only when it must wait (the pipeline is full). */
  add(op: RowOp, txn: OpenTransaction): Promise<void> | undefined {
    if (op.kind !== 'delete' && op.binding.local.deferredUnique.length > 0) rememberKeys((txn.deferredKeys ??= new Map()), op);
    let batch = this.batch;
    let wait: Promise<void> | undefined;
    if (batch && (!sameShape(batch.first, op) || batch.ops.length >= this.maxBatchRows || touches(batch, op.key))) {
      wait = this.flush(txn);
      batch = undefined;
    }
    if (!batch) {
      this.batch = { first: op, ops: [op], keys: undefined };
      return wait;
    }
    batch.ops.push(op);
    batch.keys?.add(op.key);
    return wait;
  }

  /** Appends the batch's statements to the message; returns a promise only when it must wait. */
  flush(txn: OpenTransaction): Promise<void> | undefined {
    return this.send(txn, undefined).wait;
  }

  /**
   * The last batch of a transaction whose only statement it is: a fast-path statement then also finishes the
   * transaction (`finished`), with the finish statement's parameters.
   */
  flushLast(txn: OpenTransaction, finish: Finish | undefined): { wait: Promise<void> | undefined; finished: boolean } {
    return this.send(txn, finish);
  }

  /** Drops the batch being built (the transaction is applied again from its events). */
  clear(): void {
    this.batch = undefined;
  }

  private send(txn: OpenTransaction, finish: Finish | undefined): { wait: Promise<void> | undefined; finished: boolean } {
    const batch = this.batch;
    if (!batch) return { wait: undefined, finished: false };
    this.batch = undefined;
    const { session, statements } = this;
    const multiRow = batch.ops.length > 1;
    const params: (string | null)[] = multiRow ? batch.first.values.map((_, i) => textArrayLiteral(batch.ops.map((op) => op.values[i] ?? null))) : [...batch.first.values];
    txn.changes += batch.ops.length;
    const fast = txn.mode === 'full' ? undefined : statements.fastStatementFor(batch.first, multiRow, finish !== undefined);
    let finished = false;
    const policy = this.policyFor(batch.first.binding, txn);
    const mode = keyLockMode(txn.changes);
    if (fast) {
      // A fast insert decides that its key is free (no row, no tombstone, no claim): after the key's lock.
      if (batch.first.kind === 'upsert' && batch.first.values.at(-1) === 'i') {
        const lock = statements.keyLockFor(batch.first, multiRow, params, mode, false);
        session.append(statements.execute(lock.text, lock.params));
      }
      if (fast.timestamp) params.push(txn.commitTimeText);
      if (finish) {
        // A finishing statement takes the commit timestamp (pushed above) and then the end LSNs.
        params.push(finish.prev, finish.end);
        finished = true;
      }
      session.append(statements.execute(fast.text, params));
    } else {
      const lock = statements.keyLockFor(batch.first, multiRow, params, mode, true);
      session.append(statements.execute(lock.text, lock.params));
      params.push(txn.commitTimeText, formatLsn(txn.finalLsn));
      // Secondary unique keys first (after the rows are locked): the apply statement then leaves out what lost.
      const resolution = statements.resolutionFor(batch.first, multiRow, policy);
      if (resolution) session.append(statements.execute(resolution, params));
      session.append(statements.execute(statements.statementFor(batch.first, multiRow, policy), params));
    }
    const first = batch.first;
    if (fast && first.kind === 'upsert' && first.values[first.values.length - 1] === 'i' && first.binding.local.uniqueIndexes.length > 0 && policy === 'last_update_wins') {
      // Fast inserts into a table with unique indexes: a claim made while they waited (see buildUniqueClaimCheck;
      // claims decide only under last-update-wins). The full statements lock and re-check instead.
      const keys = first.keyValues.map((_, i) => textArrayLiteral(batch.ops.map((op) => op.keyValues[i] ?? null)));
      session.append(statements.execute(statements.claimCheckFor(first.binding), [...keys, txn.commitTimeText]));
    }
    const wait = session.full ? session.flushMessage(`changes of the transaction at ${formatLsn(txn.finalLsn)}`) : undefined;
    return { wait, finished };
  }
}

/** Whether the batch already has a row with this primary key (a second write of a row needs a statement of its own). */
function touches(batch: Batch, key: string): boolean {
  if (!batch.keys) {
    if (batch.ops.length === 1) return batch.first.key === key;
    batch.keys = new Set(batch.ops.map((op) => op.key));
  }
  return batch.keys.has(key);
}

/**
 * Rows that can share one statement: same table binding and kind, the same columns sent, and for upserts the same
 * operation (inserts and updates have separate fast paths).
 */
function sameShape(a: RowOp, b: RowOp): boolean {
  if (a.kind !== b.kind || a.binding !== b.binding) return false;
  if (a.kind === 'upsert' && a.values[a.values.length - 1] !== b.values[b.values.length - 1]) return false;
  return samePositions(a.valuePositions, b.valuePositions) && samePositions(a.unchangedPositions, b.unchangedPositions);
}

function samePositions(pa: readonly number[], pb: readonly number[]): boolean {
  if (pa === pb) return true;
  if (pa.length !== pb.length) return false;
  for (let i = 0; i < pa.length; i++) if (pa[i] !== pb[i]) return false;
  return true;
}
