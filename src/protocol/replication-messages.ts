/**
 * The CopyData payloads of a START_REPLICATION ... LOGICAL stream (the CopyBoth framing is already removed).
 * Layout per https://www.postgresql.org/docs/current/protocol-replication.html, all integers big-endian:
 *
 *   XLogData (server -> us)                 Primary keepalive (server -> us)
 *     Byte1('w')                              Byte1('k')
 *     Int64 walStart  (LSN of data)           Int64 walEnd    (current end of WAL on the server)
 *     Int64 walEnd    (current end of WAL)    Int64 sendTime  (µs since 2000-01-01)
 *     Int64 sendTime  (µs since 2000-01-01)   Byte1 replyRequested (1: reply now or be timed out)
 *     Byten data      (one pgoutput message)
 *
 *   Standby status update (us -> server)
 *     Byte1('r')
 *     Int64 written   (last WAL byte + 1 received and written)
 *     Int64 flushed   (last WAL byte + 1 flushed: for us, applied and committed locally)
 *     Int64 applied   (last WAL byte + 1 applied)
 *     Int64 clientTime (µs since 2000-01-01)
 *     Byte1 replyRequested (1: ask the server to answer with a keepalive at once)
 *
 * LSNs are read unsigned, timestamps signed.
 */
import type { Lsn } from '../core/lsn.ts';
import type { PgTimestamp } from '../core/pg-time.ts';
import { BufferReader, describeByte } from './buffer-reader.ts';
import { BufferWriter } from './buffer-writer.ts';
import type { ReplicationMessage, StandbyStatusUpdate } from './messages.ts';

const XLOG_DATA = 0x77; // 'w'
const PRIMARY_KEEPALIVE = 0x6b; // 'k'
const STANDBY_STATUS_UPDATE = 0x72; // 'r'

/** Byte length of a standby status update: the tag, four Int64 and the reply flag. */
export const STANDBY_STATUS_UPDATE_LENGTH = 1 + 4 * 8 + 1;

/**
 * Decodes one CopyData payload. The `data` of an XLogData is a view into `payload` (no copy): decode it before
 * the payload's memory is reused.
 */
export function decodeReplicationMessage(payload: Buffer): ReplicationMessage {
  const reader = new BufferReader(payload, 'replication message');
  const tag = reader.uint8('message type');
  switch (tag) {
    case XLOG_DATA: {
      reader.describe('XLogData');
      const walStart = reader.uint64('walStart') as Lsn;
      const walEnd = reader.uint64('walEnd') as Lsn;
      const sendTime = reader.int64('sendTime') as PgTimestamp;
      return { kind: 'xlogdata', walStart, walEnd, sendTime, data: reader.rest() };
    }
    case PRIMARY_KEEPALIVE: {
      reader.describe('primary keepalive');
      const walEnd = reader.uint64('walEnd') as Lsn;
      const sendTime = reader.int64('sendTime') as PgTimestamp;
      // walsender sends 0 or 1; like PostgreSQL's walreceiver, any non-zero byte asks for a reply.
      const replyRequested = reader.uint8('replyRequested') !== 0;
      reader.end();
      return { kind: 'keepalive', walEnd, sendTime, replyRequested };
    }
    default:
      return reader.fail('message type', `unknown type ${describeByte(tag)}; expected 'w' (XLogData) or 'k' (keepalive)`, 0);
  }
}

export function encodeStandbyStatusUpdate(update: StandbyStatusUpdate): Buffer {
  return new BufferWriter(STANDBY_STATUS_UPDATE_LENGTH)
    .uint8(STANDBY_STATUS_UPDATE)
    .uint64(update.written)
    .uint64(update.flushed)
    .uint64(update.applied)
    .int64(update.clientTime)
    .uint8(update.replyRequested ? 1 : 0)
    .toBuffer();
}
