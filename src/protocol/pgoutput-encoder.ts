/**
 * The exact inverse of pgoutput-decoder.ts and of decodeReplicationMessage: what a walsender would send. pgmesh never
 * sends these to a server; tests and benchmarks use them to produce streams. Byte layouts are documented in
 * pgoutput-decoder.ts and replication-messages.ts.
 *
 * A message that the decoder could not give back unchanged under the same options is refused with a RangeError:
 * an xid outside a streamed transaction (or none inside one), abort LSN/time without parallel streaming (or
 * missing with it), a NUL inside a String, numbers out of range.
 */
import { BufferWriter } from './buffer-writer.ts';
import type { PrimaryKeepalive, PgOutputMessage, Tuple, XLogData } from './messages.ts';
import {
  checkPgOutputOptions,
  hasAbortInfo,
  MESSAGE_TRANSACTIONAL,
  PgOutputTag,
  RELATION_COLUMN_IS_KEY,
  TRUNCATE_CASCADE,
  TRUNCATE_RESTART_IDENTITY,
  TupleByte,
  type PgOutputOptions,
} from './pgoutput-decoder.ts';

export function encodePgOutput(msg: PgOutputMessage, options: PgOutputOptions): Buffer {
  checkPgOutputOptions(options);
  const w = new BufferWriter(64);
  w.uint8(PgOutputTag[msg.tag]);
  switch (msg.tag) {
    case 'begin':
      w.uint64(msg.finalLsn).int64(msg.commitTime).uint32(msg.xid);
      break;
    case 'commit':
      w.uint8(msg.flags).uint64(msg.commitLsn).uint64(msg.endLsn).int64(msg.commitTime);
      break;
    case 'origin':
      w.uint64(msg.originLsn).cstring(msg.name);
      break;
    case 'relation':
      writeStreamXid(w, msg.tag, msg.xid, options);
      w.uint32(msg.relationOid).cstring(msg.schema).cstring(msg.name).char(msg.replicaIdentity).uint16(msg.columns.length);
      for (const column of msg.columns) {
        w.uint8(column.isKey ? RELATION_COLUMN_IS_KEY : 0)
          .cstring(column.name)
          .uint32(column.typeOid)
          .int32(column.typeModifier);
      }
      break;
    case 'type':
      writeStreamXid(w, msg.tag, msg.xid, options);
      w.uint32(msg.typeOid).cstring(msg.schema).cstring(msg.name);
      break;
    case 'insert':
      writeStreamXid(w, msg.tag, msg.xid, options);
      w.uint32(msg.relationOid).uint8(TupleByte.newTuple);
      writeTuple(w, msg.newTuple);
      break;
    case 'update':
      writeStreamXid(w, msg.tag, msg.xid, options);
      w.uint32(msg.relationOid);
      if ((msg.oldKind === undefined) !== (msg.oldTuple === undefined)) {
        throw new RangeError('an update has both oldKind and oldTuple, or neither');
      }
      if (msg.oldKind !== undefined && msg.oldTuple !== undefined) {
        w.uint8(msg.oldKind === 'key' ? TupleByte.oldKey : TupleByte.oldRow);
        writeTuple(w, msg.oldTuple);
      }
      w.uint8(TupleByte.newTuple);
      writeTuple(w, msg.newTuple);
      break;
    case 'delete':
      writeStreamXid(w, msg.tag, msg.xid, options);
      w.uint32(msg.relationOid).uint8(msg.oldKind === 'key' ? TupleByte.oldKey : TupleByte.oldRow);
      writeTuple(w, msg.oldTuple);
      break;
    case 'truncate': {
      writeStreamXid(w, msg.tag, msg.xid, options);
      const flags = (msg.cascade ? TRUNCATE_CASCADE : 0) | (msg.restartIdentity ? TRUNCATE_RESTART_IDENTITY : 0);
      w.int32(msg.relationOids.length).uint8(flags);
      for (const oid of msg.relationOids) w.uint32(oid);
      break;
    }
    case 'message':
      writeStreamXid(w, msg.tag, msg.xid, options);
      w.uint8(msg.transactional ? MESSAGE_TRANSACTIONAL : 0)
        .uint64(msg.lsn)
        .cstring(msg.prefix)
        .int32(msg.content.length)
        .bytes(msg.content);
      break;
    case 'stream_start':
      w.uint32(msg.xid).uint8(msg.firstSegment ? 1 : 0);
      break;
    case 'stream_stop':
      break;
    case 'stream_commit':
      w.uint32(msg.xid).uint8(msg.flags).uint64(msg.commitLsn).uint64(msg.endLsn).int64(msg.commitTime);
      break;
    case 'stream_abort': {
      w.uint32(msg.xid).uint32(msg.subXid);
      const withInfo = hasAbortInfo(options);
      const { abortLsn, abortTime } = msg;
      if (withInfo && abortLsn !== undefined && abortTime !== undefined) {
        w.uint64(abortLsn).int64(abortTime);
      } else if (withInfo || abortLsn !== undefined || abortTime !== undefined) {
        throw new RangeError('abortLsn and abortTime are sent exactly when protocolVersion >= 4 and parallelStreaming');
      }
      break;
    }
  }
  return w.toBuffer();
}

/** The CopyData payload of an XLogData ('w') carrying `data`. */
export function encodeXLogData(msg: Omit<XLogData, 'kind'>): Buffer {
  return new BufferWriter(25 + msg.data.length)
    .char('w')
    .uint64(msg.walStart)
    .uint64(msg.walEnd)
    .int64(msg.sendTime)
    .bytes(msg.data)
    .toBuffer();
}

/** The CopyData payload of a primary keepalive ('k'). */
export function encodeKeepalive(msg: Omit<PrimaryKeepalive, 'kind'>): Buffer {
  return new BufferWriter(18)
    .char('k')
    .uint64(msg.walEnd)
    .int64(msg.sendTime)
    .uint8(msg.replyRequested ? 1 : 0)
    .toBuffer();
}

function writeStreamXid(w: BufferWriter, tag: string, xid: number | undefined, options: PgOutputOptions): void {
  if (options.inStreamedTransaction) {
    if (xid === undefined) throw new RangeError(`a ${tag} message inside a streamed transaction needs an xid`);
    w.uint32(xid);
  } else if (xid !== undefined) {
    throw new RangeError(`a ${tag} message outside a streamed transaction carries no xid (got ${xid})`);
  }
}

function writeTuple(w: BufferWriter, tuple: Tuple): void {
  w.uint16(tuple.length);
  for (const value of tuple) {
    switch (value.kind) {
      case 'null':
        w.uint8(TupleByte.null);
        break;
      case 'unchanged':
        w.uint8(TupleByte.unchanged);
        break;
      case 'text':
        w.uint8(TupleByte.text).int32(Buffer.byteLength(value.value, 'utf8')).utf8(value.value);
        break;
      case 'binary':
        w.uint8(TupleByte.binary).int32(value.value.length).bytes(value.value);
        break;
    }
  }
}
