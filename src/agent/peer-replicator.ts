/**
 * Keeps one inbound stream (peer P -> this node) running: opens the apply session, the replication connection and
 * the stream from the durable progress, applies until something fails, then starts over after a backoff.
 *
 * States: starting -> streaming -> (error) -> waiting -> starting ... ; stop() from any state -> stopped.
 * Invariant: at most one stream and one apply session per peer exist at a time (the previous ones are closed
 * before the next start), so the replication origin is never set up twice.
 * stop() ends the session in progress wherever it is: a connection still being opened is given up, and each step of
 * the start-up checks whether a stop came while it waited (a stream started after stop() would never end).
 */
import { PgmeshError, errorMessage, serverValues } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, LSN_ZERO, parseLsn, type Lsn } from '../core/lsn.ts';
import { formatPgTimestamp } from '../core/pg-time.ts';
import { SQLSTATE, isApplyRetrySqlState, isDataSqlState } from '../core/sqlstate.ts';
import { Applier, durableProgress } from '../apply/applier.ts';
import { PUBLICATION } from '../cluster/catalog-schema.ts';
import { readLinkNames } from '../cluster/link-names.ts';
import type { Sql } from '../pg/connect.ts';
import { ReplicationConnection } from '../pg/replication-connection.ts';
import { verifyPeerIdentity } from '../cluster/peer-identity.ts';
import { FutureCommitGuard, type FutureHold } from './future-commits.ts';
import { PeerStream } from '../stream/peer-stream.ts';
import { ackFloor } from '../membership/slot-health.ts';
import type { AgentTuning } from '../config/config.ts';

export type PeerState = 'starting' | 'streaming' | 'waiting' | 'paused' | 'stopped';

export interface PeerStatus {
  readonly peer: string;
  readonly state: PeerState;
  readonly appliedLsn: string;
  readonly receivedLsn: string;
  readonly appliedXacts: number;
  readonly appliedChanges: number;
  readonly skippedXacts: number;
  /** Transactions applied again with the full statements after their fast path met a conflict. */
  readonly fastPathMisses: number;
  /** Transactions applied again in place after a deadlock, a serialization failure or a lock timeout. */
  readonly applyRetries: number;
  /** Transactions the peer streamed while in progress (larger than its logical_decoding_work_mem): committed, aborted. */
  readonly streamedXacts: number;
  readonly streamedAborted: number;
  readonly lastAppliedAt: string | null;
  readonly restarts: number;
  /** Times the stream stopped to wait for a table or columns the peer sends and this node lacks (tuning.schemaWaitMs). */
  readonly schemaWaits: number;
  readonly exceptions: number;
  readonly conflicts: Readonly<Record<string, number>>;
  readonly conflictsByTable: Readonly<Record<string, number>>;
  readonly pausedReason: string | null;
  /** A transaction held because its commit timestamp is ahead of the local clock (future-commits.ts), if any. */
  readonly futureHold: FutureHold | null;
  /** Transactions held so far for that reason. */
  readonly futureHolds: number;
  readonly lastError: { readonly code: string; readonly message: string; readonly at: string } | null;
}

export interface PeerReplicatorOptions {
  readonly peer: string;
  readonly peerDsn: string;
  readonly localNode: string;
  readonly localDsn: string;
  readonly catalog: Sql;
  readonly tuning: AgentTuning;
  readonly logger: Logger;
  /** The local clock (ms since the epoch) against which peers' commit timestamps are judged; tests fake it. */
  readonly now?: () => number;
}

/** How often the stream is tried again while a peer's table or columns are waited for (tuning.schemaWaitMs). */
const SCHEMA_RETRY_MS = 500;

export class PeerReplicator {
  private state: PeerState = 'starting';
  private stopped = false;
  private applier: Applier | undefined;
  private stream: PeerStream | undefined;
  private restarts = 0;
  private schemaWaits = 0;
  private lastError: PeerStatus['lastError'] = null;
  private totals = { appliedXacts: 0, appliedChanges: 0, skippedXacts: 0, exceptions: 0, fastPathMisses: 0, applyRetries: 0, streamedXacts: 0, streamedAborted: 0, lastAppliedAt: 0 };
  private readonly conflicts: Record<string, number> = {};
  private readonly conflictsByTable: Record<string, number> = {};
  /** A transaction that failed on its data: the next session applies it change by change. */
  private carefulLsn: Lsn | undefined;
  /** A transaction where the fast path missed and which could not be replayed in place: the next session applies it with the full statements. */
  private fullLsn: Lsn | undefined;
  private pausedReason: string | null = null;
  /** Tables and columns of the peer that this node lacked, and since when (kept across sessions: see Applier.awaitSchema). */
  private readonly schemaFirstSeen = new Map<string, number>();
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  /** Aborted by stop(): gives up what the session in progress is opening. */
  private readonly stopping = new AbortController();
  /** Holds transactions whose commit timestamps are ahead of the local clock (future-commits.ts). */
  private readonly future: FutureCommitGuard;
  /** The session's replication connection before its stream has started (stop() closes it). */
  private connecting: ReplicationConnection | undefined;

  constructor(private readonly options: PeerReplicatorOptions) {
    this.future = new FutureCommitGuard({
      peer: options.peer,
      localNode: options.localNode,
      holdMs: options.tuning.futureCommitHoldMs,
      pauseMs: options.tuning.futureCommitPauseMs,
      logger: options.logger,
      signal: this.stopping.signal,
      ...(options.now ? { now: options.now } : {}),
    });
  }

  start(): void {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const log = this.options.logger;
    let attempt = 0;
    while (!this.stopped) {
      this.state = 'starting';
      try {
        if (await this.waitWhilePaused()) break;
        await this.session(() => {
          attempt = 0;
          this.lastError = null;
        });
      } catch (error) {
        if (this.stopped) break;
        const code = error instanceof PgmeshError ? error.code : 'INTERNAL';
        const sqlstate = error instanceof PgmeshError ? error.context.sqlstate : undefined;
        const transaction = error instanceof PgmeshError ? error.context.transaction : undefined;
        if (error instanceof PgmeshError && error.context.waitingForSchema === true) {
          // Not a failure: the DDL that makes the table or columns is on its way on another peer's stream.
          log.info({ peer: this.options.peer, relation: error.context.relation }, errorMessage(error));
          this.restarts++;
          this.schemaWaits++;
          this.state = 'waiting';
          await this.sleep(SCHEMA_RETRY_MS);
          continue;
        }
        if (sqlstate === SQLSTATE.fastPathMiss && typeof transaction === 'string') {
          // Not a problem: a large transaction met a conflict on the fast path, too large to replay in place.
          log.info({ peer: this.options.peer, transaction }, 'applying a large transaction again with the full statements');
          this.fullLsn = parseLsn(transaction);
          this.totals.fastPathMisses++;
          this.restarts++;
          attempt = 0;
          continue;
        }
        if ((code === 'NOT_INITIALIZED' || code === 'SLOT_MISSING') && (await this.peerRemoved())) {
          // "pgmesh node remove": the link is gone; a reload of the configuration drops this stream for good.
          log.warn({ peer: this.options.peer }, 'peer was removed from the cluster; stopped streaming from it');
          this.pausedReason = 'removed from the cluster';
          break;
        }
        const message =
          sqlstate === SQLSTATE.insufficientPrivilege
            ? `${errorMessage(error)}; the agent's role lacks a privilege: "pgmesh check" lists each one with the GRANT that fixes it`
            : errorMessage(error);
        this.lastError = { code, message, at: new Date().toISOString() };
        // A deadlock, serialization failure or lock timeout that outlasted its retries in place (apply-retry.ts):
        // local sessions in the way, not a fault of pgmesh or of the data.
        if (typeof sqlstate === 'string' && isApplyRetrySqlState(sqlstate)) log.warn({ peer: this.options.peer, code, sqlstate, err: message }, 'stream from peer restarted after its retries in place; will retry');
        else log.error({ peer: this.options.peer, code, err: message }, 'stream from peer stopped; will retry');
        // The row's values, which the message leaves out (personal data), only when asked for.
        const values = serverValues(error);
        if (values) log.debug({ peer: this.options.peer, ...values }, 'the server\'s own words about that failure');
        // A connection string that reaches another node: paused in the catalog (status shows why), not retried until
        // the operator has fixed it and resumed.
        if (sqlstate === SQLSTATE.conflictPause || sqlstate === SQLSTATE.exceptionPause || code === 'PEER_MISMATCH' || code === 'CLOCK_AHEAD') {
          await this.pause(errorMessage(error));
          continue;
        }
        if (typeof sqlstate === 'string' && isDataSqlState(sqlstate) && typeof transaction === 'string') {
          // The transaction failed on its data: apply it change by change now, without a long backoff.
          this.carefulLsn = parseLsn(transaction);
          attempt = 0;
        }
      }
      if (this.stopped) break;
      this.restarts++;
      this.state = 'waiting';
      // Exponential backoff with jitter (half fixed, half random), so agents of a restarted cluster do not retry in lockstep.
      const ceiling = Math.min(this.options.tuning.retryMaxMs, this.options.tuning.retryBaseMs * 2 ** Math.min(attempt, 10));
      attempt++;
      await this.sleep(ceiling / 2 + Math.random() * (ceiling / 2));
    }
    this.state = 'stopped';
  }

  /** The peer's link was removed from the catalog (pgmesh node remove). */
  private async peerRemoved(): Promise<boolean> {
    const rows = await this.options.catalog
      .unsafe(`SELECT 1 FROM pgmesh.peer WHERE node_name = $1`, [this.options.peer])
      .catch(() => undefined);
    return rows !== undefined && rows.length === 0;
  }

  /** Marks the peer paused in the catalog (so a restarted agent stays paused) until "pgmesh resume". */
  private async pause(reason: string): Promise<void> {
    this.pausedReason = reason;
    await this.options.catalog
      .unsafe(`UPDATE pgmesh.apply_progress SET paused_at = now(), paused_reason = $2 WHERE peer = $1`, [this.options.peer, reason])
      .catch((error) => this.options.logger.error({ peer: this.options.peer, err: errorMessage(error) }, 'could not record the pause'));
    this.options.logger.error({ peer: this.options.peer, reason }, 'peer paused; repair, then run "pgmesh resume"');
  }

  /** Waits while the catalog says the peer is paused; true when the agent is stopping. */
  private async waitWhilePaused(): Promise<boolean> {
    for (;;) {
      const rows = await this.options.catalog.unsafe<{ paused_reason: string | null; paused: boolean }[]>(
        `SELECT paused_reason, paused_at IS NOT NULL AS paused FROM pgmesh.apply_progress WHERE peer = $1`,
        [this.options.peer],
      );
      const row = rows[0];
      if (!row?.paused) {
        this.pausedReason = null;
        return this.stopped;
      }
      this.state = 'paused';
      this.pausedReason = row.paused_reason;
      await this.sleep(1000);
      if (this.stopped) return true;
    }
  }

  private async session(onStreaming: () => void): Promise<void> {
    const { peer, localNode, tuning, logger } = this.options;
    // The link's names, as recorded when it was made (src/cluster/link-names.ts: old links keep old names).
    const names = await readLinkNames(this.options.catalog, peer);
    if (!names?.slot) {
      throw new PgmeshError(
        'SLOT_MISSING',
        `${localNode} has no link from ${peer}${names ? ' with a slot' : ''}, so it cannot receive ${peer}'s changes; run "pgmesh cluster create" (or "pgmesh node add") to link the nodes`,
        { context: { peer } },
      );
    }
    const slot = names.slot;
    const origin = names.origin;
    const applier = await Applier.open(this.options.localDsn, this.options.catalog, {
      peer,
      localNode,
      origin,
      maxBatchRows: tuning.maxBatchRows,
      maxInflightStatements: tuning.maxInflightStatements,
      conflictWindowMs: tuning.conflictWindowMs,
      lockTimeoutMs: tuning.lockTimeoutMs,
      applyRetries: tuning.applyRetries,
      schemaWait: { firstSeen: this.schemaFirstSeen, waitMs: tuning.schemaWaitMs },
      carefulLsn: this.carefulLsn,
      fullLsn: this.fullLsn,
      logger,
    });
    this.applier = applier;
    let poll: NodeJS.Timeout | undefined;
    try {
      if (this.stopped) return;
      const connection = await ReplicationConnection.open(this.options.peerDsn, peer, `pgmesh ${localNode}`, logger, this.stopping.signal);
      if (this.stopped) {
        await connection.close();
        return;
      }
      this.connecting = connection;
      // Whom it reached, before anything else: a connection string pointed elsewhere streams nothing.
      try {
        const node = await connection.pgmeshNode();
        await verifyPeerIdentity(this.options.catalog, localNode, peer, { ...connection.system, ...node }, logger);
      } catch (error) {
        await connection.close();
        throw error;
      }
      const state = await connection.slotState(slot).catch(async (error) => {
        await connection.close();
        throw error;
      });
      if (!state.exists || state.walStatus === 'lost') {
        await connection.close();
        throw new PgmeshError(
          'SLOT_MISSING',
          state.exists
            ? `slot ${slot} on ${peer} was invalidated (it fell behind max_slot_wal_keep_size); ${localNode} has lost part of ${peer}'s changes and needs a resync`
            : `slot ${slot} is missing on ${peer}, so ${localNode} cannot receive ${peer}'s changes; run "pgmesh cluster create" to link the nodes`,
          { context: { peer, slot } },
        );
      }
      // Every position this node acknowledged is at or below its progress or its recorded keepalive position (the
      // seed row 0/0 and no record: nothing acknowledged yet). A slot past both: this node lost what it had
      // acknowledged (restored from a backup), and the peer has forgotten what lies between.
      const acked = await ackFloor(this.options.catalog, peer).catch(async (error) => {
        await connection.close();
        throw error;
      });
      if (acked.known && state.confirmedFlush !== null && parseLsn(state.confirmedFlush) > acked.lsn) {
        await connection.close();
        throw new PgmeshError(
          'SLOT_MISSING',
          `slot ${slot} on ${peer} says ${localNode} acknowledged ${peer}'s changes up to ${state.confirmedFlush}, but ${localNode} holds them only up to ${formatLsn(acked.lsn)}: ${localNode} was restored from a backup (or lost its WAL) and has lost part of ${peer}'s changes; it needs a resync (pgmesh node resync ${localNode})`,
          { context: { peer, slot } },
        );
      }
      if (state.active) {
        await connection.close();
        throw new PgmeshError('CONNECTION_FAILED', `slot ${slot} on ${peer} is in use by process ${state.activePid}; is another agent for ${localNode} running?`, {
          context: { peer, slot },
        });
      }
      // Flushes this node's WAL as far as the origin's progress and reads what is now on disk: the only position
      // the new stream may acknowledge before the applier reports more.
      const durableAtStart = await durableProgress(this.options.catalog, peer, origin).catch(async (error) => {
        await connection.close();
        throw error;
      });
      const stream = await PeerStream.start(connection, {
        peer,
        slot,
        publication: PUBLICATION,
        startLsn: applier.appliedEnd,
        durableLsn: durableAtStart ?? LSN_ZERO,
        recordedKeepaliveLsn: acked.recorded,
        protocolVersion: 4,
        feedbackIntervalMs: tuning.feedbackIntervalMs,
        highWaterEvents: tuning.highWaterEvents,
        streamLargeTransactions: tuning.streamLargeTransactions,
        logger,
      });
      this.stream = stream;
      this.connecting = undefined;
      // stop() came while the stream was starting: it found no stream to close; the finally below closes it.
      if (this.stopped) return;
      this.state = 'streaming';
      onStreaming();
      logger.info({ peer, from: formatLsn(applier.appliedEnd) }, 'streaming from peer');
      // What the peer may forget is only what is flushed here, not merely committed (asynchronous commit).
      let polls = 0;
      let ticks = 0;
      let recording = false;
      poll = setInterval(() => {
        // Now and then, fold the peer's progress log into its count, so the log stays a few rows long.
        if (ticks++ % 10 === 0) {
          this.options.catalog
            .unsafe(`SELECT pgmesh.prune_applied($1)`, [peer])
            .catch((error) => logger.debug({ peer, err: errorMessage(error) }, 'progress log pruning failed'));
        }
        // A keepalive position is recorded (synchronous commit) before it is acknowledged; at most once a second.
        const keepalive = ticks % Math.max(1, Math.round(1000 / tuning.progressPollMs)) === 0 ? stream.keepaliveToRecord() : undefined;
        if (keepalive !== undefined && !recording) {
          recording = true;
          this.options.catalog
            .unsafe(
              `INSERT INTO pgmesh.peer_ack (peer, acked_lsn) VALUES ($1, $2::text::pg_lsn)
               ON CONFLICT (peer) DO UPDATE SET acked_lsn = greatest(pgmesh.peer_ack.acked_lsn, EXCLUDED.acked_lsn)`,
              [peer, formatLsn(keepalive)],
            )
            .then(() => stream.keepaliveRecorded(keepalive))
            .catch((error) => logger.debug({ peer, err: errorMessage(error) }, 'recording the acknowledged position failed'))
            .finally(() => (recording = false));
        }
        durableProgress(this.options.catalog, peer, origin)
          .then((lsn) => {
            if (lsn !== undefined) stream.reportDurable(lsn);
          })
          .catch((error) => logger.debug({ peer, err: errorMessage(error) }, 'progress poll failed'));
        // Now and then, record how far this peer is applied by its own clock (bounds tombstone collection).
        const caughtUp = stream.caughtUpPeerTime();
        if (caughtUp !== undefined && polls++ % 10 === 0) {
          this.options.catalog
            .unsafe(
              `INSERT INTO pgmesh.peer_horizon (peer, caught_up_ts) VALUES ($1, $2::text::timestamptz)
               ON CONFLICT (peer) DO UPDATE SET caught_up_ts = greatest(pgmesh.peer_horizon.caught_up_ts, EXCLUDED.caught_up_ts)`,
              [peer, formatPgTimestamp(caughtUp)],
            )
            .catch((error) => logger.debug({ peer, err: errorMessage(error) }, 'horizon update failed'));
        }
      }, tuning.progressPollMs);
      poll.unref();
      await this.future.calibrate(this.options.catalog);
      await applier.run(this.future.wrap(stream));
    } finally {
      this.connecting = undefined;
      if (poll) clearInterval(poll);
      this.totals.appliedXacts += applier.stats.appliedXacts;
      this.totals.appliedChanges += applier.stats.appliedChanges;
      this.totals.skippedXacts += applier.stats.skippedXacts;
      this.totals.exceptions += applier.stats.exceptions;
      this.totals.fastPathMisses += applier.stats.fastPathMisses;
      this.totals.applyRetries += applier.stats.applyRetries;
      for (const [k, n] of Object.entries(applier.stats.conflicts)) this.conflicts[k] = (this.conflicts[k] ?? 0) + n;
      for (const [k, n] of Object.entries(applier.stats.conflictsByTable)) this.conflictsByTable[k] = (this.conflictsByTable[k] ?? 0) + n;
      this.totals.lastAppliedAt = Math.max(this.totals.lastAppliedAt, applier.stats.lastAppliedAt);
      const ended = this.stream;
      this.stream = undefined;
      if (ended) {
        this.totals.streamedXacts += ended.stats.streamedCommitted;
        this.totals.streamedAborted += ended.stats.streamedAborted;
        await ended.close().catch(() => undefined);
      }
      await applier.close();
      this.applier = undefined;
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  status(): PeerStatus {
    const a = this.applier?.stats;
    const lastAppliedAt = Math.max(this.totals.lastAppliedAt, a?.lastAppliedAt ?? 0);
    return {
      peer: this.options.peer,
      state: this.state,
      appliedLsn: this.applier ? formatLsn(this.applier.appliedEnd) : '-',
      receivedLsn: this.stream ? formatLsn(this.stream.stats.lastReceivedLsn) : '-',
      appliedXacts: this.totals.appliedXacts + (a?.appliedXacts ?? 0),
      appliedChanges: this.totals.appliedChanges + (a?.appliedChanges ?? 0),
      skippedXacts: this.totals.skippedXacts + (a?.skippedXacts ?? 0),
      fastPathMisses: this.totals.fastPathMisses + (a?.fastPathMisses ?? 0),
      applyRetries: this.totals.applyRetries + (a?.applyRetries ?? 0),
      streamedXacts: this.totals.streamedXacts + (this.stream?.stats.streamedCommitted ?? 0),
      streamedAborted: this.totals.streamedAborted + (this.stream?.stats.streamedAborted ?? 0),
      lastAppliedAt: lastAppliedAt > 0 ? new Date(lastAppliedAt).toISOString() : null,
      restarts: this.restarts,
      schemaWaits: this.schemaWaits,
      exceptions: this.totals.exceptions + (a?.exceptions ?? 0),
      conflicts: sumCounts(this.conflicts, a?.conflicts),
      conflictsByTable: sumCounts(this.conflictsByTable, a?.conflictsByTable),
      pausedReason: this.pausedReason,
      futureHold: this.future.held,
      futureHolds: this.future.holds,
      lastError: this.lastError,
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    this.wake?.();
    this.applier?.interrupt();
    await this.connecting?.close();
    await this.stream?.close().catch(() => undefined);
    await this.loop;
  }
}

function sumCounts(a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>> | undefined): Record<string, number> {
  const out: Record<string, number> = { ...a };
  for (const [k, n] of Object.entries(b ?? {})) out[k] = (out[k] ?? 0) + n;
  return out;
}
