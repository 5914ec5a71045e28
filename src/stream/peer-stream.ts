/**
 * The inbound side for one peer: a replication connection streaming the peer's changes (pgoutput), decoded and
 * assembled into StreamEvents that the apply side pulls in batches.
 *
 * States: connecting -> streaming -> closed (or failed). A failure ends the stream for good; the agent opens a new
 * one (a new START_REPLICATION needs a new connection) from the locally durable progress.
 *
 * Invariants:
 * - The flush position sent to the peer is never ahead of what the apply side reported durable, except when every
 *   received transaction is durable and the peer's keepalive says nothing else was sent: then the keepalive position.
 * - Memory is bounded: when `highWaterEvents` events wait unapplied, the socket is paused (TCP backpressure).
 */
import type { Duplex } from 'node:stream';
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { LSN_ZERO, formatLsn, maxLsn, type Lsn } from '../core/lsn.ts';
import { pgTimestampFromDate, type PgTimestamp } from '../core/pg-time.ts';
import type { PgOutputMessage, RelationMessage } from '../protocol/messages.ts';
import { decodePgOutput } from '../protocol/pgoutput-decoder.ts';
import { decodeReplicationMessage, encodeStandbyStatusUpdate } from '../protocol/replication-messages.ts';
import type { ReplicationConnection } from '../pg/replication-connection.ts';
import type { ProgressSink, RemoteChange, StreamEvent } from './remote-transaction.ts';

export interface PeerStreamOptions {
  readonly peer: string;
  readonly slot: string;
  readonly publication: string;
  readonly startLsn: Lsn;
  readonly protocolVersion: number;
  readonly feedbackIntervalMs: number;
  readonly highWaterEvents: number;
  readonly logger: Logger;
}

export interface PeerStreamStats {
  receivedBytes: number;
  receivedMessages: number;
  lastReceivedLsn: Lsn;
  lastKeepaliveLsn: Lsn;
  lastMessageAt: number;
  /** Commit time of the last transaction received, as the peer's clock read it. */
  lastCommitTime: bigint;
  /** Send time (peer's clock) of the last keepalive. */
  lastKeepaliveSendTime: PgTimestamp | undefined;
}

export class PeerStream implements ProgressSink {
  readonly stats: PeerStreamStats = {
    receivedBytes: 0,
    receivedMessages: 0,
    lastReceivedLsn: LSN_ZERO,
    lastKeepaliveLsn: LSN_ZERO,
    lastMessageAt: 0,
    lastCommitTime: 0n,
    lastKeepaliveSendTime: undefined,
  };
  private readonly relations = new Map<number, RelationMessage>();
  private queue: StreamEvent[] = [];
  private waiter: { resolve: (events: StreamEvent[] | null) => void; reject: (e: unknown) => void } | undefined;
  private failure: unknown;
  private ended = false;
  private paused = false;
  private inTransaction = false;
  private lastCommitEnd: Lsn;
  private durable: Lsn;
  private feedbackTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly connection: ReplicationConnection,
    private readonly duplex: Duplex,
    private readonly options: PeerStreamOptions,
  ) {
    this.durable = options.startLsn;
    this.lastCommitEnd = options.startLsn;
  }

  static async start(connection: ReplicationConnection, options: PeerStreamOptions): Promise<PeerStream> {
    const duplex = await connection.startReplication(options.slot, options.startLsn, options.publication, options.protocolVersion);
    const stream = new PeerStream(connection, duplex, options);
    stream.attach();
    return stream;
  }

  private attach(): void {
    // Flowing mode with pause()/resume(): each 'data' chunk is exactly one CopyData payload, which the
    // framing of XLogData needs (its data runs to the end of the CopyData message).
    this.duplex.on('data', (chunk: Buffer) => {
      try {
        this.onCopyData(chunk);
      } catch (error) {
        this.fail(error);
      }
    });
    this.duplex.on('error', (error) => this.fail(error));
    this.duplex.on('end', () => this.fail(new PgmeshError('CONNECTION_FAILED', `peer ${this.options.peer} ended the replication stream`)));
    this.duplex.on('close', () => {
      if (!this.ended) this.fail(new PgmeshError('CONNECTION_FAILED', `replication connection to peer ${this.options.peer} closed`));
    });
    this.feedbackTimer = setInterval(() => this.sendFeedback(false), this.options.feedbackIntervalMs);
    this.feedbackTimer.unref();
  }

  private onCopyData(chunk: Buffer): void {
    this.stats.receivedBytes += chunk.length;
    this.stats.lastMessageAt = Date.now();
    const message = decodeReplicationMessage(chunk);
    if (message.kind === 'keepalive') {
      this.stats.lastKeepaliveLsn = maxLsn(this.stats.lastKeepaliveLsn, message.walEnd);
      this.stats.lastKeepaliveSendTime = message.sendTime;
      if (message.replyRequested) this.sendFeedback(true);
      return;
    }
    this.stats.receivedMessages++;
    if (message.walEnd > this.stats.lastReceivedLsn) this.stats.lastReceivedLsn = message.walEnd;
    const decoded = decodePgOutput(message.data, { protocolVersion: this.options.protocolVersion, streaming: false });
    const event = this.assemble(decoded);
    if (event) this.push(event);
  }

  /** Turns pgoutput messages into events; relations are resolved here so the apply side gets whole changes. */
  private assemble(message: PgOutputMessage): StreamEvent | undefined {
    switch (message.tag) {
      case 'begin':
        if (this.inTransaction) throw this.protocolError('BEGIN inside a transaction');
        this.inTransaction = true;
        return { kind: 'begin', xid: message.xid, finalLsn: message.finalLsn, commitTime: message.commitTime };
      case 'commit':
        if (!this.inTransaction) throw this.protocolError('COMMIT outside a transaction');
        this.inTransaction = false;
        this.lastCommitEnd = message.endLsn;
        this.stats.lastCommitTime = message.commitTime;
        return { kind: 'commit', commitLsn: message.commitLsn, endLsn: message.endLsn, commitTime: message.commitTime };
      case 'relation':
        this.relations.set(message.relationOid, message);
        return undefined;
      case 'type':
      case 'origin':
        // With origin 'none' the peer sends only its own changes; type messages matter only for binary mode.
        return undefined;
      case 'insert':
        return this.change({ kind: 'insert', relation: this.relation(message.relationOid), newTuple: message.newTuple });
      case 'update':
        return this.change({
          kind: 'update',
          relation: this.relation(message.relationOid),
          oldTuple: message.oldTuple,
          newTuple: message.newTuple,
        });
      case 'delete':
        return this.change({ kind: 'delete', relation: this.relation(message.relationOid), oldTuple: message.oldTuple });
      case 'truncate':
        return this.change({
          kind: 'truncate',
          relations: message.relationOids.map((oid) => this.relation(oid)),
          cascade: message.cascade,
          restartIdentity: message.restartIdentity,
        });
      case 'message':
        if (!message.transactional) return undefined;
        return this.change({ kind: 'message', prefix: message.prefix, content: message.content, lsn: message.lsn });
      default:
        throw this.protocolError(`unexpected ${message.tag} message (streaming of in-progress transactions is off)`);
    }
  }

  private change(change: RemoteChange): StreamEvent {
    if (!this.inTransaction) throw this.protocolError(`${change.kind} outside a transaction`);
    return { kind: 'change', change };
  }

  private relation(oid: number): RelationMessage {
    const relation = this.relations.get(oid);
    if (!relation) throw this.protocolError(`change for relation OID ${oid} before its Relation message`);
    return relation;
  }

  private protocolError(what: string): PgmeshError {
    return new PgmeshError('PROTOCOL', `stream from peer ${this.options.peer}: ${what}`, {
      context: { peer: this.options.peer, lsn: formatLsn(this.stats.lastReceivedLsn) },
    });
  }

  private push(event: StreamEvent): void {
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter.resolve([event]);
      return;
    }
    this.queue.push(event);
    if (!this.paused && this.queue.length >= this.options.highWaterEvents) {
      this.paused = true;
      this.duplex.pause();
    }
  }

  /** The next events in order; waits when none are queued. Null once the stream was closed. */
  next(): Promise<StreamEvent[] | null> {
    if (this.queue.length > 0) {
      const events = this.queue;
      this.queue = [];
      if (this.paused) {
        this.paused = false;
        this.duplex.resume();
      }
      return Promise.resolve(events);
    }
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  reportDurable(lsn: Lsn): void {
    if (lsn > this.durable) this.durable = lsn;
  }

  /** The position we can acknowledge: durable progress, or the keepalive position when everything received is durable. */
  flushPosition(): Lsn {
    const caughtUp = !this.inTransaction && this.queue.length === 0 && this.durable >= this.lastCommitEnd;
    return caughtUp ? maxLsn(this.durable, this.stats.lastKeepaliveLsn) : this.durable;
  }

  /**
   * When everything received is durably applied and the peer has said (keepalive) that nothing else was sent:
   * the peer's clock reading of that keepalive. Everything the peer committed before it is applied here.
   */
  caughtUpPeerTime(): PgTimestamp | undefined {
    const caughtUp = !this.inTransaction && this.queue.length === 0 && this.durable >= this.lastCommitEnd;
    return caughtUp ? this.stats.lastKeepaliveSendTime : undefined;
  }

  private sendFeedback(replyRequested: boolean): void {
    if (this.ended || this.failure !== undefined) return;
    const flushed = this.flushPosition();
    const payload = encodeStandbyStatusUpdate({
      written: maxLsn(this.stats.lastReceivedLsn, flushed),
      flushed,
      applied: flushed,
      clientTime: pgTimestampFromDate(new Date()),
      replyRequested: false,
    });
    this.duplex.write(payload);
    if (replyRequested) this.options.logger.debug({ peer: this.options.peer, flushed: formatLsn(flushed) }, 'keepalive answered');
  }

  private fail(error: unknown): void {
    if (this.failure !== undefined || this.ended) return;
    this.failure = error;
    this.stopTimers();
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter.reject(error);
    }
  }

  private stopTimers(): void {
    if (this.feedbackTimer) clearInterval(this.feedbackTimer);
    this.feedbackTimer = undefined;
  }

  async close(): Promise<void> {
    if (!this.ended) {
      // A last status update so the peer's slot advances as far as is durable.
      if (this.failure === undefined) {
        try {
          this.sendFeedback(false);
        } catch {
          // the connection is going away anyway
        }
      }
      this.ended = true;
    }
    this.stopTimers();
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter.resolve(null);
    }
    // No CopyFail/CopyDone handshake: the walsender only needs the connection gone, and waiting for its reply to
    // a CopyDone can take as long as its next keepalive.
    this.duplex.removeAllListeners('data');
    await this.connection.close();
  }
}
