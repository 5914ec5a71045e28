/**
 * Careful mode: a transaction that failed on its data before (ApplierOptions.carefulLsn) is applied one change at
 * a time, each in a savepoint, every reply awaited. A change that fails goes to pgmesh.exception under its table's
 * exception policy: skip_change keeps the rest of the transaction; skip_transaction keeps none of it (every change
 * is recorded); pause rolls back and pauses the peer (PM003). A failure that is not the change's own (a deadlock,
 * a lock timeout, a lost connection) is thrown: the transaction is retried or the stream restarts.
 */
import { PgmeshError, errorMessage, messageWithoutValues } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, type Lsn } from '../core/lsn.ts';
import { formatPgTimestamp, type PgTimestamp } from '../core/pg-time.ts';
import { SQLSTATE, isApplyRetrySqlState, isDataSqlState, isRetryableSqlState, sqlState } from '../core/sqlstate.ts';
import type { Sql } from '../pg/connect.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { RelationMessage } from '../protocol/messages.ts';
import type { RemoteChange } from '../stream/remote-transaction.ts';
import { isPgmeshMessage, type DdlApplyStatement } from '../ddl/ddl-apply.ts';
import { driftExceptionSql, droppedValues, reduceChange, type Reduction } from '../ddl/schema-drift.ts';
import type { ApplySession } from './apply-session.ts';
import { countConflicts, rememberKeys, type ApplyStats, type CommitRecord, type OpenTransaction } from './apply-types.ts';
import type { ConflictPolicy, RelationBinding } from './local-relation.ts';
import { describeChange, rowOps } from './row-ops.ts';
import type { StatementCatalog } from './statement-catalog.ts';
import { keyLockMode } from './key-lock.ts';
import { findUniqueConflict, recordUniqueConflict, type UniqueConflict } from './unique-conflicts.ts';

/** Cleared in the transaction that used the resume resolution, so it applies to that transaction only. */
const CLEAR_RESUME = 'UPDATE pgmesh.apply_progress SET resume_resolution = NULL WHERE peer = $1::text';

/** What careful mode needs of the applier. */
export interface CarefulHost {
  readonly session: ApplySession;
  readonly statements: StatementCatalog;
  readonly stats: ApplyStats;
  readonly finishText: string;
  /** End LSN of the last transaction sent (the finish statement's predecessor). */
  issuedEnd(): Lsn;
  bind(relation: RelationMessage): Promise<RelationBinding>;
  reductionOf(binding: RelationBinding): Reduction | undefined;
  policyFor(binding: RelationBinding, txn: OpenTransaction): ConflictPolicy;
  /** The transaction is the one that paused the peer, applied with the operator's resolution. */
  resuming(txn: OpenTransaction): boolean;
  driftContext(txn: OpenTransaction): { peer: string; node: string; remoteTs: string; remoteLsn: string };
  truncateSql(change: Extract<RemoteChange, { kind: 'truncate' }>, txn: OpenTransaction): Promise<string>;
  forgetRelations(): void;
  /** What a pgmesh message asks for, its signature checked (see Applier.pgmeshMessageStatement). */
  pgmeshMessageStatement(txn: OpenTransaction, change: Extract<RemoteChange, { kind: 'message' }>): Promise<DdlApplyStatement | undefined>;
  committed(record: CommitRecord): void;
}

export class CarefulApply {
  constructor(
    private readonly host: CarefulHost,
    private readonly options: { readonly peer: string; readonly localNode: string; readonly logger: Logger },
  ) {}

  private get sql(): Sql {
    return this.host.session.sql;
  }

  async begin(txn: OpenTransaction): Promise<void> {
    const sent = this.host.session.flushComplete();
    if (sent) await sent;
    await this.host.session.drain();
    if (this.host.session.failure) return;
    this.options.logger.warn({ peer: this.options.peer, transaction: formatLsn(txn.finalLsn) }, 'applying a failed transaction change by change');
    await this.sql.unsafe('BEGIN');
  }

  async change(txn: OpenTransaction, change: RemoteChange): Promise<void> {
    if (txn.abandon) {
      txn.seen.push({ change, binding: undefined });
      return;
    }
    let binding: RelationBinding | undefined;
    if (change.kind === 'insert' || change.kind === 'update' || change.kind === 'delete') {
      try {
        binding = await this.host.bind(change.relation);
      } catch (error) {
        if (!(error instanceof PgmeshError) || error.code !== 'UNKNOWN_TABLE') throw error;
        await this.sql.unsafe(driftExceptionSql(change, { missingTable: true }, this.host.driftContext(txn)));
        this.host.stats.exceptions++;
        return;
      }
    }
    txn.seen.push({ change, binding });
    await this.sql.unsafe('SAVEPOINT pgmesh_change');
    try {
      if (change.kind === 'message' && isPgmeshMessage(change.prefix)) {
        // pgmesh.apply_ddl keeps a failing statement in the exception table itself; a refused message is only recorded.
        const apply = await this.host.pgmeshMessageStatement(txn, change);
        if (apply) await this.sql.unsafe(apply.sql);
        if (apply && !apply.refused) {
          txn.ddl = true;
          this.host.forgetRelations();
        }
      } else if (change.kind === 'truncate') {
        await this.sql.unsafe(await this.host.truncateSql(change, txn));
      } else if (binding && change.kind !== 'message') {
        const reduction = this.host.reductionOf(binding);
        if (reduction && droppedValues(change, reduction) !== undefined) {
          await this.sql.unsafe(driftExceptionSql(change, { missingColumns: reduction.missing }, this.host.driftContext(txn)));
        }
        const ops = reduction ? rowOps(reduceChange(change, reduction), binding) : rowOps(change, binding);
        for (const op of ops) {
          const lock = this.host.statements.keyLockFor(op, false, op.values, keyLockMode(txn.changes + 1), true);
          await this.sql.unsafe(lock.text, lock.params as string[], { prepare: true });
          const params = [...op.values, txn.commitTimeText, formatLsn(txn.finalLsn)];
          const resolution = this.host.statements.resolutionFor(op, false, this.host.policyFor(binding, txn));
          if (resolution) countConflicts(txn, await this.sql.unsafe(resolution, params as string[], { prepare: true }));
          const result = await this.sql.unsafe(this.host.statements.statementFor(op, false, this.host.policyFor(binding, txn)), params as string[], { prepare: true });
          countConflicts(txn, result);
        }
        // Deferrable unique constraints are checked per change here, so that the change breaking one is the one kept.
        const written = new Map<string, { binding: RelationBinding; keys: (string | null)[][] }>();
        for (const op of ops) if (op.kind !== 'delete') rememberKeys(written, op);
        for (const { keys } of written.values()) {
          for (const index of binding.local.deferredUnique) {
            await this.sql.unsafe(this.host.statements.deferredCheckFor(binding, index), keys.map((column) => textArrayLiteral(column)) as string[], { prepare: true });
          }
        }
        txn.changes++;
      }
      await this.sql.unsafe('RELEASE SAVEPOINT pgmesh_change');
    } catch (error) {
      await this.sql.unsafe('ROLLBACK TO SAVEPOINT pgmesh_change');
      const code = sqlState(error);
      if (change.kind === 'truncate' && isDataSqlState(code)) {
        // A TRUNCATE that cannot be applied here (a foreign key from a table it does not cover): kept, and the rest goes on.
        await this.recordException(txn, change, undefined, error);
        return;
      }
      // A pause, or a failure that is not the change's own (a deadlock, a row changed under a lock): not an exception.
      if (code === SQLSTATE.conflictPause || isRetryableSqlState(code) || isApplyRetrySqlState(code) || !binding) throw error;
      // A secondary unique key taken here is a conflict as well (insert_exists, update_exists or
      // multiple_unique_conflicts): it is recorded and counted with the exception.
      const conflict =
        code === SQLSTATE.uniqueViolation && (change.kind === 'insert' || change.kind === 'update')
          ? await findUniqueConflict(this.sql, binding, change.kind, change.newTuple, change.kind === 'update' ? change.oldTuple : undefined, this.options.localNode)
          : undefined;
      const policy = binding.local.exceptionPolicy;
      if (policy === 'skip_change') {
        await this.recordException(txn, change, binding, error, conflict);
      } else {
        txn.abandon = { policy, error, change, conflict };
      }
    }
  }

  async commit(txn: OpenTransaction, endLsn: Lsn, commitTime: PgTimestamp): Promise<void> {
    const abandon = txn.abandon;
    if (abandon?.policy === 'pause') {
      await this.sql.unsafe('ROLLBACK');
      throw new PgmeshError(
        'APPLY_FAILED',
        `a change from ${this.options.peer} failed and the table's exception policy is pause: ${messageWithoutValues(abandon.error)}; repair the row, then run "pgmesh resume"`,
        { cause: abandon.error, context: { peer: this.options.peer, sqlstate: SQLSTATE.exceptionPause, transaction: formatLsn(txn.finalLsn) } },
      );
    }
    if (abandon?.policy === 'skip_transaction') {
      // None of the transaction is applied; every change of it is kept in the exception table.
      await this.sql.unsafe('ROLLBACK');
      await this.sql.unsafe('BEGIN');
      txn.conflicts = undefined;
      for (const { change, binding } of txn.seen) {
        const bound = binding ?? (change.kind === 'insert' || change.kind === 'update' || change.kind === 'delete' ? await this.host.bind(change.relation) : undefined);
        const failed = change === abandon.change;
        await this.recordException(txn, change, bound, failed ? abandon.error : undefined, failed ? abandon.conflict : undefined);
      }
    }
    if (this.host.resuming(txn)) await this.sql.unsafe(CLEAR_RESUME, [this.options.peer]);
    const prev = this.host.issuedEnd();
    await this.sql.unsafe('SET CONSTRAINTS ALL IMMEDIATE');
    await this.sql.unsafe(this.host.finishText, [formatLsn(prev), formatLsn(endLsn), formatPgTimestamp(commitTime)]);
    const result = await this.sql.unsafe('COMMIT');
    await this.sql.unsafe('SELECT pg_catalog.pg_replication_origin_xact_reset()');
    if ((result as unknown as { command?: string }).command !== 'COMMIT') {
      throw new PgmeshError('APPLY_FAILED', `careful apply of transaction ${formatLsn(txn.finalLsn)} from ${this.options.peer} did not commit`);
    }
    this.host.committed({ txn, endLsn, commitTime });
    this.options.logger.warn(
      { peer: this.options.peer, transaction: formatLsn(txn.finalLsn), exceptions: this.host.stats.exceptions },
      'failed transaction applied; failing changes are in pgmesh.exception',
    );
  }

  private async recordException(
    txn: OpenTransaction,
    change: RemoteChange,
    binding: RelationBinding | undefined,
    error: unknown,
    conflict?: UniqueConflict,
  ): Promise<void> {
    const described =
      binding && (change.kind === 'insert' || change.kind === 'update' || change.kind === 'delete')
        ? describeChange(change, binding)
        : change.kind === 'truncate'
          ? { kind: change.kind, relations: change.relations.map((r) => `${r.schema}.${r.name}`), cascade: change.cascade }
          : { kind: change.kind };
    const key = 'key' in described ? JSON.stringify(described.key) : null;
    await this.sql.unsafe(
      `INSERT INTO pgmesh.exception (peer, relation, change_kind, pkey, change, remote_ts, remote_commit_lsn, sqlstate, error, conflict_type)
       VALUES ($1::text, $2::text, $3::text, $4::text, $5::text::jsonb, $6::text::timestamptz, $7::text::pg_lsn, $8::text, $9::text, $10::text)`,
      [
        this.options.peer,
        binding ? `${binding.local.schema}.${binding.local.name}` : null,
        change.kind,
        key,
        JSON.stringify(described),
        txn.commitTimeText,
        formatLsn(txn.finalLsn),
        sqlState(error) ?? null,
        error === undefined ? 'not applied: another change of its transaction failed (exception policy skip_transaction)' : errorMessage(error),
        conflict?.type ?? null,
      ] as string[],
    );
    this.host.stats.exceptions++;
    // The failing change's table and key; its values are in pgmesh.exception (and at debug level in the logs).
    if (error !== undefined) {
      this.options.logger.warn(
        { peer: this.options.peer, table: binding ? `${binding.local.schema}.${binding.local.name}` : null, key, sqlstate: sqlState(error) ?? null, err: messageWithoutValues(error) },
        'a change could not be applied; it is kept in pgmesh.exception',
      );
    }
    if (conflict && binding) {
      const relation = `${binding.local.schema}.${binding.local.name}`;
      await recordUniqueConflict(this.sql, conflict, {
        peer: this.options.peer,
        relation,
        remoteTs: txn.commitTimeText,
        remoteCommitLsn: formatLsn(txn.finalLsn),
      });
      const key = `${conflict.type}\u0000${relation}`;
      const counts = (txn.conflicts ??= new Map());
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
  }
}
