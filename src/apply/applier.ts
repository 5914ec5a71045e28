/**
 * Applies one peer's stream of remote transactions to the local node, each as one local transaction in an apply
 * session that replays the peer's origin (design.md, "Data path" and "Applier"). A transaction is one simple-query
 * message (several for a large one) of statements prepared once per session:
 *
 *   BEGIN; EXECUTE pgmesh_3('{...}', ...); ...; EXECUTE pgmesh_1(<finish>); COMMIT
 *
 * The finish statement writes the progress row in the same commit as the changes (so a transaction whose changes
 * all lost still advances progress) and sets the origin LSN and the remote commit timestamp of the commit; it
 * raises PM001 unless the previous transaction's progress is visible. Messages of many transactions are pipelined
 * on the one connection without waiting for replies (apply-session.ts), so nothing is applied out of order.
 *
 * The parts, by job: apply-session.ts (the pipeline, the session's mode, what committed), batching.ts (rows into
 * multi-row statements), statement-catalog.ts (statements built and prepared once), relation-bindings.ts (local
 * tables), replay-buffer.ts (the events kept until their transaction committed), careful-apply.ts (one change at a
 * time, exceptions), apply-retry.ts (deadlocks, serialization failures and lock timeouts), apply-progress.ts.
 *
 * Each transaction is applied in one mode, chosen when it begins (TransactionMode): fast (batches take the fast path,
 * which raises PM004 when a row is not the common case), full (after a miss: conflict detection, resolution and
 * logging), careful (it failed on its data before), or skip (redelivered). After a miss or a retryable failure the
 * failed transaction and those behind it are applied again from the replay buffer without a new stream; other
 * failures drop the session, and the stream restarts from the durable progress.
 */
import { PgmeshError, errorMessage, messageWithoutValues } from '../core/errors.ts';
import { formatLsn, type Lsn } from '../core/lsn.ts';
import { formatPgTimestamp, type PgTimestamp } from '../core/pg-time.ts';
import { SQLSTATE, isApplyRetrySqlState, sqlState } from '../core/sqlstate.ts';
import { openSql, type Sql } from '../pg/connect.ts';
import { quoteLiteral } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { RemoteChange, StreamEvent } from '../stream/remote-transaction.ts';
import { isPgmeshMessage, pgmeshMessageStatement, type DdlApplyStatement } from '../ddl/ddl-apply.ts';
import { MessageKeys } from '../ddl/message-auth.ts';
import { droppedValues, driftExceptionSql, reduceChange } from '../ddl/schema-drift.ts';
import { readProgress, type Progress } from './apply-progress.ts';
import { ApplyRetries } from './apply-retry.ts';
import { ApplySession } from './apply-session.ts';
import type { ApplierOptions, ApplyStats, CommitRecord, EventSource, Finish, OpenTransaction, TransactionMode } from './apply-types.ts';
import { Batcher } from './batching.ts';
import { CarefulApply } from './careful-apply.ts';
import type { ConflictPolicy, RelationBinding } from './local-relation.ts';
import { RelationBindings } from './relation-bindings.ts';
import { ReplayBuffer } from './replay-buffer.ts';
import { rowOps, type RowOp } from './row-ops.ts';
import { StatementCatalog } from './statement-catalog.ts';
import { buildFinish, type BatchKind } from './statement-builder.ts';

export { durableProgress } from './apply-progress.ts';
export type { ApplierOptions, ApplyStats } from './apply-types.ts';

/**
 * The transaction that paused the peer, applied once with the operator's resolution instead of 'pause':
 * none (no resume), pending (the next transaction applied is that one), applying (it is, until it commits).
 */
type Resume = { readonly kind: 'none' } | { readonly kind: 'pending'; readonly resolution: ConflictPolicy } | { readonly kind: 'applying'; readonly resolution: ConflictPolicy; readonly finalLsn: Lsn };

export class Applier {
  readonly stats: ApplyStats = {
    appliedXacts: 0,
    appliedChanges: 0,
    skippedXacts: 0,
    exceptions: 0,
    fastPathMisses: 0,
    applyRetries: 0,
    lastCommitTime: undefined,
    lastAppliedAt: 0,
    conflicts: {},
    conflictsByTable: {},
  };
  /** End LSN of the last transaction whose COMMIT succeeded. */
  appliedEnd: Lsn;
  /** End LSN of the last transaction sent to the server (committed or still in the pipeline). */
  private issuedEnd: Lsn;
  /** The transaction applied with the full statements (the fast path missed in it). */
  private fullLsn: Lsn | undefined;
  private resume: Resume;
  private txn: OpenTransaction | undefined;
  private readonly session: ApplySession;
  private readonly statements: StatementCatalog;
  private readonly bindings: RelationBindings;
  private readonly batcher: Batcher;
  private readonly replay = new ReplayBuffer();
  private readonly careful: CarefulApply;
  /** The cluster key, to check the peer's pgmesh messages (src/ddl/message-auth.ts). */
  private readonly keys: MessageKeys;
  private readonly retries: ApplyRetries;
  /** The last statement of every applied transaction that does not finish in its only statement (see buildFinish). */
  private readonly finishText: string;
  /** interrupt() was called (the agent stops): an input, not a mode; no more retries in place. */
  private interrupted = false;
  private wakeFromBackoff: (() => void) | undefined;

  private constructor(
    sql: Sql,
    catalog: Sql,
    private readonly options: ApplierOptions,
    progress: Progress,
    peerOriginId: number,
  ) {
    this.fullLsn = options.fullLsn;
    this.resume = progress.resumeResolution ? { kind: 'pending', resolution: progress.resumeResolution } : { kind: 'none' };
    this.appliedEnd = progress.start;
    this.issuedEnd = progress.start;
    const ctx = { peer: options.peer, localNode: options.localNode, conflictWindowMs: options.conflictWindowMs, peerOriginId };
    this.finishText = buildFinish(ctx);
    this.session = new ApplySession(sql, {
      peer: options.peer,
      localNode: options.localNode,
      maxInflightStatements: options.maxInflightStatements,
      logger: options.logger,
      currentLsn: () => this.txn?.finalLsn,
      onCommitted: (record) => this.committed(record),
    });
    this.statements = new StatementCatalog(ctx, (name, text) => void this.session.issue(`PREPARE ${name} AS ${text}`, [], `preparing statement ${name}`));
    this.bindings = new RelationBindings(catalog, sql, this.statements, options);
    const policyFor = (binding: RelationBinding, txn: OpenTransaction): ConflictPolicy => this.policyFor(binding, txn);
    this.batcher = new Batcher(this.session, this.statements, options.maxBatchRows, policyFor);
    this.retries = new ApplyRetries({ peer: options.peer, catalog, limit: options.applyRetries, logger: options.logger });
    this.keys = new MessageKeys(catalog);
    this.careful = new CarefulApply(
      {
        session: this.session,
        statements: this.statements,
        stats: this.stats,
        finishText: this.finishText,
        issuedEnd: () => this.issuedEnd,
        bind: (relation) => this.bind(relation),
        reductionOf: (binding) => this.bindings.reductionOf(binding),
        policyFor,
        resuming: (txn) => this.resuming(txn),
        driftContext: (txn) => this.driftContext(txn),
        truncateSql: (change, txn) => this.truncateSql(change, txn),
        forgetRelations: () => this.forgetRelations(),
        pgmeshMessageStatement: (txn, change) => this.pgmeshMessageStatement(txn, change),
        committed: (record) => {
          this.issuedEnd = record.endLsn;
          this.committed(record);
        },
      },
      options,
    );
  }

  /**
   * Opens the apply session on the local node and reads where the peer's stream must resume.
   * @param catalog a separate local connection for catalog look-ups (not the pipelined session)
   */
  static async open(localDsn: string, catalog: Sql, options: ApplierOptions): Promise<Applier> {
    let onClose = (): void => undefined;
    const sql = openSql(localDsn, {
      onClose: () => onClose(),
      node: options.localNode,
      applicationName: `pgmesh apply ${options.peer}`,
      logger: options.logger,
      max: 1,
      // Replica mode: user triggers and rules do not fire and foreign keys are not re-checked, as for native apply.
      // Asynchronous commit, as native apply: what is acknowledged to the peer is only what is flushed.
      // A lock wait ends after lock_timeout, and the transaction is retried (apply-retry.ts): a local session left
      // idle in a transaction cannot hold the stream up without a sign.
      // Every statement reaches rows by a key, with generic plans kept for the session: sequential scans off, so a
      // plan made while a table was empty (or its statistics stale) takes the index, not a scan of the grown table
      // per row or per batch (docs/design.md, "Apply cost does not grow with the tables").
      parameters: {
        session_replication_role: 'replica',
        synchronous_commit: 'off',
        plan_cache_mode: 'force_generic_plan',
        enable_seqscan: 'off',
        lock_timeout: `${Math.round(options.lockTimeoutMs)}ms`,
      },
      pipelined: true,
    });
    // The session is the pool of one connection itself, not a reserved connection: postgres.js 3.4 sends the queries
    // of a reserved connection one round trip at a time once its pipeline has filled, while a pool keeps pipelining.
    // Idle and lifetime limits are off, so the connection is not replaced; if it were (a network error), the new one
    // would have no origin session and pg_replication_origin_xact_setup in the finish statement would refuse to commit.
    try {
      await sql.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup(${quoteLiteral(options.origin)})`);
      const progress = await readProgress(sql, options);
      // Where the finish statement's predecessor check starts (see buildFinish).
      await sql.unsafe(`SELECT pg_catalog.set_config('pgmesh.applied_end', ${quoteLiteral(formatLsn(progress.start))}, false)`);
      const origins = await sql.unsafe<{ id: number }[]>(`SELECT roident::int AS id FROM pg_catalog.pg_replication_origin WHERE roname = ${quoteLiteral(options.origin)}`);
      const originId = origins[0]?.id;
      if (originId === undefined) throw new PgmeshError('NOT_INITIALIZED', `replication origin ${options.origin} is missing on ${options.localNode}; run "pgmesh cluster create"`);
      const applier = new Applier(sql, catalog, options, progress, originId);
      onClose = () => applier.session.connectionClosed();
      return applier;
    } catch (error) {
      await sql.end({ timeout: 1 }).catch(() => undefined);
      if (sqlState(error) === '55000' || /already active|is already in use/i.test(errorMessage(error))) {
        throw new PgmeshError(
          'APPLY_FAILED',
          `another process is already applying changes from ${options.peer} on ${options.localNode} (origin ${options.origin} is in use); stop the other pgmesh agent for ${options.localNode}`,
          { cause: error, context: { peer: options.peer } },
        );
      }
      throw error;
    }
  }

  /** Applies events until the source ends (null) or something fails; then waits for every pipelined statement. */
  async run(source: EventSource): Promise<void> {
    const session = this.session;
    // The source's next batch, asked for and not yet handed over: a failure can wake the loop before it arrives,
    // and the loop may go on (a fast-path miss applied again in place), so the same request is awaited again, never
    // a second one (the batch of the first would be lost).
    let pending: Promise<StreamEvent[] | null> | undefined;
    try {
      for (;;) {
        const next = pending ?? source.next();
        pending = next;
        // A failed statement must end the session even when the peer sends nothing more (an idle stream).
        const events = await new Promise<StreamEvent[] | null | 'failed'>((resolve, reject) => {
          session.wakeOnFailure = () => resolve('failed');
          next.then(resolve, reject);
        });
        session.wakeOnFailure = undefined;
        if (events === 'failed') {
          // A fast-path miss can come back while the stream is idle: apply again in place, as handleAll does.
          const replay = await this.takeReplay();
          if (!replay) break;
          await this.handleAll(replay);
          if (session.failure) break;
          continue;
        }
        pending = undefined;
        if (events === null) break;
        await this.handleAll(events);
        if (session.failure) break;
      }
    } catch (error) {
      session.fail({ error, what: 'the stream', finalLsn: this.txn?.finalLsn });
    } finally {
      if (session.mode === 'applying') {
        const sent = session.flushComplete();
        if (sent) await sent.catch(() => undefined);
      }
      await session.drain();
      await session.settle(() => this.appliedEnd);
    }
    this.throwIfFailed();
  }

  /** Handles events in order; after a fast-path miss or a retryable failure, replays the kept ones first. */
  private async handleAll(events: StreamEvent[]): Promise<void> {
    const session = this.session;
    let queue = events;
    let i = 0;
    while (i < queue.length) {
      const event = queue[i++] as StreamEvent;
      this.replay.retain(event);
      try {
        const wait = this.handle(event);
        if (wait) await wait;
      } catch (error) {
        // Thrown by careful mode, a look-up or a decision here (pipelined statements report through the session).
        session.fail({ error, what: 'the stream', finalLsn: this.txn?.finalLsn });
      }
      if (session.failure) {
        const replay = await this.takeReplay();
        if (!replay) return;
        queue = [...replay, ...queue.slice(i)];
        i = 0;
      }
      if (i === queue.length) {
        // The batch at hand is handled: send what is complete rather than wait for the next one.
        const sent = session.flushComplete();
        if (sent) await sent;
        if (session.failure) {
          const replay = await this.takeReplay();
          if (!replay) return;
          queue = replay;
          i = 0;
        }
      }
    }
  }

  /**
   * After a fast-path miss, or a deadlock, serialization failure or lock timeout (apply-retry.ts): waits for every
   * message in flight (all failed: the session is in the aborted transaction), rolls back, and returns the events
   * to handle again from the failed transaction on. A missed transaction is then applied with the full
   * statements; a retried one as before, after a backoff. Undefined when the failure is another one, the events
   * were not all kept, or the transaction was retried too often: then the stream restarts.
   */
  private async takeReplay(): Promise<StreamEvent[] | undefined> {
    const session = this.session;
    const failure = session.failure;
    const code = failure ? sqlState(failure.error) : undefined;
    const retry = isApplyRetrySqlState(code);
    if (!failure || (code !== SQLSTATE.fastPathMiss && code !== SQLSTATE.uniqueViolation && !retry)) return undefined;
    if (retry && this.interrupted) return undefined;
    if (session.mode !== 'failed') return undefined;
    session.recover();
    await session.drain();
    const events = await this.replayable(failure, code, retry);
    if (!events) {
      session.giveUp();
      return undefined;
    }
    this.txn = undefined;
    this.batcher.clear();
    session.resume();
    this.issuedEnd = this.appliedEnd;
    if (retry) return events;
    this.fullLsn = events[0]?.kind === 'begin' ? events[0].finalLsn : this.fullLsn;
    this.stats.fastPathMisses++;
    this.options.logger.debug({ peer: this.options.peer, transaction: formatLsn(this.fullLsn ?? 0n), events: events.length }, 'fast path missed; applying again');
    return events;
  }

  /** The recovering part of takeReplay: settles, decides, waits out the backoff; the events, or undefined. */
  private async replayable(failure: NonNullable<ApplySession['failure']>, code: string | undefined, retry: boolean): Promise<StreamEvent[] | undefined> {
    const session = this.session;
    if (session.closed) return undefined;
    await session.settle(() => this.appliedEnd);
    if (session.closed) return undefined;
    const settled = session.failure ?? failure;
    // A unique violation on the fast path is a miss too (a row inserted by another session after the check); on
    // the full statements, or in careful mode, it is the change's own problem, for careful mode.
    if (code === SQLSTATE.uniqueViolation && (settled.finalLsn === this.fullLsn || settled.finalLsn === this.options.carefulLsn)) return undefined;
    if (settled.finalLsn === undefined || !this.replay.holdsFrom(settled.finalLsn)) return undefined;
    if (retry) {
      const delayMs = this.retries.next(settled.finalLsn, failure.error);
      if (delayMs === undefined) return undefined;
      this.stats.applyRetries++;
      await this.backoff(delayMs);
      if (this.interrupted || session.closed) return undefined;
    } else {
      const table = Number((failure.error as { detail?: string }).detail);
      if (Number.isInteger(table)) this.statements.markSlow(table);
    }
    try {
      // A PREPARE in a message that failed before reaching it did not run.
      const names = await session.sql.unsafe<{ name: string }[]>(`SELECT name FROM pg_catalog.pg_prepared_statements WHERE name LIKE 'pgmesh\\_%'`);
      this.statements.keepPrepared(new Set(names.map((r) => r.name)));
    } catch (error) {
      session.fail({ error, what: 'the look-up of prepared statements after a failure', finalLsn: settled.finalLsn });
      return undefined;
    }
    return this.replay.takeAll();
  }

  private backoff(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeFromBackoff = undefined;
        resolve();
      }, ms);
      this.wakeFromBackoff = () => {
        clearTimeout(timer);
        this.wakeFromBackoff = undefined;
        resolve();
      };
    });
  }

  /** The agent is stopping: no more retries in place (the stream is closing; what is left is applied next time). */
  interrupt(): void {
    this.interrupted = true;
    this.wakeFromBackoff?.();
  }

  private throwIfFailed(): void {
    const failure = this.session.failure;
    if (!failure) return;
    const cause = failure.error;
    // Our own errors already say what failed and carry their context (careful mode's exception-policy pause has
    // sqlstate PM003 there, which the peer replicator acts on): wrapping them would lose it.
    if (cause instanceof PgmeshError) throw cause;
    // The row's values (the server's DETAIL) stay in the cause, for debug-level logs only: this message reaches
    // error-level logs and the status.
    throw new PgmeshError('APPLY_FAILED', `applying ${failure.what} from ${this.options.peer} on ${this.options.localNode} failed: ${messageWithoutValues(cause)}`, {
      cause,
      context: {
        peer: this.options.peer,
        // A unique violation on the fast path is a miss (see takeReplay): the transaction needs the full
        // statements, not careful mode.
        sqlstate: sqlState(cause) === SQLSTATE.uniqueViolation && failure.finalLsn !== undefined && failure.finalLsn !== this.fullLsn ? SQLSTATE.fastPathMiss : sqlState(cause),
        applied: formatLsn(this.appliedEnd),
        transaction: failure.finalLsn === undefined ? undefined : formatLsn(failure.finalLsn),
      },
    });
  }

  /** The mode of a transaction that begins at finalLsn (see TransactionMode). */
  private modeOf(finalLsn: Lsn): TransactionMode {
    // A redelivered transaction (its commit record lies before what is applied) is skipped whole.
    if (finalLsn < this.issuedEnd) return 'skip';
    if (this.options.carefulLsn === finalLsn) return 'careful';
    return this.fullLsn === finalLsn ? 'full' : 'fast';
  }

  private handle(event: StreamEvent): Promise<void> | undefined {
    switch (event.kind) {
      case 'begin': {
        const mode = this.modeOf(event.finalLsn);
        if (mode !== 'skip' && this.resume.kind === 'pending') this.resume = { kind: 'applying', resolution: this.resume.resolution, finalLsn: event.finalLsn };
        const txn: OpenTransaction = {
          xid: event.xid,
          finalLsn: event.finalLsn,
          commitTime: event.commitTime,
          commitTimeText: formatPgTimestamp(event.commitTime),
          mode,
          changes: 0,
          sent: false,
          conflicts: undefined,
          abandon: undefined,
          seen: [],
          deferredKeys: undefined,
          ddl: false,
        };
        this.txn = txn;
        if (mode === 'skip') return undefined;
        if (mode === 'careful') return this.careful.begin(txn);
        // No BEGIN yet: a transaction sent alone in one message is an implicit transaction block (the server commits
        // it at the end of the message, or rolls all of it back); otherwise it gets BEGIN ... COMMIT when sent.
        this.session.beginSegment(txn);
        return undefined;
      }
      case 'change': {
        const txn = this.txn;
        if (!txn) throw new PgmeshError('PROTOCOL', 'change outside a transaction');
        if (txn.mode === 'skip') return undefined;
        return txn.mode === 'careful' ? this.careful.change(txn, event.change) : this.change(txn, event.change);
      }
      case 'commit':
        return this.commit(event.endLsn, event.commitTime);
    }
  }

  /** Returns a promise only when it must wait (a relation to look up, or the pipeline is full). */
  private change(txn: OpenTransaction, change: RemoteChange): Promise<void> | undefined {
    switch (change.kind) {
      case 'insert':
      case 'update':
      case 'delete': {
        const fresh = this.bindings.fresh(change.relation);
        if (fresh) return this.addRows(txn, this.opsOf(txn, change, fresh));
        return this.bind(change.relation).then(
          (binding) => this.addRows(txn, this.opsOf(txn, change, binding)),
          (error: unknown) => this.missingTable(txn, change, error),
        );
      }
      case 'truncate':
        return this.truncate(txn, change);
      case 'message':
        if (isPgmeshMessage(change.prefix)) return this.pgmeshMessage(txn, change);
        this.options.logger.debug({ peer: this.options.peer, prefix: change.prefix }, 'logical message ignored');
        return undefined;
    }
  }

  private bind(relation: Parameters<RelationBindings['bind']>[0]): Promise<RelationBinding> {
    return this.bindings.bind(relation, this.txn?.ddl === true);
  }

  /**
   * What a pgmesh message of the peer asks for, once its signature is checked (src/ddl/ddl-apply.ts): the DDL to run,
   * the exception of a refused message, or nothing (a marker). Shared with careful mode.
   */
  async pgmeshMessageStatement(txn: OpenTransaction, change: Extract<RemoteChange, { kind: 'message' }>): Promise<DdlApplyStatement | undefined> {
    const ctx = { peer: this.options.peer, xid: txn.xid, remoteTs: txn.commitTimeText, remoteLsn: formatLsn(txn.finalLsn) };
    const apply = await pgmeshMessageStatement(change.prefix, change.content, ctx, this.keys);
    if (apply?.refused) {
      // Never the content: what it says is the sender's, and the exception keeps it.
      this.options.logger.warn({ peer: this.options.peer, prefix: change.prefix, transaction: formatLsn(txn.finalLsn), problem: apply.problem }, 'pgmesh message refused, not applied; kept in pgmesh.exception');
      this.stats.exceptions++;
    } else if (apply?.problem !== undefined) {
      this.options.logger.warn({ peer: this.options.peer, problem: apply.problem }, 'DDL message cannot be applied; kept in pgmesh.exception');
    }
    return apply;
  }

  /**
   * A pgmesh message of the peer: a DDL statement (src/ddl) runs at its place among the transaction's row changes.
   * Later changes of the transaction may need what it created or changed, which only this session sees before the
   * commit: so what is built is sent, the replies awaited, and the transaction's relations are read again, in the
   * session. A refused message's exception is recorded at the same place.
   */
  private async pgmeshMessage(txn: OpenTransaction, change: Extract<RemoteChange, { kind: 'message' }>): Promise<void> {
    const apply = await this.pgmeshMessageStatement(txn, change);
    if (apply === undefined) return;
    const wait = this.batcher.flush(txn);
    if (wait) await wait;
    this.session.append(apply.sql);
    if (apply.refused) return;
    txn.ddl = true;
    this.forgetRelations();
    const sent = this.session.flushMessage(`the DDL of the transaction at ${formatLsn(txn.finalLsn)} (${apply.statement ?? apply.problem})`);
    if (sent) await sent;
    await this.session.drain();
  }

  /**
   * The row operations of a change. A change written on the peer before a column was renamed or dropped here is
   * applied without that column (see src/ddl/schema-drift.ts), and kept in the exception table if a value is lost.
   */
  private opsOf(txn: OpenTransaction, change: Extract<RemoteChange, { kind: 'insert' | 'update' | 'delete' }>, binding: RelationBinding): RowOp[] {
    const reduction = this.bindings.reductionOf(binding);
    if (!reduction) return rowOps(change, binding);
    if (droppedValues(change, reduction) !== undefined) {
      this.session.append(driftExceptionSql(change, { missingColumns: reduction.missing }, this.driftContext(txn)));
      this.stats.exceptions++;
    }
    return rowOps(reduceChange(change, reduction), binding);
  }

  /** A change of a table that does not exist here (dropped here by DDL): kept in the exception table, not applied. */
  private async missingTable(txn: OpenTransaction, change: Extract<RemoteChange, { kind: 'insert' | 'update' | 'delete' }>, error: unknown): Promise<void> {
    if (!(error instanceof PgmeshError) || error.code !== 'UNKNOWN_TABLE') throw error;
    const wait = this.batcher.flush(txn);
    if (wait) await wait;
    this.session.append(driftExceptionSql(change, { missingTable: true }, this.driftContext(txn)));
    this.stats.exceptions++;
  }

  private driftContext(txn: OpenTransaction): { peer: string; node: string; remoteTs: string; remoteLsn: string } {
    return { peer: this.options.peer, node: this.options.localNode, remoteTs: txn.commitTimeText, remoteLsn: formatLsn(txn.finalLsn) };
  }

  /** Table bindings and the statements built from them, after DDL: they are read and built again. */
  private forgetRelations(): void {
    this.bindings.forget();
    this.statements.forgetAll();
  }

  /** Returns a promise only when it must wait (as handle does: most changes do not, and need no await). */
  private addRows(txn: OpenTransaction, ops: readonly RowOp[]): Promise<void> | undefined {
    for (let i = 0; i < ops.length; i++) {
      const wait = this.batcher.add(ops[i] as RowOp, txn);
      if (wait) return i + 1 < ops.length ? wait.then(() => this.addRows(txn, ops.slice(i + 1))) : wait;
    }
    return undefined;
  }

  private async truncate(txn: OpenTransaction, change: Extract<RemoteChange, { kind: 'truncate' }>): Promise<void> {
    const wait = this.batcher.flush(txn);
    if (wait) await wait;
    this.session.append(await this.truncateSql(change, txn));
  }

  /** A peer's TRUNCATE, applied by version (see src/cluster/truncate-sql.ts): rows written after it here stay. */
  private async truncateSql(change: Extract<RemoteChange, { kind: 'truncate' }>, txn: OpenTransaction): Promise<string> {
    const tables = await Promise.all(change.relations.map((r) => this.bind(r)));
    const oids = tables.map((t) => `${t.local.oid}`).join(', ');
    return (
      `SELECT pgmesh.apply_truncate(ARRAY[${oids}]::oid[], ${quoteLiteral(txn.commitTimeText)}::timestamptz, ` +
      `${quoteLiteral(this.options.peer)}, ${quoteLiteral(this.options.localNode)})`
    );
  }

  /** The transaction is the one that paused the peer, applied with the operator's resolution. */
  private resuming(txn: OpenTransaction): boolean {
    return this.resume.kind === 'applying' && this.resume.finalLsn === txn.finalLsn;
  }

  /** The table's conflict policy, or the resume resolution for the transaction that paused the peer. */
  private policyFor(binding: RelationBinding, txn: OpenTransaction): ConflictPolicy {
    const policy = binding.local.conflictPolicy;
    return policy === 'pause' && this.resume.kind === 'applying' && this.resume.finalLsn === txn.finalLsn ? this.resume.resolution : policy;
  }

  /** Returns a promise only when it must wait (careful mode, or the pipeline is full): most transactions do not. */
  private commit(endLsn: Lsn, commitTime: PgTimestamp): Promise<void> | undefined {
    const txn = this.txn;
    if (!txn) throw new PgmeshError('PROTOCOL', 'commit outside a transaction');
    if (txn.mode === 'skip') {
      this.txn = undefined;
      this.stats.skippedXacts++;
      return undefined;
    }
    if (txn.mode === 'careful') {
      return this.careful.commit(txn, endLsn, commitTime).then(() => {
        this.txn = undefined;
      });
    }
    const prev = this.issuedEnd;
    this.issuedEnd = endLsn;
    const ts = commitTime === txn.commitTime ? txn.commitTimeText : formatPgTimestamp(commitTime);
    const finish: Finish = { prev: formatLsn(prev), end: formatLsn(endLsn), ts };
    // A transaction of one statement finishes in it (when that statement takes the fast path).
    const alone = this.session.nothingOf(txn) && txn.deferredKeys === undefined && !this.resuming(txn);
    const { wait, finished } = this.batcher.flushLast(txn, alone ? finish : undefined);
    const record: CommitRecord = { txn, endLsn, commitTime };
    return wait ? wait.then(() => this.endTransaction(record, finish, finished)) : this.endTransaction(record, finish, finished);
  }

  /** The rest of commit(), once the last batch is in the message: checks, finish, COMMIT. */
  private endTransaction(record: CommitRecord, finish: Finish, finished: boolean): Promise<void> | undefined {
    const { txn } = record;
    // this.txn stays set until COMMIT is issued: a failure of the checks, the finish statement or COMMIT is then
    // attributed to this transaction, so that a data error found there gets the transaction applied carefully.
    for (const { binding, keys } of txn.deferredKeys?.values() ?? []) {
      for (const index of binding.local.deferredUnique) {
        this.session.append(this.statements.execute(this.statements.deferredCheckFor(binding, index), keys.map((column) => textArrayLiteral(column))));
      }
    }
    if (this.resuming(txn)) this.session.append(`UPDATE pgmesh.apply_progress SET resume_resolution = NULL WHERE peer = ${quoteLiteral(this.options.peer)}`);
    if (!finished) this.session.append(this.statements.execute(this.finishText, [finish.prev, finish.end, finish.ts]));
    const wait = this.session.endSegment(record, `transactions up to the one at ${formatLsn(txn.finalLsn)}`);
    this.txn = undefined;
    // The next transactions read their tables on the catalog connection: after DDL, only once this one committed.
    if (txn.ddl) return wait ? wait.then(() => this.session.drain()) : this.session.drain();
    return wait;
  }

  private committed({ txn, endLsn, commitTime }: CommitRecord): void {
    if (this.resuming(txn)) this.resume = { kind: 'none' };
    this.retries.committed(txn.finalLsn);
    this.appliedEnd = endLsn;
    this.replay.committed(txn.finalLsn);
    this.stats.appliedXacts++;
    this.stats.appliedChanges += txn.changes;
    this.stats.lastCommitTime = commitTime;
    this.stats.lastAppliedAt = Date.now();
    for (const [key, n] of txn.conflicts ?? []) {
      const [kind, table] = key.split('\u0000') as [string, string];
      this.stats.conflicts[kind] = (this.stats.conflicts[kind] ?? 0) + n;
      this.stats.conflictsByTable[table] = (this.stats.conflictsByTable[table] ?? 0) + n;
    }
  }

  async close(): Promise<void> {
    this.interrupt();
    await this.session.close();
    await this.retries.flushed();
  }
}

export type { BatchKind };
