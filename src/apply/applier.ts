/**
 * Applies one peer's stream of remote transactions to the local node, each as one local transaction in an apply
 * session that replays the peer's origin (design.md, "Data path"):
 *
 *   BEGIN; <changes, batched into multi-row statements>; SELECT pgmesh.finish_apply(...); COMMIT;
 *   SELECT pg_replication_origin_xact_reset();
 *
 * finish_apply raises deferred constraint errors, writes the progress row in the same commit as the changes (so a
 * transaction whose changes all lost still advances progress), and sets the origin LSN and the remote commit
 * timestamp of the commit. Statements of many transactions are pipelined on the one connection without waiting
 * for replies; finish_apply only succeeds when the previous transaction's progress is visible, so if one
 * transaction fails, every transaction pipelined behind it fails too and nothing is applied out of order.
 * After a failure the session is dropped and the stream restarts from the durable progress.
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import { formatPgTimestamp, type PgTimestamp } from '../core/pg-time.ts';
import { sqlState } from '../core/sqlstate.ts';
import { openSql, type ReservedSql, type Sql } from '../pg/connect.ts';
import { quoteLiteral } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { RelationMessage, Tuple, TupleValue } from '../protocol/messages.ts';
import type { RemoteChange, StreamEvent } from '../stream/remote-transaction.ts';
import { bindRelation, loadLocalRelation, type RelationBinding } from './local-relation.ts';
import { buildStatement, type BatchKind } from './statement-builder.ts';

/** Parameter bytes in flight before the applier waits for replies (keeps a huge transaction's memory flat). */
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;

export interface ApplierOptions {
  readonly peer: string;
  readonly localNode: string;
  readonly origin: string;
  readonly maxBatchRows: number;
  readonly maxInflightStatements: number;
  readonly logger: Logger;
}

export interface ApplyStats {
  appliedXacts: number;
  appliedChanges: number;
  skippedXacts: number;
  lastCommitTime: PgTimestamp | undefined;
  lastAppliedAt: number;
}

interface EventSource {
  next(): Promise<StreamEvent[] | null>;
}

interface Batch {
  readonly signature: string;
  readonly kind: BatchKind;
  readonly binding: RelationBinding;
  readonly valuePositions: readonly number[];
  /** One array per source column (keys first for update/delete), one entry per row. */
  readonly columns: (string | null)[][];
  readonly keys: Set<string>;
  rows: number;
}

interface OpenTransaction {
  readonly finalLsn: Lsn;
  readonly commitTime: PgTimestamp;
  readonly skip: boolean;
  changes: number;
}

interface Failure {
  readonly error: unknown;
  readonly what: string;
}

export class Applier {
  readonly stats: ApplyStats = { appliedXacts: 0, appliedChanges: 0, skippedXacts: 0, lastCommitTime: undefined, lastAppliedAt: 0 };
  /** End LSN of the last transaction whose COMMIT succeeded. */
  appliedEnd: Lsn;
  /** End LSN of the last transaction sent to the server (committed or still in the pipeline). */
  private issuedEnd: Lsn;
  private readonly bindings = new WeakMap<RelationMessage, RelationBinding>();
  private readonly statements = new Map<string, string>();
  private txn: OpenTransaction | undefined;
  private batch: Batch | undefined;
  private inflight = 0;
  /** Bytes of parameters sent and not yet answered; bounds memory when transactions are large. */
  private inflightBytes = 0;
  private roomWaiter: (() => void) | undefined;
  private drainWaiter: (() => void) | undefined;
  private failure: Failure | undefined;

  private constructor(
    private readonly sql: Sql,
    private readonly session: ReservedSql,
    private readonly catalog: Sql,
    private readonly options: ApplierOptions,
    start: Lsn,
  ) {
    this.appliedEnd = start;
    this.issuedEnd = start;
  }

  /**
   * Opens the apply session on the local node and reads where the peer's stream must resume.
   * @param catalog a separate local connection for catalog look-ups (not the pipelined session)
   */
  static async open(localDsn: string, catalog: Sql, options: ApplierOptions): Promise<Applier> {
    const sql = openSql(localDsn, {
      node: options.localNode,
      applicationName: `pgmesh apply ${options.peer}`,
      logger: options.logger,
      max: 1,
      // Replica mode: user triggers and rules do not fire and foreign keys are not re-checked, as for native apply.
      // Asynchronous commit, as native apply: what is acknowledged to the peer is only what is flushed.
      parameters: { session_replication_role: 'replica', synchronous_commit: 'off' },
    });
    let session: ReservedSql | undefined;
    try {
      // postgres.js 3.4 never resolves reserve() while the pool has no open connection: open one first.
      await sql.unsafe('SELECT 1');
      session = await sql.reserve();
      await session.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup(${quoteLiteral(options.origin)})`);
      const rows = await session.unsafe<{ end_lsn: string; origin_lsn: string | null }[]>(
        `SELECT p.end_lsn::text AS end_lsn, pg_catalog.pg_replication_origin_progress(${quoteLiteral(options.origin)}, false)::text AS origin_lsn
           FROM pgmesh.apply_progress p WHERE p.peer = ${quoteLiteral(options.peer)}`,
      );
      const row = rows[0];
      if (!row) {
        throw new PgmeshError('NOT_INITIALIZED', `node ${options.localNode} has no progress row for peer ${options.peer}; run "pgmesh cluster create" to link them`);
      }
      const start = parseLsn(row.end_lsn);
      if (row.origin_lsn !== null && row.origin_lsn !== row.end_lsn) {
        options.logger.warn({ peer: options.peer, progress: row.end_lsn, origin: row.origin_lsn }, 'origin progress differs from the progress row; resuming from the progress row');
      }
      return new Applier(sql, session, catalog, options, start);
    } catch (error) {
      session?.release();
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
    try {
      for (;;) {
        const events = await source.next();
        if (events === null) break;
        for (const event of events) {
          const wait = this.handle(event);
          if (wait) await wait;
          if (this.failure) break;
        }
        if (this.failure) break;
      }
    } finally {
      await this.drain();
    }
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    const failure = this.failure;
    if (!failure) return;
    const cause = failure.error;
    const server = cause as { detail?: string; table_name?: string; constraint_name?: string };
    const detail = [server.detail, server.constraint_name ? `constraint ${server.constraint_name}` : undefined].filter(Boolean).join('; ');
    throw new PgmeshError(
      'APPLY_FAILED',
      `applying ${failure.what} from ${this.options.peer} on ${this.options.localNode} failed: ${errorMessage(cause)}${detail ? ` (${detail})` : ''}`,
      { cause, context: { peer: this.options.peer, sqlstate: sqlState(cause), applied: formatLsn(this.appliedEnd) } },
    );
  }

  private handle(event: StreamEvent): Promise<void> | undefined {
    switch (event.kind) {
      case 'begin': {
        // A redelivered transaction (its commit record lies before what is applied) is skipped whole.
        const skip = event.finalLsn < this.issuedEnd;
        this.txn = { finalLsn: event.finalLsn, commitTime: event.commitTime, skip, changes: 0 };
        if (skip) return undefined;
        return this.issue('BEGIN', [], 'BEGIN');
      }
      case 'change': {
        const txn = this.txn;
        if (!txn) throw new PgmeshError('PROTOCOL', 'change outside a transaction');
        if (txn.skip) return undefined;
        txn.changes++;
        return this.change(event.change);
      }
      case 'commit':
        return this.commit(event.endLsn, event.commitTime);
    }
  }

  private async change(change: RemoteChange): Promise<void> {
    switch (change.kind) {
      case 'insert': {
        const binding = await this.bind(change.relation);
        return this.addRow('insert', binding, binding.columns.map((_, i) => i), change.newTuple, change.newTuple);
      }
      case 'update': {
        const binding = await this.bind(change.relation);
        const sent = change.newTuple.flatMap((v, i) => (v.kind === 'unchanged' ? [] : [i]));
        if (sent.length < change.newTuple.length) {
          // Unchanged TOAST values were not sent: only an UPDATE of the existing row can keep them.
          return this.addRow('update', binding, sent, change.oldTuple ?? change.newTuple, change.newTuple);
        }
        if (change.oldTuple && keyChanged(binding, change.oldTuple, change.newTuple)) {
          // A changed primary key is the old row's delete and the new row's write, both under the remote version.
          await this.addRow('delete', binding, [], change.oldTuple, change.oldTuple);
        }
        // An update carries the whole row, so it is applied as an upsert: if the row has not arrived here yet (its
        // insert comes from a third node), it is created now and the late insert then loses to this newer version.
        return this.addRow('insert', binding, sent, change.newTuple, change.newTuple);
      }
      case 'delete': {
        const binding = await this.bind(change.relation);
        return this.addRow('delete', binding, [], change.oldTuple, change.oldTuple);
      }
      case 'truncate': {
        await this.flushBatch();
        const tables = await Promise.all(change.relations.map((r) => this.bind(r)));
        const names = tables.map((t) => t.local.qualified).join(', ');
        const sqlText = `TRUNCATE ${names}${change.restartIdentity ? ' RESTART IDENTITY' : ''}${change.cascade ? ' CASCADE' : ''}`;
        return this.issue(sqlText, [], `TRUNCATE ${names}`);
      }
      case 'message':
        // DDL and other pgmesh messages are handled by later stages; nothing else is expected here.
        this.options.logger.debug({ peer: this.options.peer, prefix: change.prefix }, 'logical message ignored');
        return undefined;
    }
  }

  private async addRow(kind: BatchKind, binding: RelationBinding, valuePositions: readonly number[], keyTuple: Tuple, valueTuple: Tuple): Promise<void> {
    const signature = `${kind}:${binding.local.qualified}:${valuePositions.join(',')}`;
    const keyValues = binding.keyPositions.map((p) => textOf(keyTuple[p], binding, p));
    const key = keyValues.join('\u0000');
    let batch = this.batch;
    if (batch && (batch.signature !== signature || batch.binding !== binding || batch.keys.has(key) || batch.rows >= this.options.maxBatchRows)) {
      await this.flushBatch();
      batch = undefined;
    }
    if (!batch) {
      const width = (kind === 'insert' ? 0 : binding.keyPositions.length) + valuePositions.length;
      batch = { signature, kind, binding, valuePositions, columns: Array.from({ length: width }, () => []), keys: new Set(), rows: 0 };
      this.batch = batch;
    }
    let c = 0;
    if (kind !== 'insert') for (const value of keyValues) (batch.columns[c++] as (string | null)[]).push(value);
    for (const p of valuePositions) (batch.columns[c++] as (string | null)[]).push(textOf(valueTuple[p], binding, p));
    batch.keys.add(key);
    batch.rows++;
  }

  private flushBatch(): Promise<void> | undefined {
    const batch = this.batch;
    if (!batch) return undefined;
    this.batch = undefined;
    const txn = this.txn;
    if (!txn) throw new PgmeshError('INTERNAL', 'batch outside a transaction');
    const multiRow = batch.rows > 1;
    const key = `${batch.signature}:${multiRow ? 'm' : 's'}`;
    let text = this.statements.get(key);
    if (!text) {
      text = buildStatement({ kind: batch.kind, binding: batch.binding, valuePositions: batch.valuePositions, multiRow });
      this.statements.set(key, text);
    }
    const params: (string | null)[] = multiRow
      ? batch.columns.map((column) => textArrayLiteral(column))
      : batch.columns.map((column) => column[0] ?? null);
    params.push(formatPgTimestamp(txn.commitTime), this.options.peer, this.options.localNode);
    this.stats.appliedChanges += batch.rows;
    return this.issue(text, params, `${batch.kind} of ${batch.rows} row(s) into ${batch.binding.local.qualified} (transaction at ${formatLsn(txn.finalLsn)})`);
  }

  private async commit(endLsn: Lsn, commitTime: PgTimestamp): Promise<void> {
    const txn = this.txn;
    if (!txn) throw new PgmeshError('PROTOCOL', 'commit outside a transaction');
    if (txn.skip) {
      this.txn = undefined;
      this.stats.skippedXacts++;
      return;
    }
    await this.flushBatch();
    this.txn = undefined;
    const prev = this.issuedEnd;
    this.issuedEnd = endLsn;
    await this.issue(
      'SELECT pgmesh.finish_apply($1::text, $2::text::pg_lsn, $3::text::pg_lsn, $4::text::timestamptz)',
      [this.options.peer, formatLsn(prev), formatLsn(endLsn), formatPgTimestamp(commitTime)],
      `transaction at ${formatLsn(txn.finalLsn)}`,
    );
    await this.issue('COMMIT', [], `COMMIT of transaction at ${formatLsn(txn.finalLsn)}`, (result) => {
      const command = (result as { command?: string } | undefined)?.command;
      if (command !== 'COMMIT') return; // rolled back: the failing statement has been recorded
      this.appliedEnd = endLsn;
      this.stats.appliedXacts++;
      this.stats.lastCommitTime = commitTime;
      this.stats.lastAppliedAt = Date.now();
    });
    // Without the reset, this transaction's origin LSN and timestamp would stick to the session's next commit.
    await this.issue('SELECT pg_catalog.pg_replication_origin_xact_reset()', [], 'origin reset');
  }

  /** Sends a statement without waiting for its reply; waits only when too many replies are outstanding. */
  private issue(text: string, params: readonly (string | null)[], what: string, onResult?: (result: unknown) => void): Promise<void> | undefined {
    if (this.failure) return undefined;
    let bytes = 0;
    for (const p of params) bytes += p === null ? 0 : p.length;
    this.inflight++;
    this.inflightBytes += bytes;
    const query = params.length > 0 ? this.session.unsafe(text, params as string[], { prepare: true }) : this.session.unsafe(text);
    query.then(
      (result) => {
        onResult?.(result);
        this.settled(bytes);
      },
      (error: unknown) => {
        if (!this.failure) this.failure = { error, what };
        this.settled(bytes);
      },
    );
    if (this.inflight < this.options.maxInflightStatements && this.inflightBytes < MAX_INFLIGHT_BYTES) return undefined;
    return new Promise((resolve) => {
      this.roomWaiter = resolve;
    });
  }

  private settled(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (this.roomWaiter && this.inflight <= this.options.maxInflightStatements / 2 && this.inflightBytes < MAX_INFLIGHT_BYTES / 2) {
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

  private drain(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.drainWaiter = resolve;
    });
  }

  private async bind(relation: RelationMessage): Promise<RelationBinding> {
    const cached = this.bindings.get(relation);
    if (cached) return cached;
    const local = await loadLocalRelation(this.catalog, relation.schema, relation.name);
    if (!local) {
      throw new PgmeshError(
        'UNKNOWN_TABLE',
        `peer ${this.options.peer} sends changes for table ${relation.schema}.${relation.name}, which does not exist on ${this.options.localNode}; create it there with the same columns and primary key`,
        { context: { peer: this.options.peer, relation: `${relation.schema}.${relation.name}` } },
      );
    }
    const binding = bindRelation(relation, local, { peer: this.options.peer, node: this.options.localNode });
    this.bindings.set(relation, binding);
    return binding;
  }

  async close(): Promise<void> {
    this.session.release();
    await this.sql.end({ timeout: 2 }).catch(() => undefined);
  }
}

function keyChanged(binding: RelationBinding, oldTuple: Tuple, newTuple: Tuple): boolean {
  return binding.keyPositions.some((p) => {
    const a = oldTuple[p];
    const b = newTuple[p];
    return a?.kind !== b?.kind || (a?.kind === 'text' && b?.kind === 'text' && a.value !== b.value);
  });
}

function textOf(value: TupleValue | undefined, binding: RelationBinding, position: number): string | null {
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
