/**
 * Applies one peer's stream of remote transactions to the local node, each as one local transaction in an apply
 * session that replays the peer's origin (design.md, "Data path"). A transaction is one simple-query message
 * (several for a large one) of statements prepared once per session:
 *
 *   BEGIN; EXECUTE pgmesh_3('{...}', ...); ...; EXECUTE pgmesh_1(<finish>); COMMIT
 *
 * The finish statement writes the progress row in the same commit as the changes (so a transaction whose changes
 * all lost still advances progress) and sets the origin LSN and the remote commit timestamp of the commit; it
 * raises PM001 unless the previous transaction's progress is visible. Messages of many transactions are pipelined
 * on the one connection without waiting for replies. When a statement fails, the server skips the rest of its
 * message, COMMIT included, and the session stays in the aborted transaction: every message behind it fails too,
 * so nothing is applied out of order.
 *
 * Each batch of changes first takes the fast path (buildFastStatement: a plain write for the common case, no
 * conflict), which raises PM004 when a row is not the common case. Then the aborted transaction and those behind
 * it are applied again from the events kept for them, the missed one with the full statements (conflict
 * detection, resolution and logging), without a new stream; a transaction too large to keep is applied again
 * after a stream restart. Other failures drop the session, and the stream restarts from the durable progress.
 *
 * A transaction that failed on its data is applied again in careful mode: one change at a time, each in a
 * savepoint; a change that fails goes to pgmesh.exception under the table's exception policy.
 */
import Denque from 'denque';
import { PgmeshError, errorMessage, messageWithoutValues } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import { formatPgTimestamp, type PgTimestamp } from '../core/pg-time.ts';
import { SQLSTATE, isDataSqlState, isRetryableSqlState, sqlState } from '../core/sqlstate.ts';
import { openSql, type Sql } from '../pg/connect.ts';
import { quoteLiteral } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { RelationMessage } from '../protocol/messages.ts';
import type { RemoteChange, StreamEvent } from '../stream/remote-transaction.ts';
import {
  bindRelation,
  loadLocalRelation,
  type ConflictPolicy,
  type DeferredUnique,
  type ExceptionPolicy,
  type RelationBinding,
} from './local-relation.ts';
import { describeChange, rowOps, type RowOp } from './row-ops.ts';
import {
  buildDeferredUniqueCheck,
  buildFastStatement,
  buildFinish,
  buildRowLock,
  buildStatement,
  keyParameterIndexes,
  valueParameterCount,
  type BatchKind,
  type StatementContext,
} from './statement-builder.ts';
import { findUniqueConflict, recordUniqueConflict, type UniqueConflict } from './unique-conflicts.ts';
import { DDL_MESSAGE_PREFIX, ddlApplyStatement } from '../ddl/ddl-apply.ts';
import { droppedValues, driftExceptionSql, reduceChange, reduceRelation, type Reduction } from '../ddl/schema-drift.ts';
import { buildUniqueClaimCheck, buildUniqueResolution, needsUniqueResolution } from './unique-resolution.ts';

/** Message bytes in flight before the applier waits for replies (keeps a huge transaction's memory flat). */
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;
/**
 * Transactions sent and not yet known to have committed before the applier waits for replies. Everything of such a
 * transaction (its events, kept for a replay; its state; its statements) lives until the reply: with up to
 * maxInflightStatements messages of MAX_TRANSACTIONS_PER_MESSAGE each (16k one-row transactions) the garbage
 * collector copied that much on every young-generation collection, a third of the agent's time. At this bound the
 * session still has tens of milliseconds of work queued when the applier wakes (at half of it).
 */
const MAX_UNCONFIRMED_TRANSACTIONS = 1024;
/** A large transaction is sent in messages of about this size. */
const MESSAGE_BYTES = 512 * 1024;
/**
 * Small transactions that arrive together are sent together, up to this many in one message (each still its own
 * BEGIN ... COMMIT): the driver's work per call is a large part of the agent's CPU on small transactions.
 */
const MAX_TRANSACTIONS_PER_MESSAGE = 32;
/** How long the session is asked, after a failure, which transactions committed (see settle). */
const SETTLE_TIMEOUT_MS = 10_000;
/**
 * Events of unconfirmed transactions kept to replay them after a fast-path miss; past this, the transaction being
 * received is not kept (a miss in it restarts the stream instead).
 */
const RETAIN_MAX_EVENTS = 50_000;
/** After a fast-path miss on a table, its changes take the full statements for this long. */
const SLOW_TABLE_MS = 10_000;
/** How long a relation's binding (columns, policies) is trusted before it is read again. */
const BINDING_TTL_MS = 5_000;

export interface ApplierOptions {
  readonly peer: string;
  readonly localNode: string;
  readonly origin: string;
  readonly maxBatchRows: number;
  readonly maxInflightStatements: number;
  readonly conflictWindowMs: number;
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
  lastCommitTime: PgTimestamp | undefined;
  lastAppliedAt: number;
  /** Conflicts by type, of committed transactions. */
  readonly conflicts: Record<string, number>;
  /** Conflicts by table. */
  readonly conflictsByTable: Record<string, number>;
}

interface EventSource {
  next(): Promise<StreamEvent[] | null>;
}

interface Batch {
  readonly first: RowOp;
  /** The rows, in order (turned into one array per parameter when the batch is sent). */
  readonly ops: RowOp[];
  /** The primary keys of the rows, once there are two (one row needs no set to compare against). */
  keys: Set<string> | undefined;
}

interface OpenTransaction {
  readonly finalLsn: Lsn;
  readonly commitTime: PgTimestamp;
  /** commitTime as statements take it (formatted once: every batch and the finish use it). */
  readonly commitTimeText: string;
  readonly skip: boolean;
  readonly careful: boolean;
  /** Every batch with the full statements (no fast path). */
  readonly full: boolean;
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
interface Finish {
  readonly prev: string;
  readonly end: string;
  readonly ts: string;
}

interface CommitRecord {
  readonly txn: OpenTransaction;
  readonly endLsn: Lsn;
  readonly commitTime: PgTimestamp;
}

interface Failure {
  readonly error: unknown;
  readonly what: string;
  readonly finalLsn: Lsn | undefined;
}

export class Applier {
  readonly stats: ApplyStats = {
    appliedXacts: 0,
    appliedChanges: 0,
    skippedXacts: 0,
    exceptions: 0,
    fastPathMisses: 0,
    lastCommitTime: undefined,
    lastAppliedAt: 0,
    conflicts: {},
    conflictsByTable: {},
  };
  /** End LSN of the last transaction whose COMMIT succeeded. */
  appliedEnd: Lsn;
  /** End LSN of the last transaction sent to the server (committed or still in the pipeline). */
  private issuedEnd: Lsn;
  private readonly bindings = new Map<RelationMessage, { binding: RelationBinding; at: number }>();
  /** Bindings of peer relations with columns this node lacks: bound without them (see opsOf). */
  private readonly reductions = new WeakMap<RelationBinding, Reduction>();
  private readonly statements = new Map<string, string>();
  /** Fast-path statements by binding, then by shape (kind, insert or update, rows, finishing; value positions). */
  private readonly fastStatements = new WeakMap<RelationBinding, Map<string, { text: string; timestamp: boolean } | undefined>>();
  /** Statements prepared in the session: text -> name. */
  private readonly prepared = new Map<string, string>();
  private preparedCount = 0;
  /** The statements of the message being built. */
  private message: string[] = [];
  private messageBytes = 0;
  /** The transactions whose statements are in the message, where each one's statements start. */
  private segments: { readonly txn: OpenTransaction; start: number; commit: CommitRecord | undefined }[] = [];
  /** Transactions whose COMMIT is sent or about to be, not yet known to have committed, in order. */
  private unconfirmed = new Denque<CommitRecord>();
  /** Events of the transactions not known to be committed, in order (events null: not kept, too many). */
  private retained = new Denque<{ finalLsn: Lsn; events: StreamEvent[] | null }>();
  private retainedEvents = 0;
  private fullLsn: Lsn | undefined;
  /** Set by flushBatch when the batch's statement also finished the transaction. */
  private finishedInBatch = false;
  /** Tables whose changes take the full statements until the given time (a fast-path miss happened there). */
  private readonly slowTables = new Map<number, number>();
  private readonly ctx: StatementContext;
  /** The last statement of every applied transaction that does not finish in its only statement (see buildFinish). */
  private readonly finishText: string;
  /** Set when an operator resumed the peer: the policy that replaces 'pause' for the first transaction applied. */
  private resumeResolution: ConflictPolicy | undefined;
  /** Commit LSN of that first transaction (the one that paused the peer). */
  private resumeLsn: Lsn | undefined;
  private txn: OpenTransaction | undefined;
  private batch: Batch | undefined;
  private inflight = 0;
  private inflightBytes = 0;
  private roomWaiter: (() => void) | undefined;
  private drainWaiter: (() => void) | undefined;
  private failure: Failure | undefined;
  /**
   * Set while run() waits for events: a failed statement wakes it (like an ended stream), so it does not wait for
   * the next event first. Not a long-lived promise raced against every wait: each Promise.race leaves a reaction on
   * a promise that never settles, and that reaction keeps the race's result alive (every event batch ever received).
   */
  private wakeOnFailure: (() => void) | undefined;
  /** The session's connection closed (see sessionClosed). */
  private sessionGone = false;

  private constructor(
    private readonly sql: Sql,
    private readonly session: Sql,
    private readonly catalog: Sql,
    private readonly options: ApplierOptions,
    progress: Progress,
    peerOriginId: number,
  ) {
    const start = progress.start;
    this.fullLsn = options.fullLsn;
    this.resumeResolution = progress.resumeResolution;
    this.appliedEnd = start;
    this.issuedEnd = start;
    this.ctx = { peer: options.peer, localNode: options.localNode, conflictWindowMs: options.conflictWindowMs, peerOriginId };
    this.finishText = buildFinish(this.ctx);
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
      parameters: { session_replication_role: 'replica', synchronous_commit: 'off', plan_cache_mode: 'force_generic_plan' },
      pipelined: true,
    });
    // The session is the pool of one connection itself, not a reserved connection: postgres.js 3.4 sends the queries
    // of a reserved connection one round trip at a time once its pipeline has filled, while a pool keeps pipelining.
    // Idle and lifetime limits are off, so the connection is not replaced; if it were (a network error), the new one
    // would have no origin session and pg_replication_origin_xact_setup in the finish statement would refuse to commit.
    const session = sql;
    try {
      await session.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup(${quoteLiteral(options.origin)})`);
      const progress = await readProgress(session, options);
      // Where the finish statement's predecessor check starts (see buildFinish).
      await session.unsafe(`SELECT pg_catalog.set_config('pgmesh.applied_end', ${quoteLiteral(formatLsn(progress.start))}, false)`);
      const origins = await session.unsafe<{ id: number }[]>(
        `SELECT roident::int AS id FROM pg_catalog.pg_replication_origin WHERE roname = ${quoteLiteral(options.origin)}`,
      );
      const originId = origins[0]?.id;
      if (originId === undefined) throw new PgmeshError('NOT_INITIALIZED', `replication origin ${options.origin} is missing on ${options.localNode}; run "pgmesh cluster create"`);
      const applier = new Applier(sql, session, catalog, options, progress, originId);
      onClose = () => applier.sessionClosed();
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
          this.wakeOnFailure = () => resolve('failed');
          next.then(resolve, reject);
        });
        this.wakeOnFailure = undefined;
        if (events === 'failed') {
          // A fast-path miss can come back while the stream is idle: apply again in place, as handleAll does.
          const replay = await this.takeReplay();
          if (!replay) break;
          await this.handleAll(replay);
          if (this.failure) break;
          continue;
        }
        pending = undefined;
        if (events === null) break;
        await this.handleAll(events);
        if (this.failure) break;
      }
    } catch (error) {
      if (!this.failure) this.failure = { error, what: 'the stream', finalLsn: this.txn?.finalLsn };
    } finally {
      if (!this.failure) {
        const sent = this.flushComplete();
        if (sent) await sent.catch(() => undefined);
      }
      await this.drain();
      await this.settle();
    }
    this.throwIfFailed();
  }

  /** Handles events in order; after a fast-path miss, replays the kept ones first. Stops at any other failure. */
  private async handleAll(events: StreamEvent[]): Promise<void> {
    let queue = events;
    let i = 0;
    while (i < queue.length) {
      const event = queue[i++] as StreamEvent;
      this.retain(event);
      const wait = this.handle(event);
      if (wait) await wait;
      if (this.failure) {
        const replay = await this.takeReplay();
        if (!replay) return;
        queue = [...replay, ...queue.slice(i)];
        i = 0;
      }
      if (i === queue.length) {
        // The batch at hand is handled: send what is complete rather than wait for the next one.
        const sent = this.flushComplete();
        if (sent) await sent;
        if (this.failure) {
          const replay = await this.takeReplay();
          if (!replay) return;
          queue = replay;
          i = 0;
        }
      }
    }
  }

  private retain(event: StreamEvent): void {
    if (event.kind === 'begin') {
      this.retained.push({ finalLsn: event.finalLsn, events: [event] });
      this.retainedEvents++;
      return;
    }
    const last = this.retained.peekBack();
    if (!last?.events) return;
    if (this.retainedEvents >= RETAIN_MAX_EVENTS) {
      this.retainedEvents -= last.events.length;
      last.events = null;
      return;
    }
    last.events.push(event);
    this.retainedEvents++;
  }

  /**
   * After a fast-path miss: waits for every message in flight (all failed: the session is in the aborted
   * transaction), rolls back, and returns the events to handle again from the missed transaction on, which is then
   * applied with the full statements. Undefined when the failure is another one, or the events were not all kept.
   */
  private async takeReplay(): Promise<StreamEvent[] | undefined> {
    const failure = this.failure;
    const code = failure ? sqlState(failure.error) : undefined;
    if (!failure || (code !== SQLSTATE.fastPathMiss && code !== SQLSTATE.uniqueViolation)) return undefined;
    await this.drain();
    if (this.sessionGone) return undefined;
    await this.settle();
    const settled = this.failure ?? failure;
    // A unique violation on the fast path is a miss too (a row inserted by another session after the check); on
    // the full statements it is the change's own problem, for careful mode.
    if (code === SQLSTATE.uniqueViolation && settled.finalLsn === this.fullLsn) return undefined;
    const kept = this.retained.toArray();
    const first = kept[0];
    if (!first || first.finalLsn !== settled.finalLsn || kept.some((e) => e.events === null)) return undefined;
    const table = Number((failure.error as { detail?: string }).detail);
    if (Number.isInteger(table)) this.slowTables.set(table, Date.now() + SLOW_TABLE_MS);
    try {
      // A PREPARE in a message that failed before reaching it did not run.
      const names = await this.session.unsafe<{ name: string }[]>(`SELECT name FROM pg_catalog.pg_prepared_statements WHERE name LIKE 'pgmesh\\_%'`);
      const present = new Set(names.map((r) => r.name));
      for (const [text, name] of this.prepared) if (!present.has(name)) this.prepared.delete(text);
    } catch (error) {
      this.failure = { error, what: 'the look-up of prepared statements after a fast-path miss', finalLsn: settled.finalLsn };
      return undefined;
    }
    const events = kept.flatMap((e) => e.events ?? []);
    this.retained.clear();
    this.retainedEvents = 0;
    this.failure = undefined;
    this.txn = undefined;
    this.batch = undefined;
    this.message = [];
    this.messageBytes = 0;
    this.segments = [];
    this.unconfirmed.clear();
    this.issuedEnd = this.appliedEnd;
    this.fullLsn = settled.finalLsn;
    this.stats.fastPathMisses++;
    this.options.logger.debug({ peer: this.options.peer, transaction: formatLsn(settled.finalLsn), events: events.length }, 'fast path missed; applying again');
    return events;
  }

  private throwIfFailed(): void {
    const failure = this.failure;
    if (!failure) return;
    const cause = failure.error;
    // Our own errors already say what failed and carry their context (careful mode's exception-policy pause has
    // sqlstate PM003 there, which the peer replicator acts on): wrapping them would lose it.
    if (cause instanceof PgmeshError) throw cause;
    // The row's values (the server's DETAIL) stay in the cause, for debug-level logs only: this message reaches
    // error-level logs and the status.
    throw new PgmeshError(
      'APPLY_FAILED',
      `applying ${failure.what} from ${this.options.peer} on ${this.options.localNode} failed: ${messageWithoutValues(cause)}`,
      {
        cause,
        context: {
          peer: this.options.peer,
          // A unique violation on the fast path is a miss (see takeReplay): the transaction needs the full
          // statements, not careful mode.
          sqlstate:
            sqlState(cause) === SQLSTATE.uniqueViolation && failure.finalLsn !== undefined && failure.finalLsn !== this.fullLsn
              ? SQLSTATE.fastPathMiss
              : sqlState(cause),
          applied: formatLsn(this.appliedEnd),
          transaction: failure.finalLsn === undefined ? undefined : formatLsn(failure.finalLsn),
        },
      },
    );
  }

  private handle(event: StreamEvent): Promise<void> | undefined {
    switch (event.kind) {
      case 'begin': {
        // A redelivered transaction (its commit record lies before what is applied) is skipped whole.
        const skip = event.finalLsn < this.issuedEnd;
        const careful = !skip && this.options.carefulLsn === event.finalLsn;
        const full = this.fullLsn === event.finalLsn;
        if (!skip && this.resumeResolution && this.resumeLsn === undefined) this.resumeLsn = event.finalLsn;
        this.txn = {
          finalLsn: event.finalLsn,
          commitTime: event.commitTime,
          commitTimeText: formatPgTimestamp(event.commitTime),
          skip,
          careful,
          full,
          changes: 0,
          sent: false,
          conflicts: undefined,
          abandon: undefined,
          seen: [],
          deferredKeys: undefined,
          ddl: false,
        };
        if (skip) return undefined;
        if (careful) return this.beginCareful();
        // No BEGIN yet: a transaction sent alone in one message is an implicit transaction block (the server commits
        // it at the end of the message, or rolls all of it back); otherwise it gets BEGIN ... COMMIT when sent.
        this.segments.push({ txn: this.txn, start: this.message.length, commit: undefined });
        return undefined;
      }
      case 'change': {
        const txn = this.txn;
        if (!txn) throw new PgmeshError('PROTOCOL', 'change outside a transaction');
        if (txn.skip) return undefined;
        return txn.careful ? this.carefulChange(txn, event.change) : this.change(event.change);
      }
      case 'commit':
        return this.commit(event.endLsn, event.commitTime);
    }
  }

  /** Returns a promise only when it must wait (a relation to look up, or the pipeline is full). */
  private change(change: RemoteChange): Promise<void> | undefined {
    switch (change.kind) {
      case 'insert':
      case 'update':
      case 'delete': {
        const cached = this.bindings.get(change.relation);
        if (cached && Date.now() - cached.at < BINDING_TTL_MS) return this.addRows(this.opsOf(change, cached.binding));
        return this.bind(change.relation).then(
          (binding) => this.addRows(this.opsOf(change, binding)),
          (error: unknown) => this.missingTable(change, error),
        );
      }
      case 'truncate':
        return this.truncate(change);
      case 'message':
        if (change.prefix === DDL_MESSAGE_PREFIX) return this.ddl(change);
        this.options.logger.debug({ peer: this.options.peer, prefix: change.prefix }, 'logical message ignored');
        return undefined;
    }
  }

  /**
   * A DDL statement of the peer (src/ddl): runs at its place among the transaction's row changes. Later changes of
   * the transaction may need what it created or changed, which only this session sees before the commit: so what
   * is built is sent, the replies awaited, and the transaction's relations are read again, in the session.
   */
  private async ddl(change: Extract<RemoteChange, { kind: 'message' }>): Promise<void> {
    const txn = this.txn;
    if (!txn) throw new PgmeshError('PROTOCOL', 'DDL message outside a transaction');
    const ddl = await ddlApplyStatement(change.content, { peer: this.options.peer, remoteTs: txn.commitTimeText, remoteLsn: formatLsn(txn.finalLsn) });
    if (ddl.problem !== undefined) this.options.logger.warn({ peer: this.options.peer, problem: ddl.problem }, 'DDL message cannot be applied; kept in pgmesh.exception');
    const wait = this.flushBatch();
    if (wait) await wait;
    this.append(ddl.sql);
    txn.ddl = true;
    this.forgetRelations();
    const sent = this.flushMessage(`the DDL of the transaction at ${formatLsn(txn.finalLsn)} (${ddl.statement ?? ddl.problem})`);
    if (sent) await sent;
    await this.drain();
  }

  /**
   * The row operations of a change. A change written on the peer before a column was renamed or dropped here is
   * applied without that column (see src/ddl/schema-drift.ts), and kept in the exception table if a value is lost.
   */
  private opsOf(change: Extract<RemoteChange, { kind: 'insert' | 'update' | 'delete' }>, binding: RelationBinding): RowOp[] {
    const reduction = this.reductions.get(binding);
    if (!reduction) return rowOps(change, binding);
    if (droppedValues(change, reduction) !== undefined) {
      this.append(driftExceptionSql(change, { missingColumns: reduction.missing }, this.driftContext()));
      this.stats.exceptions++;
    }
    return rowOps(reduceChange(change, reduction), binding);
  }

  /** A change of a table that does not exist here (dropped here by DDL): kept in the exception table, not applied. */
  private async missingTable(change: Extract<RemoteChange, { kind: 'insert' | 'update' | 'delete' }>, error: unknown): Promise<void> {
    if (!(error instanceof PgmeshError) || error.code !== 'UNKNOWN_TABLE') throw error;
    const wait = this.flushBatch();
    if (wait) await wait;
    this.append(driftExceptionSql(change, { missingTable: true }, this.driftContext()));
    this.stats.exceptions++;
  }

  private driftContext(): { peer: string; node: string; remoteTs: string; remoteLsn: string } {
    const txn = this.txn;
    if (!txn) throw new PgmeshError('INTERNAL', 'change outside a transaction');
    return { peer: this.options.peer, node: this.options.localNode, remoteTs: txn.commitTimeText, remoteLsn: formatLsn(txn.finalLsn) };
  }

  /** Table bindings and the statements built from them, after DDL: they are read and built again. */
  private forgetRelations(): void {
    this.bindings.clear();
    this.statements.clear();
  }

  /** Returns a promise only when it must wait (as handle does: most changes do not, and need no await). */
  private addRows(ops: readonly RowOp[]): Promise<void> | undefined {
    for (let i = 0; i < ops.length; i++) {
      const wait = this.addRow(ops[i] as RowOp);
      if (wait) return i + 1 < ops.length ? wait.then(() => this.addRows(ops.slice(i + 1))) : wait;
    }
    return undefined;
  }

  private async truncate(change: Extract<RemoteChange, { kind: 'truncate' }>): Promise<void> {
    const wait = this.flushBatch();
    if (wait) await wait;
    this.append(await this.truncateSql(change));
  }

  /** A peer's TRUNCATE, applied by version (see src/cluster/truncate-sql.ts): rows written after it here stay. */
  private async truncateSql(change: Extract<RemoteChange, { kind: 'truncate' }>): Promise<string> {
    const tables = await Promise.all(change.relations.map((r) => this.bind(r)));
    const txn = this.txn;
    if (!txn) throw new PgmeshError('INTERNAL', 'a TRUNCATE outside a transaction');
    const oids = tables.map((t) => `${t.local.oid}`).join(', ');
    return (
      `SELECT pgmesh.apply_truncate(ARRAY[${oids}]::oid[], ${quoteLiteral(txn.commitTimeText)}::timestamptz, ` +
      `${quoteLiteral(this.options.peer)}, ${quoteLiteral(this.options.localNode)})`
    );
  }

  /** Adds a row to the batch being built; returns a promise only when it must wait (the pipeline is full). */
  private addRow(op: RowOp): Promise<void> | undefined {
    if (op.kind !== 'delete' && op.binding.local.deferredUnique.length > 0 && this.txn) rememberKeys((this.txn.deferredKeys ??= new Map()), op);
    let batch = this.batch;
    let wait: Promise<void> | undefined;
    if (batch && (!sameShape(batch.first, op) || batch.ops.length >= this.options.maxBatchRows || touches(batch, op.key))) {
      wait = this.flushBatch();
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

  /** The table's conflict policy, or the resume resolution for the transaction that paused the peer. */
  private policyFor(binding: RelationBinding): ConflictPolicy {
    const policy = binding.local.conflictPolicy;
    const resuming = this.resumeResolution !== undefined && this.txn !== undefined && this.txn.finalLsn === this.resumeLsn;
    return policy === 'pause' && resuming ? (this.resumeResolution ?? policy) : policy;
  }

  private statementFor(op: RowOp, multiRow: boolean): string {
    const binding = op.binding;
    const policy = this.policyFor(binding);
    const key = `${op.kind}:${binding.local.qualified}:${policy}:${binding.deltaPositions.join(',')}:${op.valuePositions.join(',')}:${multiRow ? 'm' : 's'}${unchangedKey(op)}:${uniqueKey(binding)}`;
    let text = this.statements.get(key);
    if (!text) {
      const shape = { kind: op.kind, binding, valuePositions: op.valuePositions, multiRow, unchangedPositions: op.unchangedPositions };
      if (valueParameterCount(shape) !== op.values.length) throw new PgmeshError('INTERNAL', `parameter count mismatch for ${key}`);
      text = buildStatement(shape, this.ctx, policy);
      this.statements.set(key, text);
    }
    return text;
  }

  /** The unique-key resolution that runs before the apply statement of a batch like op's, if its table needs one. */
  private resolutionFor(op: RowOp, multiRow: boolean): string | undefined {
    const binding = op.binding;
    if (binding.local.uniqueIndexes.length === 0) return undefined;
    const policy = this.policyFor(binding);
    const key = `resolve:${op.kind}:${binding.local.qualified}:${policy}:${binding.deltaPositions.join(',')}:${op.valuePositions.join(',')}:${multiRow ? 'm' : 's'}:${uniqueKey(binding)}`;
    if (this.statements.has(key)) return this.statements.get(key) || undefined;
    const shape = { kind: op.kind, binding, valuePositions: op.valuePositions, multiRow };
    const text = needsUniqueResolution(shape) ? buildUniqueResolution(shape, this.ctx, policy) : '';
    this.statements.set(key, text);
    return text || undefined;
  }

  private claimCheckFor(binding: RelationBinding): string {
    const key = `claims:${binding.local.qualified}:${uniqueKey(binding)}`;
    let text = this.statements.get(key);
    if (!text) {
      text = buildUniqueClaimCheck(binding, this.ctx);
      this.statements.set(key, text);
    }
    return text;
  }

  private deferredCheckFor(binding: RelationBinding, index: DeferredUnique): string {
    const key = `deferred:${binding.local.qualified}:${index.name}:${index.columns.join(',')}`;
    let text = this.statements.get(key);
    if (!text) {
      text = buildDeferredUniqueCheck(binding, index);
      this.statements.set(key, text);
    }
    return text;
  }

  /** For an upsert: the statement that locks its rows first (see buildRowLock), with its parameters. */
  private rowLockFor(op: RowOp, multiRow: boolean, params: readonly (string | null)[]): { text: string; params: (string | null)[] } | undefined {
    if (op.kind !== 'upsert') return undefined;
    const key = `lock:${op.binding.local.qualified}:${multiRow ? 'm' : 's'}`;
    let text = this.statements.get(key);
    if (!text) {
      text = buildRowLock(op.binding, multiRow);
      this.statements.set(key, text);
    }
    const indexes = keyParameterIndexes({ kind: op.kind, binding: op.binding, valuePositions: op.valuePositions, multiRow });
    return { text, params: indexes.map((i) => params[i] ?? null) };
  }

  /**
   * Appends the batch's statement to the message; returns a promise only when it must wait. With `finish` (the
   * finish statement's parameters, for a transaction whose only statement this is), a fast-path statement also
   * finishes the transaction, and `finishedInBatch` is set.
   */
  private flushBatch(finish?: Finish): Promise<void> | undefined {
    const batch = this.batch;
    if (!batch) return undefined;
    this.batch = undefined;
    const txn = this.txn;
    if (!txn) throw new PgmeshError('INTERNAL', 'batch outside a transaction');
    const multiRow = batch.ops.length > 1;
    const params: (string | null)[] = multiRow ? batch.first.values.map((_, i) => textArrayLiteral(batch.ops.map((op) => op.values[i] ?? null))) : [...batch.first.values];
    txn.changes += batch.ops.length;
    const fast = txn.full ? undefined : this.fastStatementFor(batch.first, multiRow, finish !== undefined);
    if (fast) {
      if (fast.timestamp) params.push(txn.commitTimeText);
      if (finish) {
        // A finishing statement takes the commit timestamp (pushed above) and then the end LSNs.
        params.push(finish.prev, finish.end);
        this.finishedInBatch = true;
      }
      this.append(this.execute(fast.text, params));
    } else {
      const lock = this.rowLockFor(batch.first, multiRow, params);
      if (lock) this.append(this.execute(lock.text, lock.params));
      params.push(txn.commitTimeText, formatLsn(txn.finalLsn));
      // Secondary unique keys first (after the rows are locked): the apply statement then leaves out what lost.
      const resolution = this.resolutionFor(batch.first, multiRow);
      if (resolution) this.append(this.execute(resolution, params));
      this.append(this.execute(this.statementFor(batch.first, multiRow), params));
    }
    const first = batch.first;
    if (
      fast &&
      first.kind === 'upsert' &&
      first.values[first.values.length - 1] === 'i' &&
      first.binding.local.uniqueIndexes.length > 0 &&
      this.policyFor(first.binding) === 'last_update_wins'
    ) {
      // Fast inserts into a table with unique indexes: a claim made while they waited (see buildUniqueClaimCheck;
      // claims decide only under last-update-wins). The full statements lock and re-check instead.
      const keys = first.keyValues.map((_, i) => textArrayLiteral(batch.ops.map((op) => op.keyValues[i] ?? null)));
      this.append(this.execute(this.claimCheckFor(first.binding), [...keys, txn.commitTimeText]));
    }
    if (this.messageBytes >= MESSAGE_BYTES) return this.flushMessage(`changes of the transaction at ${formatLsn(txn.finalLsn)}`);
    return undefined;
  }

  private fastStatementFor(op: RowOp, multiRow: boolean, finishing: boolean): { text: string; timestamp: boolean } | undefined {
    const binding = op.binding;
    const slowUntil = this.slowTables.get(binding.local.oid);
    if (slowUntil !== undefined) {
      if (slowUntil > Date.now()) return undefined;
      this.slowTables.delete(binding.local.oid);
    }
    const upsertOp = op.kind === 'upsert' ? (op.values.at(-1) as 'i' | 'u') : undefined;
    // An upsert sends every column (its positions are the same for every row of a binding); other kinds vary.
    const key = `${op.kind}:${upsertOp ?? ''}:${multiRow ? 'm' : 's'}:${finishing ? 'f' : ''}${op.kind === 'upsert' ? '' : `:${op.valuePositions.join(',')}`}${unchangedKey(op)}`;
    let cache = this.fastStatements.get(binding);
    if (!cache) {
      cache = new Map();
      this.fastStatements.set(binding, cache);
    }
    if (cache.has(key)) return cache.get(key);
    const shape = { kind: op.kind, binding, valuePositions: op.valuePositions, multiRow, unchangedPositions: op.unchangedPositions };
    const fast = buildFastStatement(shape, this.ctx, upsertOp, finishing);
    cache.set(key, fast);
    return fast;
  }

  /** Adds a statement to the message being built. */
  private append(statement: string): void {
    this.message.push(statement);
    this.messageBytes += statement.length;
  }

  /** `EXECUTE name(literals)` of a statement prepared in this session (prepared first, in a message before it). */
  private execute(text: string, params: readonly (string | null)[]): string {
    let name = this.prepared.get(text);
    if (name === undefined) {
      name = `pgmesh_${++this.preparedCount}`;
      this.prepared.set(text, name);
      // A message of its own: the server keeps the whole text of the message a PREPARE came in as the statement's
      // source, and copies that source into every EXECUTE's portal. Inside a message of many transactions (up to
      // MESSAGE_BYTES) that copy was a fifth of the apply backend's time on one-row updates (perf).
      void this.issue(`PREPARE ${name} AS ${text}`, [], `preparing statement ${name}`);
    }
    // Joined rather than appended one by one: a chain of appends is a rope of small strings that lives (and is
    // copied by the garbage collector) until the message is sent.
    const literals = new Array<string>(params.length);
    for (let i = 0; i < params.length; i++) {
      const p = params[i];
      literals[i] = p === null || p === undefined ? 'NULL' : quoteLiteral(p);
    }
    return `EXECUTE ${name}(${literals.join(', ')})`;
  }

  /**
   * Sends the message built so far: the complete transactions in it, and (`all`) the statements of the one still
   * open, which then continues in later messages inside BEGIN ... COMMIT. A transaction sent alone and whole is an
   * implicit transaction block; every other one is wrapped in BEGIN ... COMMIT, so each still commits on its own.
   */
  private flushMessage(what: string, all = true): Promise<void> | undefined {
    const open = this.segments.at(-1)?.commit === undefined ? this.segments.at(-1) : undefined;
    const complete = open ? this.segments.slice(0, -1) : this.segments;
    const cut = open && !all ? open.start : this.message.length;
    if (cut === 0) return undefined;
    const segments = open && all ? [...complete, open] : complete;
    const only = segments.length === 1 ? segments[0] : undefined;
    const implicit = only !== undefined && only.commit !== undefined && !only.txn.sent && only.start === 0;
    const parts: string[] = [];
    segments.forEach((segment, i) => {
      const end = i + 1 < segments.length ? (segments[i + 1]?.start ?? cut) : cut;
      if (!implicit && !segment.txn.sent) {
        // Right after the previous transaction's COMMIT: COMMIT AND CHAIN opens this one (one statement less).
        if (i > 0 && parts.at(-1) === 'COMMIT') parts[parts.length - 1] = 'COMMIT AND CHAIN';
        else parts.push('BEGIN');
      }
      if (!implicit) segment.txn.sent = true;
      for (let j = segment.start; j < end; j++) parts.push(this.message[j] as string);
      if (segment.commit && !implicit) parts.push('COMMIT');
    });
    // Statements before the first segment belong to the open transaction of the previous message.
    const first = segments[0]?.start ?? cut;
    const text = [...this.message.slice(0, first), ...parts].join(';\n');
    const rest = this.message.slice(cut);
    this.message = rest;
    this.messageBytes = rest.reduce((n, statement) => n + statement.length, 0);
    // The open transaction's statements not sent yet (or those still to come) start the next message.
    this.segments = open ? [{ txn: open.txn, start: 0, commit: undefined }] : [];
    const commits = complete.map((segment) => segment.commit as CommitRecord);
    const conflictsOf = commits.at(-1)?.txn ?? open?.txn;
    return this.issue(text, [], what, (result) => {
      if (conflictsOf) countConflicts(conflictsOf, result);
      for (const record of commits) {
        if (this.unconfirmed.peekFront() === record) this.unconfirmed.shift();
        this.committed(record.txn, record.endLsn, record.commitTime);
      }
    });
  }

  /** Sends the complete transactions of the message being built (a stream batch is handled: do not wait for more). */
  private flushComplete(): Promise<void> | undefined {
    return this.flushMessage('transactions', false);
  }

  /**
   * After a failure, once nothing is in flight: ends the aborted transaction, learns from the session which
   * transactions did commit (a failed message may hold several, and those before the failing one committed), and
   * points the failure at the first one that did not. Nothing to learn when the session itself is gone.
   */
  private async settle(): Promise<void> {
    const failure = this.failure;
    if (!failure || this.sessionGone) return;
    // Only a session whose server answered with an error can be asked. After a connection error or a shutdown
    // (class 08, 57P) the driver may queue a query on the closing connection and never settle it; and whatever the
    // reason, the answer is not waited for long: the peer replicator restarts from the durable progress anyway.
    const code = sqlState(failure.error);
    if (code === undefined || code.startsWith('08') || code.startsWith('57P')) return;
    let end: Lsn;
    let counts: { lsn: string; conflict: string; rel: string; n: number }[];
    try {
      const ask = async (): Promise<{ end: Lsn; counts: typeof counts }> => {
        await this.session.unsafe('ROLLBACK');
        // The failed transaction may have set up its origin LSN: cleared, so that no later transaction of the
        // session that aborts with an xid moves the origin there (PostgreSQL advances it on such aborts too).
        const rows = await this.session.unsafe<{ end: string | null }[]>(
          `SELECT pg_catalog.current_setting('pgmesh.applied_end', true) AS end, pg_catalog.pg_replication_origin_xact_reset() AS reset`,
        );
        const end = parseLsn(rows[0]?.end ?? '0/0');
        // Transactions of the failed message that committed before the failing statement: the message's reply,
        // with their conflict summaries, was lost with the failure, so their conflicts are counted from the log.
        const lsns = this.unconfirmed.toArray().flatMap((r) => (r.endLsn <= end ? [formatLsn(r.txn.finalLsn)] : []));
        const counts =
          lsns.length === 0
            ? []
            : await this.session.unsafe<{ lsn: string; conflict: string; rel: string; n: number }[]>(
                `SELECT remote_commit_lsn::text AS lsn, conflict_type AS conflict, relation AS rel, count(*)::int AS n FROM pgmesh.conflict
                  WHERE peer = $1::text AND remote_commit_lsn = ANY ($2::text::pg_lsn[]) GROUP BY 1, 2, 3`,
                [this.options.peer, textArrayLiteral(lsns)],
              );
        return { end, counts };
      };
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('no answer from the apply session')), SETTLE_TIMEOUT_MS);
      });
      try {
        const answer = ask();
        answer.catch(() => undefined); // a late failure, after the timeout, is not waited for
        ({ end, counts } = await Promise.race([answer, late]));
      } finally {
        clearTimeout(timer);
      }
    } catch {
      this.sessionGone = true;
      return;
    }
    while ((this.unconfirmed.peekFront()?.endLsn ?? end + 1n) <= end) {
      const record = this.unconfirmed.shift() as CommitRecord;
      const lsn = formatLsn(record.txn.finalLsn);
      record.txn.conflicts = undefined; // what earlier messages of it counted is in the log too
      countConflicts(record.txn, counts.filter((c) => c.lsn === lsn));
      this.committed(record.txn, record.endLsn, record.commitTime);
    }
    // The first transaction that did not commit is the one that failed: the earliest unconfirmed one, or the open
    // transaction whose messages were sent before it completed.
    const candidates = [this.unconfirmed.peekFront()?.txn.finalLsn, this.segments[0]?.txn.sent ? this.segments[0].txn.finalLsn : undefined, failure.finalLsn].filter(
      (lsn): lsn is Lsn => lsn !== undefined && lsn > this.appliedEnd,
    );
    const first = candidates.reduce<Lsn | undefined>((min, lsn) => (min === undefined || lsn < min ? lsn : min), undefined);
    if (first !== undefined) this.failure = { ...failure, finalLsn: first };
  }

  /** Returns a promise only when it must wait (careful mode, or the pipeline is full): most transactions do not. */
  private commit(endLsn: Lsn, commitTime: PgTimestamp): Promise<void> | undefined {
    const txn = this.txn;
    if (!txn) throw new PgmeshError('PROTOCOL', 'commit outside a transaction');
    if (txn.skip) {
      this.txn = undefined;
      this.stats.skippedXacts++;
      return undefined;
    }
    if (txn.careful) {
      return this.commitCareful(txn, endLsn, commitTime).then(() => {
        this.txn = undefined;
      });
    }
    const prev = this.issuedEnd;
    this.issuedEnd = endLsn;
    const ts = commitTime === txn.commitTime ? txn.commitTimeText : formatPgTimestamp(commitTime);
    const finish: Finish = { prev: formatLsn(prev), end: formatLsn(endLsn), ts };
    // A transaction of one statement finishes in it (when that statement takes the fast path).
    const segment = this.segments.at(-1);
    const alone = segment?.txn === txn && this.message.length === segment.start && !txn.sent && txn.deferredKeys === undefined && txn.finalLsn !== this.resumeLsn;
    this.finishedInBatch = false;
    const wait = this.flushBatch(alone ? finish : undefined);
    return wait ? wait.then(() => this.endTransaction(txn, endLsn, commitTime, finish)) : this.endTransaction(txn, endLsn, commitTime, finish);
  }

  /** The rest of commit(), once the last batch is in the message: checks, finish, COMMIT. */
  private endTransaction(txn: OpenTransaction, endLsn: Lsn, commitTime: PgTimestamp, finish: Finish): Promise<void> | undefined {
    // this.txn stays set until COMMIT is issued: a failure of the checks, the finish statement or COMMIT is then
    // attributed to this transaction, so that a data error found there gets the transaction applied carefully.
    for (const { binding, keys } of txn.deferredKeys?.values() ?? []) {
      for (const index of binding.local.deferredUnique) {
        this.append(this.execute(this.deferredCheckFor(binding, index), keys.map((column) => textArrayLiteral(column))));
      }
    }
    if (txn.finalLsn === this.resumeLsn) this.append(`UPDATE pgmesh.apply_progress SET resume_resolution = NULL WHERE peer = ${quoteLiteral(this.options.peer)}`);
    if (!this.finishedInBatch) this.append(this.execute(this.finishText, [finish.prev, finish.end, finish.ts]));
    const record: CommitRecord = { txn, endLsn, commitTime };
    this.unconfirmed.push(record);
    const current = this.segments.at(-1);
    if (current?.txn !== txn) throw new PgmeshError('INTERNAL', 'the transaction being committed is not the last one of the message');
    current.commit = record;
    // A reply without error means every statement of the message ran, every COMMIT included (a failing
    // statement makes the server skip the rest of the message). A transaction already partly sent goes now; small
    // ones wait for more to share the message, until the stream batch at hand is handled (see handleAll).
    const wait =
      txn.sent || this.segments.length >= MAX_TRANSACTIONS_PER_MESSAGE || this.messageBytes >= MESSAGE_BYTES
        ? this.flushMessage(`transactions up to the one at ${formatLsn(txn.finalLsn)}`)
        : undefined;
    this.txn = undefined;
    // The next transactions read their tables on the catalog connection: after DDL, only once this one committed.
    if (txn.ddl) return wait ? wait.then(() => this.drain()) : this.drain();
    return wait;
  }

  private committed(txn: OpenTransaction, endLsn: Lsn, commitTime: PgTimestamp): void {
    if (txn.finalLsn === this.resumeLsn) this.resumeResolution = undefined;
    this.appliedEnd = endLsn;
    while (this.retained.length > 0 && (this.retained.peekFront()?.finalLsn ?? 0n) <= txn.finalLsn) {
      this.retainedEvents -= this.retained.shift()?.events?.length ?? 0;
    }
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

  // ---- careful mode: one change at a time, each in a savepoint, every reply awaited ----

  private async beginCareful(): Promise<void> {
    const sent = this.flushComplete();
    if (sent) await sent;
    await this.drain();
    if (this.failure) return;
    this.options.logger.warn({ peer: this.options.peer, transaction: formatLsn(this.txn?.finalLsn ?? 0n) }, 'applying a failed transaction change by change');
    await this.session.unsafe('BEGIN');
  }

  private async carefulChange(txn: OpenTransaction, change: RemoteChange): Promise<void> {
    if (txn.abandon) {
      txn.seen.push({ change, binding: undefined });
      return;
    }
    let binding: RelationBinding | undefined;
    if (change.kind === 'insert' || change.kind === 'update' || change.kind === 'delete') {
      try {
        binding = await this.bind(change.relation);
      } catch (error) {
        if (!(error instanceof PgmeshError) || error.code !== 'UNKNOWN_TABLE') throw error;
        await this.session.unsafe(driftExceptionSql(change, { missingTable: true }, this.driftContext()));
        this.stats.exceptions++;
        return;
      }
    }
    txn.seen.push({ change, binding });
    await this.session.unsafe('SAVEPOINT pgmesh_change');
    try {
      if (change.kind === 'message' && change.prefix === DDL_MESSAGE_PREFIX) {
        // pgmesh.apply_ddl keeps a failing statement in the exception table itself.
        const ddl = await ddlApplyStatement(change.content, { peer: this.options.peer, remoteTs: txn.commitTimeText, remoteLsn: formatLsn(txn.finalLsn) });
        await this.session.unsafe(ddl.sql);
        txn.ddl = true;
        this.forgetRelations();
      } else if (change.kind === 'truncate') {
        await this.session.unsafe(await this.truncateSql(change));
      } else if (binding && change.kind !== 'message') {
        const reduction = this.reductions.get(binding);
        if (reduction && droppedValues(change, reduction) !== undefined) {
          await this.session.unsafe(driftExceptionSql(change, { missingColumns: reduction.missing }, this.driftContext()));
        }
        const ops = reduction ? rowOps(reduceChange(change, reduction), binding) : rowOps(change, binding);
        for (const op of ops) {
          const lock = this.rowLockFor(op, false, op.values);
          if (lock) await this.session.unsafe(lock.text, lock.params as string[], { prepare: true });
          const params = [...op.values, txn.commitTimeText, formatLsn(txn.finalLsn)];
          const resolution = this.resolutionFor(op, false);
          if (resolution) countConflicts(txn, await this.session.unsafe(resolution, params as string[], { prepare: true }));
          const result = await this.session.unsafe(this.statementFor(op, false), params as string[], { prepare: true });
          countConflicts(txn, result);
        }
        // Deferrable unique constraints are checked per change here, so that the change breaking one is the one kept.
        const written = new Map<string, { binding: RelationBinding; keys: (string | null)[][] }>();
        for (const op of ops) if (op.kind !== 'delete') rememberKeys(written, op);
        for (const { keys } of written.values()) {
          for (const index of binding.local.deferredUnique) {
            await this.session.unsafe(this.deferredCheckFor(binding, index), keys.map((column) => textArrayLiteral(column)) as string[], { prepare: true });
          }
        }
        txn.changes++;
      }
      await this.session.unsafe('RELEASE SAVEPOINT pgmesh_change');
    } catch (error) {
      await this.session.unsafe('ROLLBACK TO SAVEPOINT pgmesh_change');
      const code = sqlState(error);
      if (change.kind === 'truncate' && isDataSqlState(code)) {
        // A TRUNCATE that cannot be applied here (a foreign key from a table it does not cover): kept, and the rest goes on.
        await this.recordException(txn, change, undefined, error);
        return;
      }
      // A pause, or a failure that is not the change's own (a deadlock, a row changed under a lock): not an exception.
      if (code === SQLSTATE.conflictPause || isRetryableSqlState(code) || !binding) throw error;
      // A secondary unique key taken here is a conflict as well (insert_exists, update_exists or
      // multiple_unique_conflicts): it is recorded and counted with the exception.
      const conflict =
        code === SQLSTATE.uniqueViolation && (change.kind === 'insert' || change.kind === 'update')
          ? await findUniqueConflict(this.session, binding, change.kind, change.newTuple, change.kind === 'update' ? change.oldTuple : undefined, this.options.localNode)
          : undefined;
      const policy = binding.local.exceptionPolicy;
      if (policy === 'skip_change') {
        await this.recordException(txn, change, binding, error, conflict);
      } else {
        txn.abandon = { policy, error, change, conflict };
      }
    }
  }

  private async commitCareful(txn: OpenTransaction, endLsn: Lsn, commitTime: PgTimestamp): Promise<void> {
    const abandon = txn.abandon;
    if (abandon?.policy === 'pause') {
      await this.session.unsafe('ROLLBACK');
      throw new PgmeshError(
        'APPLY_FAILED',
        `a change from ${this.options.peer} failed and the table's exception policy is pause: ${messageWithoutValues(abandon.error)}; repair the row, then run "pgmesh resume"`,
        { cause: abandon.error, context: { peer: this.options.peer, sqlstate: SQLSTATE.exceptionPause, transaction: formatLsn(txn.finalLsn) } },
      );
    }
    if (abandon?.policy === 'skip_transaction') {
      // None of the transaction is applied; every change of it is kept in the exception table.
      await this.session.unsafe('ROLLBACK');
      await this.session.unsafe('BEGIN');
      txn.conflicts = undefined;
      for (const { change, binding } of txn.seen) {
        const bound = binding ?? (change.kind === 'insert' || change.kind === 'update' || change.kind === 'delete' ? await this.bind(change.relation) : undefined);
        const failed = change === abandon.change;
        await this.recordException(txn, change, bound, failed ? abandon.error : undefined, failed ? abandon.conflict : undefined);
      }
    }
    if (txn.finalLsn === this.resumeLsn) await this.session.unsafe(CLEAR_RESUME, [this.options.peer]);
    const prev = this.issuedEnd;
    await this.session.unsafe('SET CONSTRAINTS ALL IMMEDIATE');
    await this.session.unsafe(this.finishText, [formatLsn(prev), formatLsn(endLsn), formatPgTimestamp(commitTime)]);
    const result = await this.session.unsafe('COMMIT');
    await this.session.unsafe('SELECT pg_catalog.pg_replication_origin_xact_reset()');
    if ((result as unknown as { command?: string }).command !== 'COMMIT') {
      throw new PgmeshError('APPLY_FAILED', `careful apply of transaction ${formatLsn(txn.finalLsn)} from ${this.options.peer} did not commit`);
    }
    this.issuedEnd = endLsn;
    this.committed(txn, endLsn, commitTime);
    this.options.logger.warn(
      { peer: this.options.peer, transaction: formatLsn(txn.finalLsn), exceptions: this.stats.exceptions },
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
    await this.session.unsafe(
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
    this.stats.exceptions++;
    // The failing change's table and key; its values are in pgmesh.exception (and at debug level in the logs).
    if (error !== undefined) {
      this.options.logger.warn(
        { peer: this.options.peer, table: binding ? `${binding.local.schema}.${binding.local.name}` : null, key, sqlstate: sqlState(error) ?? null, err: messageWithoutValues(error) },
        'a change could not be applied; it is kept in pgmesh.exception',
      );
    }
    if (conflict && binding) {
      const relation = `${binding.local.schema}.${binding.local.name}`;
      await recordUniqueConflict(this.session, conflict, {
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

  // ---- the pipeline ----

  /** Sends a statement without waiting for its reply; waits only when too many replies are outstanding. */
  private issue(text: string, params: readonly (string | null)[], what: string, onResult?: (result: unknown) => void): Promise<void> | undefined {
    if (this.failure) return undefined;
    // The statement text counts too: a message of grouped statements carries its values as literals in it.
    let bytes = text.length;
    for (const p of params) bytes += p === null ? 0 : p.length;
    this.inflight++;
    this.inflightBytes += bytes;
    const finalLsn = this.txn?.finalLsn;
    const query = params.length > 0 ? this.session.unsafe(text, params as string[], { prepare: true }) : this.session.unsafe(text);
    query.then(
      (result) => {
        onResult?.(result);
        this.settled(bytes);
      },
      (error: unknown) => {
        if (!this.failure) this.failure = { error, what, finalLsn };
        this.wakeOnFailure?.();
        this.settled(bytes);
      },
    );
    if (this.inflight < this.options.maxInflightStatements && this.inflightBytes < MAX_INFLIGHT_BYTES && this.unconfirmed.length < MAX_UNCONFIRMED_TRANSACTIONS) {
      return undefined;
    }
    return new Promise((resolve) => {
      this.roomWaiter = resolve;
    });
  }

  private settled(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (
      this.roomWaiter &&
      this.inflight <= this.options.maxInflightStatements / 2 &&
      this.inflightBytes < MAX_INFLIGHT_BYTES / 2 &&
      // After a failure the failed message's transactions stay unconfirmed: the replies are what count then.
      (this.unconfirmed.length <= MAX_UNCONFIRMED_TRANSACTIONS / 2 || this.failure !== undefined || this.inflight === 0)
    ) {
      const wake = this.roomWaiter;
      this.roomWaiter = undefined;
      wake();
    }
    if (this.drainWaiter && this.inflight === 0) {
      const wake = this.drainWaiter;
      this.drainWaiter = undefined;
      wake();
    }
  }

  /**
   * The apply session's connection closed: its origin session and prepared statements are gone with it, so nothing
   * more may run on whatever connection the driver opens next. The applier stops (the peer replicator starts a new
   * one), without waiting for statements the driver holds for a reconnect.
   */
  private sessionClosed(): void {
    if (this.sessionGone) return;
    this.sessionGone = true;
    this.options.logger.info({ peer: this.options.peer, inflight: this.inflight }, 'apply session closed');
    if (!this.failure) {
      this.failure = {
        error: new PgmeshError('CONNECTION_FAILED', `the apply session on ${this.options.localNode} was closed (server restarted or connection lost)`),
        what: 'the apply session',
        finalLsn: this.txn?.finalLsn,
      };
    }
    this.wakeOnFailure?.();
    const room = this.roomWaiter;
    this.roomWaiter = undefined;
    room?.();
    const drained = this.drainWaiter;
    this.drainWaiter = undefined;
    drained?.();
  }

  private drain(): Promise<void> {
    if (this.inflight === 0 || this.sessionGone) return Promise.resolve();
    return new Promise((resolve) => {
      this.drainWaiter = resolve;
    });
  }

  /**
   * A peer sends a table or columns this node does not have. Most often the DDL that made them is on its way on
   * another peer's stream (n1 adds a column, n3 writes into it, and n3's rows reach n2 before n1's DDL does): the
   * stream stops and is tried again (the session's transaction rolls back, so the DDL is not kept waiting on its
   * locks) until the schema arrives, for up to schemaWait.waitMs from the first time. After that the table or
   * columns are taken as gone here (dropped or renamed locally): the change goes on without them, and what it loses
   * goes to the exception table. When DDL here took them away (pgmesh.ddl_log, src/ddl/ddl-lock-sql.ts), this
   * node is ahead of the peer, not behind: that happens at once, without waiting.
   */
  private async awaitSchema(relation: RelationMessage, missingColumns: readonly string[] | undefined): Promise<void> {
    const wait = this.options.schemaWait;
    if (!wait) return;
    if (await this.goneHere(relation, missingColumns)) return;
    const what = missingColumns ? `column${missingColumns.length > 1 ? 's' : ''} ${missingColumns.join(', ')} of table ${relation.schema}.${relation.name}` : `table ${relation.schema}.${relation.name}`;
    const key = `${relation.schema}.${relation.name}:${missingColumns?.join(',') ?? ''}`;
    const now = Date.now();
    const first = wait.firstSeen.get(key) ?? now;
    wait.firstSeen.set(key, first);
    if (now - first >= wait.waitMs) return;
    throw new PgmeshError(
      'SCHEMA_MISMATCH',
      `peer ${this.options.peer} sends ${what}, which ${missingColumns ? 'do' : 'does'} not exist on ${this.options.localNode} yet; waiting for the schema change to arrive (up to ${Math.round(wait.waitMs / 1000)} s, then applied without ${missingColumns ? 'them' : 'it'} and kept in the exception table)`,
      { context: { peer: this.options.peer, relation: `${relation.schema}.${relation.name}`, waitingForSchema: true } },
    );
  }

  /** Whether DDL on this node dropped or renamed the table (no columns given) or every one of the columns. */
  private async goneHere(relation: RelationMessage, missingColumns: readonly string[] | undefined): Promise<boolean> {
    const names = missingColumns ?? [''];
    // DDL applied in this transaction is seen by the apply session only.
    const rows = await (this.txn?.ddl ? this.session : this.catalog).unsafe<{ n: number }[]>(
      `SELECT count(*)::int AS n FROM pgmesh.ddl_log
        WHERE schema_name = $1 AND table_name = $2 AND column_name IN (SELECT jsonb_array_elements_text($3::text::jsonb))`,
      [relation.schema, relation.name, JSON.stringify(names)],
    );
    return rows[0]?.n === names.length;
  }

  private async bind(relation: RelationMessage): Promise<RelationBinding> {
    const cached = this.bindings.get(relation);
    if (cached && Date.now() - cached.at < BINDING_TTL_MS) return cached.binding;
    // After DDL in the transaction, only the apply session sees the tables as they are now.
    const local = await loadLocalRelation(this.txn?.ddl ? this.session : this.catalog, relation.schema, relation.name);
    if (!local) {
      await this.awaitSchema(relation, undefined);
      throw new PgmeshError(
        'UNKNOWN_TABLE',
        `peer ${this.options.peer} sends changes for table ${relation.schema}.${relation.name}, which does not exist on ${this.options.localNode}; create it there with the same columns and primary key`,
        { context: { peer: this.options.peer, relation: `${relation.schema}.${relation.name}` } },
      );
    }
    const reduction = reduceRelation(relation, new Set(local.columns.keys()));
    if (reduction) await this.awaitSchema(relation, reduction.missing);
    const binding = bindRelation(reduction?.relation ?? relation, local, { peer: this.options.peer, node: this.options.localNode });
    if (reduction) this.reductions.set(binding, reduction);
    if (!cached && relation.replicaIdentity !== 'f') {
      // Its updates that leave an out-of-line value unchanged cannot be applied whole (row-ops.ts).
      this.options.logger.warn(
        { peer: this.options.peer, relation: local.qualified, replicaIdentity: relation.replicaIdentity },
        `table ${local.qualified} is not REPLICA IDENTITY FULL on ${this.options.peer}; run "pgmesh tables add ${local.schema}.${local.name}" so that every node converges on its out-of-line values`,
      );
    }
    // A binding is replaced only when something in it changed, so batches keep their identity.
    const same = cached && JSON.stringify({ ...cached.binding.local, columns: [...cached.binding.local.columns] }) === JSON.stringify({ ...local, columns: [...local.columns] });
    const kept = same && cached ? cached.binding : binding;
    // A new binding of the table may have other column names (a column renamed here or on the peer, by DDL): the
    // statements built for the table are built again.
    if (kept === binding) for (const key of this.statements.keys()) if (key.includes(`:${local.qualified}:`)) this.statements.delete(key);
    this.bindings.set(relation, { binding: kept, at: Date.now() });
    return kept;
  }

  async close(): Promise<void> {
    this.sessionGone = true;
    await this.sql.end({ timeout: 2 }).catch(() => undefined);
  }
}

/** Cleared in the transaction that used the resume resolution, so it applies to that transaction only. */
const CLEAR_RESUME = 'UPDATE pgmesh.apply_progress SET resume_resolution = NULL WHERE peer = $1::text';

interface Progress {
  readonly start: Lsn;
  readonly resumeResolution: ConflictPolicy | undefined;
}

/**
 * How far this node has durably applied a peer's stream: what may be acknowledged to the peer (its slot then lets
 * that WAL go). The newest row of the progress log, committed with the transaction it counts, and on disk: the
 * origin progress call flushes WAL up to the origin's last local transaction, which covers that row's commit.
 * Not the origin progress itself: PostgreSQL also moves it when a transaction that has an xid aborts after
 * pg_replication_origin_xact_setup (or with a value left from an earlier setup in the session), so it can name a
 * transaction that never committed here; acknowledging that would make the peer skip it for good.
 */
export async function durableProgress(sql: Sql, peer: string, origin: string): Promise<Lsn | undefined> {
  const rows = await sql.unsafe<{ lsn: string | null }[]>(
    // No origin progress yet: nothing was flushed by it either, so nothing is known durable.
    `SELECT CASE WHEN o.lsn IS NULL THEN NULL ELSE LEAST(o.lsn, p.end_lsn) END::text AS lsn
       FROM (SELECT pg_catalog.pg_replication_origin_progress($1, true) AS lsn) o,
            (SELECT p.end_lsn FROM pgmesh.progress p WHERE p.peer = $2) p`,
    [origin, peer],
  );
  const lsn = rows[0]?.lsn;
  return lsn ? parseLsn(lsn) : undefined;
}

async function readProgress(session: Sql, options: ApplierOptions): Promise<Progress> {
  const rows = await session.unsafe<{ end_lsn: string; origin_lsn: string | null; resume_resolution: ConflictPolicy | null }[]>(
    `SELECT p.end_lsn::text AS end_lsn, pg_catalog.pg_replication_origin_progress(${quoteLiteral(options.origin)}, false)::text AS origin_lsn,
            p.resume_resolution
       FROM pgmesh.progress p WHERE p.peer = ${quoteLiteral(options.peer)}`,
  );
  const row = rows[0];
  if (!row) {
    throw new PgmeshError('NOT_INITIALIZED', `node ${options.localNode} has no progress row for peer ${options.peer}; run "pgmesh cluster create" to link them`);
  }
  if (row.origin_lsn !== null && row.origin_lsn !== row.end_lsn) {
    options.logger.warn({ peer: options.peer, progress: row.end_lsn, origin: row.origin_lsn }, 'origin progress differs from the progress row; resuming from the progress row');
  }
  return { start: parseLsn(row.end_lsn), resumeResolution: row.resume_resolution ?? undefined };
}

/**
 * Rows that can share one statement: same table binding and kind, the same columns sent, and for upserts the same
 * operation (inserts and updates have separate fast paths).
 */
/** Whether the batch already has a row with this primary key (a second write of a row needs a statement of its own). */
function touches(batch: Batch, key: string): boolean {
  if (!batch.keys) {
    if (batch.ops.length === 1) return batch.first.key === key;
    batch.keys = new Set(batch.ops.map((op) => op.key));
  }
  return batch.keys.has(key);
}

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

/** The part of a statement's cache key that names the values an update left unchanged (none, for most rows). */
function unchangedKey(op: RowOp): string {
  return op.unchangedPositions.length > 0 ? `:u${op.unchangedPositions.join(',')}` : '';
}

/** The unique indexes a binding's statements were built for (they name the indexes' OIDs). */
function uniqueKey(binding: RelationBinding): string {
  return binding.local.uniqueIndexes.map((index) => `${index.oid}(${index.columns.join(',')})`).join(';');
}

function rememberKeys(into: Map<string, { binding: RelationBinding; keys: (string | null)[][] }>, op: RowOp): void {
  const table = op.binding.local.qualified;
  let entry = into.get(table);
  if (!entry) {
    entry = { binding: op.binding, keys: op.keyValues.map(() => []) };
    into.set(table, entry);
  }
  op.keyValues.forEach((value, i) => entry.keys[i]?.push(value));
}

/** Adds up the summary rows of full statements (conflict, rel, n), in the results of a message or a statement. */
function countConflicts(txn: OpenTransaction, result: unknown): void {
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

export type { BatchKind };
