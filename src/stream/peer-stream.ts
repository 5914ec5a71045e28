/**
 * The inbound side for one peer: a replication connection streaming the peer's changes (pgoutput), decoded and
 * assembled into StreamEvents that the apply side pulls in batches.
 *
 * Two state variables, each with its transitions checked (design.md, "PeerStream"):
 * - the lifecycle: streaming -> reading-back (a committed streamed transaction is read back from its spool; what
 *   arrives meanwhile waits) -> streaming; streaming or reading-back -> failed (the error is kept) -> closed; any ->
 *   closed. A failure ends the stream for good; the agent opens a new one (a new START_REPLICATION needs a new
 *   connection) from the locally durable progress.
 * - the protocol position: between transactions -> in a transaction (Begin ... Commit) -> between; between -> in a
 *   stream block (Stream Start ... Stream Stop of one xid) -> between. Stream Abort and Stream Commit come between.
 * Whether the socket is paused is not a state of the stream: it follows from the queue, the backlog and the
 * lifecycle (updateFlow), and mirrors the socket's own state.
 *
 * Invariants:
 * - The flush position sent to the peer is never ahead of what the apply side reported durable, except when every
 *   received transaction is durable and the peer's keepalive says nothing else was sent: then the keepalive position.
 * - Memory is bounded: when `highWaterEvents` events wait unapplied, the socket is paused (TCP backpressure).
 * - Transactions are handed over whole and in commit order. A transaction the peer streams while in progress (it
 *   outgrew the peer's logical_decoding_work_mem) is kept in a spool file (TransactionSpool) until its Stream
 *   Commit, then read back as begin, changes, commit; while it is read back, what arrives after it waits.
 */
import { readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
import { TransactionSpool } from './transaction-spool.ts';

export interface PeerStreamOptions {
  readonly peer: string;
  readonly slot: string;
  readonly publication: string;
  readonly startLsn: Lsn;
  /**
   * How far this node's apply of the peer is known flushed at start (durableProgress, which flushes): the stream may
   * acknowledge that much before the apply side reports anything. Not startLsn: what the last agent committed with
   * asynchronous commit may not be on disk yet, and a crash of this server would lose what the peer already forgot.
   */
  readonly durableLsn: Lsn;
  /**
   * Keepalive positions are acknowledged no further than this, raised by keepaliveRecorded() once the caller has
   * recorded a position durably; undefined: no limit.
   */
  readonly recordedKeepaliveLsn?: Lsn | undefined;
  readonly protocolVersion: number;
  readonly feedbackIntervalMs: number;
  readonly highWaterEvents: number;
  readonly logger: Logger;
  /** Ask the peer to stream large transactions while in progress (see AgentTuning.streamLargeTransactions). */
  readonly streamLargeTransactions?: boolean;
  /** Where streamed in-progress transactions are spooled (default: the system's temporary folder). */
  readonly spoolDir?: string;
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
  /** Transactions the peer streamed while in progress: committed (applied from a spool), aborted. */
  streamedCommitted: number;
  streamedAborted: number;
}

/** pgoutput tags of the messages a streamed transaction carries with its xid: Relation, Type, Insert, Update, Delete, Truncate, Message. */
const PGOUTPUT_RELATION = 0x52;
const SPOOLED_TAGS = new Set([PGOUTPUT_RELATION, 0x59, 0x49, 0x55, 0x44, 0x54, 0x4d]);

type Lifecycle =
  | { readonly kind: 'streaming' }
  | { readonly kind: 'reading-back' }
  | { readonly kind: 'failed'; readonly error: unknown }
  | { readonly kind: 'closed'; readonly error: unknown };

type Position = { readonly kind: 'between' } | { readonly kind: 'transaction' } | { readonly kind: 'stream-block'; readonly xid: number };

const LIFECYCLE: Readonly<Record<Lifecycle['kind'], readonly Lifecycle['kind'][]>> = {
  streaming: ['reading-back', 'failed', 'closed'],
  'reading-back': ['streaming', 'failed', 'closed'],
  failed: ['closed'],
  closed: [],
};

const POSITION: Readonly<Record<Position['kind'], readonly Position['kind'][]>> = {
  between: ['transaction', 'stream-block'],
  transaction: ['between'],
  'stream-block': ['between'],
};

export class PeerStream implements ProgressSink {
  readonly stats: PeerStreamStats = {
    receivedBytes: 0,
    receivedMessages: 0,
    lastReceivedLsn: LSN_ZERO,
    lastKeepaliveLsn: LSN_ZERO,
    lastMessageAt: 0,
    lastCommitTime: 0n,
    lastKeepaliveSendTime: undefined,
    streamedCommitted: 0,
    streamedAborted: 0,
  };
  private readonly relations = new Map<number, RelationMessage>();
  private queue: StreamEvent[] = [];
  private waiter: { resolve: (events: StreamEvent[] | null) => void; reject: (e: unknown) => void } | undefined;
  private life: Lifecycle = { kind: 'streaming' };
  private position: Position = { kind: 'between' };
  /** The socket is paused (see updateFlow). */
  private paused = false;
  private readonly spools = new Map<number, TransactionSpool>();
  private readonly spoolDir: string;
  private backlog: Buffer[] = [];
  /** Wakes the read-back when the apply side took the queue. */
  private drained: (() => void) | undefined;
  private lastCommitEnd: Lsn;
  private durable: Lsn;
  /** How far keepalive positions may be acknowledged (undefined: no limit). */
  private recordedKeepalive: Lsn | undefined;
  private feedbackTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly connection: ReplicationConnection,
    private readonly duplex: Duplex,
    private readonly options: PeerStreamOptions,
  ) {
    this.durable = options.durableLsn < options.startLsn ? options.durableLsn : options.startLsn;
    this.recordedKeepalive = options.recordedKeepaliveLsn;
    this.lastCommitEnd = options.startLsn;
    this.spoolDir = options.spoolDir ?? tmpdir();
  }

  static async start(connection: ReplicationConnection, options: PeerStreamOptions): Promise<PeerStream> {
    removeStaleSpools(options.spoolDir ?? tmpdir(), options.slot, options.logger);
    const duplex = await connection.startReplication(options.slot, options.startLsn, options.publication, options.protocolVersion, {
      streaming: options.streamLargeTransactions === true,
    });
    const stream = new PeerStream(connection, duplex, options);
    stream.attach();
    return stream;
  }

  private live(next: Lifecycle): void {
    if (!LIFECYCLE[this.life.kind].includes(next.kind)) throw new PgmeshError('INTERNAL', `stream from peer ${this.options.peer}: no transition from ${this.life.kind} to ${next.kind}`);
    this.life = next;
  }

  /** Moves the protocol position; a message out of place is the peer's protocol error. */
  private move(next: Position, what: string): void {
    if (!POSITION[this.position.kind].includes(next.kind)) throw this.protocolError(`${what} ${this.position.kind === 'between' ? 'outside a transaction' : this.position.kind === 'transaction' ? 'inside a transaction' : 'inside a stream block'}`);
    this.position = next;
  }

  /** Failed or closed: nothing more is received, decoded or sent. */
  private get over(): boolean {
    return this.life.kind === 'failed' || this.life.kind === 'closed';
  }

  /** The xid of the streamed transaction whose block is being received, if one is. */
  private get streamBlock(): number | undefined {
    return this.position.kind === 'stream-block' ? this.position.xid : undefined;
  }

  private attach(): void {
    // Flowing mode with pause()/resume(): each 'data' chunk is exactly one CopyData payload, which the
    // framing of XLogData needs (its data runs to the end of the CopyData message).
    this.duplex.on('data', (chunk: Buffer) => {
      if (this.life.kind === 'reading-back') {
        this.backlog.push(chunk);
        this.updateFlow();
        return;
      }
      try {
        this.onCopyData(chunk);
      } catch (error) {
        this.fail(error);
      }
    });
    this.duplex.on('error', (error) => this.fail(error));
    this.duplex.on('end', () => this.fail(new PgmeshError('CONNECTION_FAILED', `peer ${this.options.peer} ended the replication stream`)));
    this.duplex.on('close', () => {
      if (this.life.kind !== 'closed') this.fail(new PgmeshError('CONNECTION_FAILED', `replication connection to peer ${this.options.peer} closed`));
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
    if (this.streamBlock !== undefined && this.spoolRaw(message.data)) return;
    const decoded = decodePgOutput(message.data, {
      protocolVersion: this.options.protocolVersion,
      streaming: true,
      inStreamedTransaction: this.streamBlock !== undefined,
    });
    if (this.streamBlock !== undefined || decoded.tag.startsWith('stream_')) {
      this.onStreamed(decoded);
      return;
    }
    const event = this.assemble(decoded);
    if (event) this.push(event);
  }

  /** A Stream Start, Stop, Abort or Commit: a spool opened, a block ended, changes dropped, or a transaction read back. */
  private onStreamed(message: PgOutputMessage): void {
    switch (message.tag) {
      case 'stream_start': {
        this.move({ kind: 'stream-block', xid: message.xid }, 'Stream Start');
        if (!this.spools.has(message.xid)) {
          if (!message.firstSegment) throw this.protocolError(`Stream Start continues transaction ${message.xid}, whose first segment was not received`);
          const name = `pgmesh-spool-${this.options.slot}-${process.pid}-${this.options.peer}-${message.xid}`;
          this.spools.set(message.xid, new TransactionSpool(this.spoolDir, name, message.xid));
        }
        return;
      }
      case 'stream_stop':
        if (this.position.kind !== 'stream-block') throw this.protocolError('Stream Stop outside a stream block');
        this.move({ kind: 'between' }, 'Stream Stop');
        return;
      case 'stream_abort': {
        if (this.position.kind !== 'between') throw this.protocolError('Stream Abort inside a stream block');
        const spool = this.spools.get(message.xid);
        if (!spool) return; // nothing of it was received
        if (message.subXid === message.xid) {
          spool.discard();
          this.spools.delete(message.xid);
          this.stats.streamedAborted++;
        } else {
          spool.abortSubtransaction(message.subXid);
        }
        return;
      }
      case 'stream_commit': {
        if (this.position.kind !== 'between') throw this.protocolError('Stream Commit inside a transaction');
        const spool = this.spools.get(message.xid);
        if (!spool) throw this.protocolError(`Stream Commit of transaction ${message.xid}, of which nothing was received`);
        this.spools.delete(message.xid);
        this.live({ kind: 'reading-back' });
        this.updateFlow();
        void this.readBack(spool, message);
        return;
      }
      default:
        // The changes of a stream block were kept by spoolRaw before decoding; anything else is out of place.
        throw this.protocolError(`unexpected ${message.tag} message inside a stream block`);
    }
  }

  /**
   * Keeps a change of a streamed transaction without decoding it: its tag and xid (and a relation's OID) are all
   * the spool needs now, and the whole message is decoded, with every check, when it is read back. (Decoding the
   * tuples twice cost as much as the rest of receiving.) False for what is not a change: it is decoded as usual.
   */
  private spoolRaw(data: Buffer): boolean {
    const tag = data[0];
    if (tag === undefined || !SPOOLED_TAGS.has(tag)) return false;
    if (data.length < (tag === PGOUTPUT_RELATION ? 9 : 5)) throw this.protocolError(`a streamed '${String.fromCharCode(tag)}' message of ${data.length} bytes is too short`);
    this.requireSpool().append(data.readUInt32BE(1), data, tag === PGOUTPUT_RELATION ? data.readUInt32BE(5) : undefined);
    return true;
  }

  private requireSpool(): TransactionSpool {
    const spool = this.streamBlock === undefined ? undefined : this.spools.get(this.streamBlock);
    if (!spool) throw this.protocolError('a streamed change outside a stream block');
    return spool;
  }

  /**
   * Hands over a committed streamed transaction from its spool: begin, the changes in order, commit, as for any
   * transaction; then what arrived meanwhile. Waits for the apply side whenever the queue is full.
   */
  private async readBack(spool: TransactionSpool, commit: Extract<PgOutputMessage, { tag: 'stream_commit' }>): Promise<void> {
    try {
      this.push(this.assemble({ tag: 'begin', xid: commit.xid, finalLsn: commit.commitLsn, commitTime: commit.commitTime }) as StreamEvent);
      const decodeOptions = { protocolVersion: this.options.protocolVersion, streaming: true, inStreamedTransaction: true };
      for (const messages of spool.read()) {
        for (const data of messages) {
          const event = this.assemble(decodePgOutput(data, decodeOptions));
          if (event) this.push(event);
        }
        while (this.queue.length >= this.options.highWaterEvents && !this.over) {
          await new Promise<void>((resolve) => {
            this.drained = resolve;
          });
        }
        if (this.over) return;
      }
      this.push(
        this.assemble({ tag: 'commit', flags: commit.flags, commitLsn: commit.commitLsn, endLsn: commit.endLsn, commitTime: commit.commitTime }) as StreamEvent,
      );
      this.stats.streamedCommitted++;
    } catch (error) {
      this.fail(error);
      return;
    } finally {
      spool.discard();
    }
    if (this.life.kind === 'reading-back') this.live({ kind: 'streaming' });
    while (this.life.kind === 'streaming' && this.backlog.length > 0) {
      const chunk = this.backlog.shift() as Buffer;
      try {
        this.onCopyData(chunk);
      } catch (error) {
        this.fail(error);
      }
    }
    this.updateFlow();
  }

  /** Turns pgoutput messages into events; relations are resolved here so the apply side gets whole changes. */
  private assemble(message: PgOutputMessage): StreamEvent | undefined {
    switch (message.tag) {
      case 'begin':
        if (this.position.kind !== 'between') throw this.protocolError('BEGIN inside a transaction');
        this.move({ kind: 'transaction' }, 'BEGIN');
        return { kind: 'begin', xid: message.xid, finalLsn: message.finalLsn, commitTime: message.commitTime };
      case 'commit':
        if (this.position.kind !== 'transaction') throw this.protocolError('COMMIT outside a transaction');
        this.move({ kind: 'between' }, 'COMMIT');
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
    if (this.position.kind !== 'transaction') throw this.protocolError(`${change.kind} outside a transaction`);
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
    if (!this.paused && this.queue.length >= this.options.highWaterEvents) this.updateFlow();
  }

  /** Pauses the socket while the queue is full or a streamed transaction is read back; resumes it otherwise. */
  private updateFlow(): void {
    const hold = this.life.kind === 'reading-back' || this.backlog.length > 0 || this.queue.length >= this.options.highWaterEvents;
    if (hold && !this.paused) {
      this.paused = true;
      this.duplex.pause();
    } else if (!hold && this.paused && this.life.kind !== 'closed') {
      this.paused = false;
      this.duplex.resume();
    }
  }

  private wakeReadBack(): void {
    const drained = this.drained;
    this.drained = undefined;
    drained?.();
  }

  /** The next events in order; waits when none are queued. Null once the stream was closed. */
  next(): Promise<StreamEvent[] | null> {
    if (this.queue.length > 0) {
      const events = this.queue;
      this.queue = [];
      this.wakeReadBack();
      this.updateFlow();
      return Promise.resolve(events);
    }
    if (this.life.kind === 'failed') return Promise.reject(this.life.error);
    if (this.life.kind === 'closed') return this.life.error === undefined ? Promise.resolve(null) : Promise.reject(this.life.error);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  reportDurable(lsn: Lsn): void {
    if (lsn > this.durable) this.durable = lsn;
  }

  /**
   * The position we can acknowledge: durable progress, or the keepalive position when everything received is durable
   * (with `recordedKeepaliveLsn` set: no further than the keepalive position recorded on this node, see
   * keepaliveToRecord).
   */
  flushPosition(): Lsn {
    const caughtUp = this.idle() && this.durable >= this.lastCommitEnd;
    if (!caughtUp) return this.durable;
    const keepalive = this.recordedKeepalive === undefined || this.stats.lastKeepaliveLsn < this.recordedKeepalive ? this.stats.lastKeepaliveLsn : this.recordedKeepalive;
    return maxLsn(this.durable, keepalive);
  }

  /**
   * A keepalive position that could be acknowledged once it is recorded durably on this node (pgmesh.peer_ack), so
   * that a node restored from a backup can tell that it lost what it had acknowledged; undefined when there is none.
   */
  keepaliveToRecord(): Lsn | undefined {
    if (this.recordedKeepalive === undefined) return undefined;
    const caughtUp = this.idle() && this.durable >= this.lastCommitEnd;
    return caughtUp && this.stats.lastKeepaliveLsn > this.recordedKeepalive && this.stats.lastKeepaliveLsn > this.durable ? this.stats.lastKeepaliveLsn : undefined;
  }

  keepaliveRecorded(lsn: Lsn): void {
    if (this.recordedKeepalive !== undefined && lsn > this.recordedKeepalive) this.recordedKeepalive = lsn;
  }

  /**
   * When everything received is durably applied and the peer has said (keepalive) that nothing else was sent:
   * the peer's clock reading of that keepalive. Everything the peer committed before it is applied here.
   */
  caughtUpPeerTime(): PgTimestamp | undefined {
    const caughtUp = this.idle() && this.durable >= this.lastCommitEnd;
    return caughtUp ? this.stats.lastKeepaliveSendTime : undefined;
  }

  /** Nothing received is unfinished here: no transaction open, streamed or read back, nothing queued. */
  private idle(): boolean {
    return this.position.kind === 'between' && this.queue.length === 0 && this.spools.size === 0 && this.life.kind !== 'reading-back' && this.backlog.length === 0;
  }

  private sendFeedback(replyRequested: boolean): void {
    if (this.over) return;
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
    if (this.over) return;
    this.live({ kind: 'failed', error });
    this.stopTimers();
    this.wakeReadBack();
    this.discardSpools();
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter.reject(error);
    }
  }

  private discardSpools(): void {
    for (const spool of this.spools.values()) spool.discard();
    this.spools.clear();
  }

  private stopTimers(): void {
    if (this.feedbackTimer) clearInterval(this.feedbackTimer);
    this.feedbackTimer = undefined;
  }

  async close(): Promise<void> {
    if (this.life.kind !== 'closed') {
      // A last status update so the peer's slot advances as far as is durable.
      if (this.life.kind !== 'failed') {
        try {
          this.sendFeedback(false);
        } catch {
          // the connection is going away anyway
        }
      }
      this.live({ kind: 'closed', error: this.life.kind === 'failed' ? this.life.error : undefined });
    }
    this.stopTimers();
    this.wakeReadBack();
    this.discardSpools();
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

/**
 * Spool files of this slot left by an agent process that no longer runs (killed while a streamed transaction was
 * open): the peer streams such a transaction again from its start, so they are of no use.
 */
function removeStaleSpools(dir: string, slot: string, logger: Logger): void {
  const prefix = `pgmesh-spool-${slot}-`;
  let names: string[];
  try {
    names = readdirSync(dir).filter((name) => name.startsWith(prefix));
  } catch {
    return;
  }
  for (const name of names) {
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (!Number.isInteger(pid) || pid === process.pid || processRuns(pid)) continue;
    rmSync(join(dir, name), { force: true });
    logger.debug({ file: name }, 'removed the spool file of a stopped agent');
  }
}

function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
