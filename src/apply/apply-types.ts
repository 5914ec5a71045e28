/**
 * The data the parts of the applier share (applier.ts, apply-session.ts, batching.ts, careful-apply.ts): options,
 * statistics, the transaction being applied and what is known of the ones sent.
 */
import type { Lsn } from '../core/lsn.ts';
import type { Logger } from '../core/logger.ts';
import type { PgTimestamp } from '../core/pg-time.ts';
import type { RemoteChange, StreamEvent } from '../stream/remote-transaction.ts';
import type { ExceptionPolicy, RelationBinding } from './local-relation.ts';
import type { RowOp } from './row-ops.ts';
import type { UniqueConflict } from './unique-conflicts.ts';

export interface ApplierOptions {
  readonly peer: string;
  readonly localNode: string;
  readonly origin: string;
  readonly maxBatchRows: number;
  readonly maxInflightStatements: number;
  readonly conflictWindowMs: number;
  /** The apply session's lock_timeout (0: none; see AgentTuning.lockTimeoutMs). */
  readonly lockTimeoutMs: number;
  /** Retries in place of a transaction that failed on a deadlock, serialization failure or lock timeout (see apply-retry.ts). */
  readonly applyRetries: number;
  /** Apply this transaction (by its commit LSN) in careful mode: it failed before on its data. */
  readonly carefulLsn?: Lsn | undefined;
  /** Apply this transaction with the full statements: the fast path missed in it and it could not be replayed. */
  readonly fullLsn?: Lsn | undefined;
  readonly logger: Logger;
  /** How long a table or columns a peer sends and this node lacks are waited for (see awaitSchema); by table and columns, when first seen. */
  readonly schemaWait?: { readonly firstSeen: Map<string, number>; readonly waitMs: number };
}

export interface ApplyStats {
  appliedXacts: number;
  appliedChanges: number;
  skippedXacts: number;
  exceptions: number;
  /** Transactions applied again with the full statements after the fast path met a conflict. */
  fastPathMisses: number;
  /** Transactions applied again in place after a deadlock, a serialization failure or a lock timeout. */
  applyRetries: number;
  lastCommitTime: PgTimestamp | undefined;
  lastAppliedAt: number;
  /** Conflicts by type, of committed transactions. */
  readonly conflicts: Record<string, number>;
  /** Conflicts by table. */
  readonly conflictsByTable: Record<string, number>;
}

export interface EventSource {
  next(): Promise<StreamEvent[] | null>;
}

/**
 * How a transaction is applied, chosen once when it begins (design.md, "Applier"):
 * - skip: its end LSN is not past what was already sent or applied (redelivered after a restart): nothing is done;
 * - careful: it failed on its data before (ApplierOptions.carefulLsn): one change at a time, each in a savepoint;
 * - full: the fast path missed in it (or it could not be replayed in place): every batch with the full statements;
 * - fast: the common case: batches take the fast path (a table that missed lately takes the full statements).
 */
export type TransactionMode = 'skip' | 'careful' | 'full' | 'fast';

export interface Batch {
  readonly first: RowOp;
  /** The rows, in order (turned into one array per parameter when the batch is sent). */
  readonly ops: RowOp[];
  /** The primary keys of the rows, once there are two (one row needs no set to compare against). */
  keys: Set<string> | undefined;
}

export interface OpenTransaction {
  /** The peer's xid of the transaction (its BEGIN's): pgmesh's messages are signed for it. */
  readonly xid: number;
  readonly finalLsn: Lsn;
  readonly commitTime: PgTimestamp;
  /** commitTime as statements take it (formatted once: every batch and the finish use it). */
  readonly commitTimeText: string;
  /** How it is applied, chosen when it begins (see TransactionMode). */
  readonly mode: TransactionMode;
  /** Row changes, counted into the stats when the transaction commits. */
  changes: number;
  /** A message of it was sent (with BEGIN): it is an explicit transaction block, ended by COMMIT. */
  sent: boolean;
  /** Conflict counts of this transaction, added to the stats when it commits (created by the first conflict). */
  conflicts: Map<string, number> | undefined;
  /** Careful mode: the exception policy decided by a failed change ('skip_transaction' or 'pause'). */
  abandon: { policy: ExceptionPolicy; error: unknown; change: RemoteChange; conflict: UniqueConflict | undefined } | undefined;
  /** Careful mode: the row changes seen, for skip_transaction. */
  readonly seen: { change: RemoteChange; binding: RelationBinding | undefined }[];
  /** Keys written into tables with deferrable unique constraints, by table: checked before the commit (created by the first). */
  deferredKeys: Map<string, { binding: RelationBinding; keys: (string | null)[][] }> | undefined;
  /** A DDL statement of the peer ran in it: its later changes read their tables in the apply session (see ddl). */
  ddl: boolean;
}

/** The finish statement's parameters (see buildFinish): previous and this transaction's end LSN, commit timestamp. */
export interface Finish {
  readonly prev: string;
  readonly end: string;
  readonly ts: string;
}

export interface CommitRecord {
  readonly txn: OpenTransaction;
  readonly endLsn: Lsn;
  readonly commitTime: PgTimestamp;
}

export interface Failure {
  readonly error: unknown;
  readonly what: string;
  readonly finalLsn: Lsn | undefined;
}

/** Remembers the keys a row op writes into a table with deferrable unique constraints (checked before the commit). */
export function rememberKeys(into: Map<string, { binding: RelationBinding; keys: (string | null)[][] }>, op: RowOp): void {
  const table = op.binding.local.qualified;
  let entry = into.get(table);
  if (!entry) {
    entry = { binding: op.binding, keys: op.keyValues.map(() => []) };
    into.set(table, entry);
  }
  op.keyValues.forEach((value, i) => entry.keys[i]?.push(value));
}

/** Adds up the summary rows of full statements (conflict, rel, n), in the results of a message or a statement. */
export function countConflicts(txn: OpenTransaction, result: unknown): void {
  if (!Array.isArray(result)) return;
  for (const item of result as unknown[]) {
    if (Array.isArray(item)) {
      countConflicts(txn, item);
      continue;
    }
    const row = item as { conflict?: string; rel?: string; n?: number } | null;
    if (!row?.conflict) continue;
    const key = `${row.conflict}\u0000${row.rel ?? '?'}`;
    const counts = (txn.conflicts ??= new Map());
    counts.set(key, (counts.get(key) ?? 0) + Number(row.n ?? 0));
  }
}

