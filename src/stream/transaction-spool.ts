/**
 * The changes of one transaction that a peer streams while it is still in progress, kept in a file until the peer
 * says how it ended: committed (the changes are then read back in order and applied as one transaction) or aborted
 * (the file is dropped), or one of its subtransactions aborted (the changes from that subtransaction's first one on
 * are dropped).
 *
 * Why streaming at all: a peer's walsender holds a transaction in memory up to logical_decoding_work_mem (64MB by
 * default); past that, without streaming, it spills the transaction to its own disk (once per slot, so once per
 * node that streams from it) and reads it all back at commit before sending a byte. Measured on a 1-million-row
 * transaction (PostgreSQL 17): decoding it through the SQL interface took 4.5 times as long without streaming; in
 * a live stream, where sending each message costs the walsender more than decoding it, its CPU went from 82% to 58%
 * of a core (bench/apply-throughput.ts --stream-large-transactions). With streaming, the spill happens here
 * instead, a sequential write and read of the bytes received. Off by default: see AgentTuning.streamLargeTransactions.
 *
 * Why a file: the transaction can be of any size and the agent's memory must not grow with it.
 *
 * Record format: Int32 length, then one pgoutput message exactly as received (its xid included).
 *
 * Subtransactions: the peer sends a streamed transaction's changes in order, each with the xid of the
 * (sub)transaction that made it. A subtransaction's abort is decoded after all its changes and before any change
 * of a later sibling, so everything from its first change on belongs to it or to its own subtransactions: cutting
 * the file there drops exactly its changes. Relation messages are the exception: the peer sends a relation's
 * description once per streamed transaction, possibly inside a subtransaction that later aborts, and does not send
 * it again; so the last description of each relation in the dropped part is written again after the cut.
 */
import { closeSync, ftruncateSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { PgmeshError } from '../core/errors.ts';

/** Bytes buffered before a write to the file. */
const WRITE_BUFFER_BYTES = 1024 * 1024;
/** Bytes read from the file at a time when the transaction is read back. */
const READ_CHUNK_BYTES = 1024 * 1024;

interface RelationRecord {
  /** Where the record starts in the spool. */
  readonly offset: number;
  readonly relationOid: number;
  readonly xid: number;
  readonly data: Buffer;
}

export class TransactionSpool {
  readonly path: string;
  private fd: number | undefined;
  /** Bytes in the file. */
  private written = 0;
  private buffer = Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
  /** Bytes used in the buffer. */
  private used = 0;
  /** Where each subtransaction's first record starts, and how many records were before it. */
  private readonly subtransactionStart = new Map<number, { readonly offset: number; readonly recordsBefore: number }>();
  private relations: RelationRecord[] = [];
  private records = 0;

  /**
   * @param dir folder for the file
   * @param name unique among the spools of this machine (the caller includes its slot, process and xid)
   * @param xid the top-level transaction's xid
   */
  constructor(
    dir: string,
    name: string,
    readonly xid: number,
  ) {
    this.path = join(dir, name);
    try {
      this.fd = openSync(this.path, 'w+', 0o600);
    } catch (cause) {
      throw new PgmeshError('INTERNAL', `cannot create the spool file ${this.path} for a streamed transaction: ${(cause as Error).message}; check that the folder exists and is writable`, {
        cause,
      });
    }
  }

  /** Records kept (after any cut). */
  get count(): number {
    return this.records;
  }

  /** Bytes kept. */
  get size(): number {
    return this.written + this.used;
  }

  /**
   * Keeps one message of the transaction.
   * @param xid the (sub)transaction the message carries
   * @param relationOid set when the message is a Relation message
   */
  append(xid: number, data: Buffer, relationOid?: number): void {
    const offset = this.size;
    if (xid !== this.xid && !this.subtransactionStart.has(xid)) this.subtransactionStart.set(xid, { offset, recordsBefore: this.records });
    if (relationOid !== undefined) this.relations.push({ offset, relationOid, xid, data: Buffer.from(data) });
    this.write(data);
    this.records++;
  }

  /** Drops the changes of an aborted subtransaction (and of its subtransactions). */
  abortSubtransaction(subXid: number): void {
    const start = this.subtransactionStart.get(subXid);
    // A subtransaction of which nothing was streamed: nothing to drop.
    if (start === undefined) return;
    const cut = start.offset;
    this.flush();
    const dropped = this.relations.filter((r) => r.offset >= cut);
    this.relations = this.relations.filter((r) => r.offset < cut);
    for (const [xid, other] of this.subtransactionStart) if (other.offset >= cut) this.subtransactionStart.delete(xid);
    this.records = start.recordsBefore;
    ftruncateSync(this.requireFd(), cut);
    this.written = cut;
    const lastOfEach = new Map<number, RelationRecord>();
    for (const record of dropped) lastOfEach.set(record.relationOid, record);
    // Written again as part of the top-level transaction: they describe the relation, whoever sent them.
    for (const record of lastOfEach.values()) this.append(this.xid, record.data, record.relationOid);
  }

  /** Reads the messages back, in order, a chunk at a time (so a large transaction never sits in memory whole). */
  *read(chunkBytes = READ_CHUNK_BYTES): Generator<Buffer[]> {
    this.flush();
    const fd = this.requireFd();
    let position = 0;
    let carry: Buffer = Buffer.alloc(0);
    // Bytes wanted from the file: a chunk, or at least what completes a record larger than a chunk.
    let want = chunkBytes;
    while (position < this.written) {
      const chunk = Buffer.allocUnsafe(Math.min(Math.max(chunkBytes, want), this.written - position));
      const n = readSync(fd, chunk, 0, chunk.length, position);
      if (n <= 0) throw new PgmeshError('INTERNAL', `the spool file ${this.path} ended early at byte ${position} of ${this.written}`);
      position += n;
      const data = carry.length > 0 ? Buffer.concat([carry, chunk.subarray(0, n)]) : chunk.subarray(0, n);
      const messages: Buffer[] = [];
      let at = 0;
      want = chunkBytes;
      while (at + 4 <= data.length) {
        const length = data.readInt32BE(at);
        if (at + 4 + length > data.length) {
          want = at + 4 + length - data.length;
          break;
        }
        messages.push(data.subarray(at + 4, at + 4 + length));
        at += 4 + length;
      }
      carry = data.subarray(at);
      if (messages.length > 0) yield messages;
    }
    if (carry.length > 0) throw new PgmeshError('INTERNAL', `the spool file ${this.path} ends inside a record`);
  }

  /** Removes the file. */
  discard(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
    rmSync(this.path, { force: true });
  }

  private write(data: Buffer): void {
    const need = 4 + data.length;
    if (this.used + need > this.buffer.length) this.flush();
    if (need > this.buffer.length) {
      // A message larger than the buffer goes straight to the file.
      const header = Buffer.allocUnsafe(4);
      header.writeInt32BE(data.length, 0);
      this.writeFully(header);
      this.writeFully(data);
      return;
    }
    this.buffer.writeInt32BE(data.length, this.used);
    data.copy(this.buffer, this.used + 4);
    this.used += need;
  }

  private flush(): void {
    if (this.used === 0) return;
    this.writeFully(this.buffer.subarray(0, this.used));
    this.used = 0;
  }

  private writeFully(bytes: Buffer): void {
    const fd = this.requireFd();
    let done = 0;
    while (done < bytes.length) {
      done += writeSync(fd, bytes, done, bytes.length - done, this.written + done);
    }
    this.written += bytes.length;
  }

  private requireFd(): number {
    if (this.fd === undefined) throw new PgmeshError('INTERNAL', `the spool file ${this.path} is already discarded`);
    return this.fd;
  }
}
