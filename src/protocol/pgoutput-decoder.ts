/**
 * Decoder of pgoutput messages: the `data` of one XLogData. Byte layouts follow
 * https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html (integers big-endian; String is
 * NUL-terminated UTF-8; OIDs and XIDs are read unsigned, LSNs unsigned 64-bit, timestamps signed 64-bit µs since
 * 2000-01-01). `[xid]` is an Int32 xid present only inside a streamed transaction (between Stream Start and Stream Stop):
 *
 *   Begin          'B' Int64 finalLsn, Int64 commitTime, Int32 xid
 *   Commit         'C' Int8 flags, Int64 commitLsn, Int64 endLsn, Int64 commitTime
 *   Origin         'O' Int64 originLsn (commit LSN on the origin), String name
 *   Relation       'R' [xid] Int32 oid, String namespace, String name, Int8 replica identity ('d'/'n'/'f'/'i'),
 *                      Int16 ncols, ncols x (Int8 flags (1 = part of the key), String name, Int32 type oid, Int32 atttypmod)
 *   Type           'Y' [xid] Int32 type oid, String namespace, String name
 *   Insert         'I' [xid] Int32 relation oid, 'N' TupleData
 *   Update         'U' [xid] Int32 relation oid, optional ('K' | 'O') TupleData, 'N' TupleData
 *   Delete         'D' [xid] Int32 relation oid, ('K' | 'O') TupleData
 *   Truncate       'T' [xid] Int32 nrels, Int8 options (1 = CASCADE, 2 = RESTART IDENTITY), nrels x Int32 relation oid
 *   Message        'M' [xid] Int8 flags (1 = transactional), Int64 lsn, String prefix, Int32 length, Byte<length> content
 *   Stream Start   'S' Int32 xid, Int8 first segment (1 = first)
 *   Stream Stop    'E'
 *   Stream Commit  'c' Int32 xid, Int8 flags, Int64 commitLsn, Int64 endLsn, Int64 commitTime
 *   Stream Abort   'A' Int32 xid, Int32 subxid, [Int64 abortLsn, Int64 abortTime: protocol 4+ with streaming = parallel]
 *
 *   TupleData      Int16 ncols, ncols x ('n' null | 'u' unchanged TOASTed value | 't' Int32 len + text | 'b' Int32 len + binary)
 *
 * Flag bytes are read as PostgreSQL's own subscriber reads them (proto.c): only the defined bits count, and a
 * Stream Start's first-segment byte means "first" only when it is 1. Everything else is strict: a truncated
 * message, trailing bytes, an unknown tag, tuple kind or replica identity, or invalid UTF-8 is a PROTOCOL error
 * naming the message, the field and the byte offset.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Lsn } from '../core/lsn.ts';
import type { PgTimestamp } from '../core/pg-time.ts';
import { BufferReader, describeByte } from './buffer-reader.ts';
import type { PgOutputMessage, RelationColumn, RelationMessage, Tuple, TupleValue } from './messages.ts';

export interface PgOutputOptions {
  /** The proto_version given to START_REPLICATION (1 to 4). */
  readonly protocolVersion: number;
  /** Whether `streaming` was requested (on or parallel; needs protocol 2+). */
  readonly streaming: boolean;
  /** Whether `streaming = parallel` was requested: with protocol 4+, Stream Abort then carries the abort LSN and time. */
  readonly parallelStreaming?: boolean;
  /**
   * Whether this message lies between a Stream Start and its Stream Stop, where Relation, Type, Insert, Update,
   * Delete, Truncate and Message carry the xid. The decoder is stateless: the stream layer tracks S/E and says so.
   */
  readonly inStreamedTransaction?: boolean;
}

/** Message tags, as in PostgreSQL's LogicalRepMsgType. */
export const PgOutputTag = {
  begin: 0x42, // 'B'
  commit: 0x43, // 'C'
  origin: 0x4f, // 'O'
  relation: 0x52, // 'R'
  type: 0x59, // 'Y'
  insert: 0x49, // 'I'
  update: 0x55, // 'U'
  delete: 0x44, // 'D'
  truncate: 0x54, // 'T'
  message: 0x4d, // 'M'
  stream_start: 0x53, // 'S'
  stream_stop: 0x45, // 'E'
  stream_commit: 0x63, // 'c'
  stream_abort: 0x41, // 'A'
} as const satisfies Record<PgOutputMessage['tag'], number>;

/** Bytes that introduce a TupleData or name its role. */
export const TupleByte = {
  newTuple: 0x4e, // 'N'
  oldKey: 0x4b, // 'K'
  oldRow: 0x4f, // 'O'
  null: 0x6e, // 'n'
  unchanged: 0x75, // 'u'
  text: 0x74, // 't'
  binary: 0x62, // 'b'
} as const;

export const RELATION_COLUMN_IS_KEY = 1;
export const TRUNCATE_CASCADE = 1;
export const TRUNCATE_RESTART_IDENTITY = 2;
export const MESSAGE_TRANSACTIONAL = 1;

/** Two-phase commit messages ('b', 'P', 'K', 'r', 'p'): pgmesh does not request two_phase, so they must not come. */
const TWO_PHASE_TAGS = new Set([0x62, 0x50, 0x4b, 0x72, 0x70]);

/** pg_class.relreplident: default, nothing, full, index. */
const REPLICA_IDENTITIES: ReadonlyMap<number, RelationMessage['replicaIdentity']> = new Map([
  [0x64, 'd'],
  [0x6e, 'n'],
  [0x66, 'f'],
  [0x69, 'i'],
]);

const NULL_VALUE: TupleValue = Object.freeze({ kind: 'null' });
const UNCHANGED_VALUE: TupleValue = Object.freeze({ kind: 'unchanged' });

/**
 * Decodes one pgoutput message. Binary column values and Message contents are copied, so the result does not
 * keep `data` alive.
 */
export function decodePgOutput(data: Buffer, options: PgOutputOptions): PgOutputMessage {
  checkPgOutputOptions(options);
  const reader = new BufferReader(data, 'pgoutput message');
  const message = decodeBody(reader, reader.uint8('message tag'), options);
  reader.end();
  return message;
}

/** Rejects option combinations PostgreSQL itself refuses; these are caller bugs, not bad input. */
export function checkPgOutputOptions(options: PgOutputOptions): void {
  const { protocolVersion, streaming, inStreamedTransaction } = options;
  let problem: string | undefined;
  if (!Number.isInteger(protocolVersion) || protocolVersion < 1) problem = `protocolVersion ${protocolVersion} is not 1 or more`;
  else if (streaming && protocolVersion < 2) problem = `streaming needs protocolVersion 2 or more, got ${protocolVersion}`;
  else if (inStreamedTransaction && !streaming) problem = 'inStreamedTransaction is set but streaming is not';
  if (problem !== undefined) throw new PgmeshError('INTERNAL', `invalid pgoutput options: ${problem}`);
}

function decodeBody(r: BufferReader, tag: number, options: PgOutputOptions): PgOutputMessage {
  switch (tag) {
    case PgOutputTag.begin:
      r.describe('pgoutput Begin');
      return { tag: 'begin', finalLsn: readLsn(r, 'final LSN'), commitTime: readTime(r, 'commit time'), xid: r.uint32('xid') };
    case PgOutputTag.commit:
      r.describe('pgoutput Commit');
      return {
        tag: 'commit',
        flags: r.uint8('flags'),
        commitLsn: readLsn(r, 'commit LSN'),
        endLsn: readLsn(r, 'end LSN'),
        commitTime: readTime(r, 'commit time'),
      };
    case PgOutputTag.origin:
      r.describe('pgoutput Origin');
      return { tag: 'origin', originLsn: readLsn(r, 'origin LSN'), name: r.cstring('origin name') };
    case PgOutputTag.relation:
      r.describe('pgoutput Relation');
      return readRelation(r, options);
    case PgOutputTag.type:
      r.describe('pgoutput Type');
      return {
        tag: 'type',
        ...readStreamXid(r, options),
        typeOid: r.uint32('type OID'),
        // "" means pg_catalog (PostgreSQL omits that name to save space); kept as sent.
        schema: r.cstring('namespace'),
        name: r.cstring('type name'),
      };
    case PgOutputTag.insert: {
      r.describe('pgoutput Insert');
      const xid = readStreamXid(r, options);
      const relationOid = r.uint32('relation OID');
      expectByte(r, TupleByte.newTuple, 'tuple kind', "'N' (new tuple)");
      return { tag: 'insert', ...xid, relationOid, newTuple: readTuple(r) };
    }
    case PgOutputTag.update:
      r.describe('pgoutput Update');
      return readUpdate(r, options);
    case PgOutputTag.delete: {
      r.describe('pgoutput Delete');
      const xid = readStreamXid(r, options);
      const relationOid = r.uint32('relation OID');
      const kindOffset = r.offset;
      const kind = r.uint8('tuple kind');
      if (kind !== TupleByte.oldKey && kind !== TupleByte.oldRow) {
        r.fail('tuple kind', `expected 'K' (old key) or 'O' (old row), got ${describeByte(kind)}`, kindOffset);
      }
      return { tag: 'delete', ...xid, relationOid, oldKind: kind === TupleByte.oldKey ? 'key' : 'old', oldTuple: readTuple(r) };
    }
    case PgOutputTag.truncate:
      r.describe('pgoutput Truncate');
      return readTruncate(r, options);
    case PgOutputTag.message: {
      r.describe('pgoutput Message');
      const xid = readStreamXid(r, options);
      const flags = r.uint8('flags');
      const lsn = readLsn(r, 'LSN');
      const prefix = r.cstring('prefix');
      const content = Buffer.from(r.bytes(r.int32('content length'), 'content'));
      return { tag: 'message', ...xid, transactional: (flags & MESSAGE_TRANSACTIONAL) !== 0, lsn, prefix, content };
    }
    case PgOutputTag.stream_start:
      requireStreaming(r, options, 'Stream Start');
      return { tag: 'stream_start', xid: r.uint32('xid'), firstSegment: r.uint8('first segment') === 1 };
    case PgOutputTag.stream_stop:
      requireStreaming(r, options, 'Stream Stop');
      return { tag: 'stream_stop' };
    case PgOutputTag.stream_commit:
      requireStreaming(r, options, 'Stream Commit');
      return {
        tag: 'stream_commit',
        xid: r.uint32('xid'),
        flags: r.uint8('flags'),
        commitLsn: readLsn(r, 'commit LSN'),
        endLsn: readLsn(r, 'end LSN'),
        commitTime: readTime(r, 'commit time'),
      };
    case PgOutputTag.stream_abort: {
      requireStreaming(r, options, 'Stream Abort');
      const xid = r.uint32('xid');
      const subXid = r.uint32('subxact xid');
      if (!hasAbortInfo(options)) return { tag: 'stream_abort', xid, subXid };
      return { tag: 'stream_abort', xid, subXid, abortLsn: readLsn(r, 'abort LSN'), abortTime: readTime(r, 'abort time') };
    }
    default:
      return r.fail('message tag', unknownTagProblem(tag), 0);
  }
}

/** Stream Abort carries the abort LSN and time only with protocol 4+ and streaming = parallel. */
export function hasAbortInfo(options: PgOutputOptions): boolean {
  return options.protocolVersion >= 4 && options.parallelStreaming === true;
}

function readRelation(r: BufferReader, options: PgOutputOptions): RelationMessage {
  const xid = readStreamXid(r, options);
  const relationOid = r.uint32('relation OID');
  // "" means pg_catalog (PostgreSQL omits that name to save space); kept as sent.
  const schema = r.cstring('namespace');
  const name = r.cstring('relation name');
  const identityOffset = r.offset;
  const identity = r.uint8('replica identity');
  const replicaIdentity = REPLICA_IDENTITIES.get(identity);
  if (replicaIdentity === undefined) {
    r.fail('replica identity', `expected 'd', 'n', 'f' or 'i', got ${describeByte(identity)}`, identityOffset);
  }
  const count = r.uint16('column count');
  const columns: RelationColumn[] = [];
  for (let i = 0; i < count; i++) {
    columns.push({
      isKey: (r.uint8('column flags') & RELATION_COLUMN_IS_KEY) !== 0,
      name: r.cstring('column name'),
      typeOid: r.uint32('column type OID'),
      typeModifier: r.int32('column atttypmod'),
    });
  }
  return { tag: 'relation', ...xid, relationOid, schema, name, replicaIdentity, columns };
}

function readUpdate(r: BufferReader, options: PgOutputOptions): PgOutputMessage {
  const xid = readStreamXid(r, options);
  const relationOid = r.uint32('relation OID');
  let kindOffset = r.offset;
  let kind = r.uint8('tuple kind');
  let old: { oldKind: 'key' | 'old'; oldTuple: Tuple } | undefined;
  if (kind === TupleByte.oldKey || kind === TupleByte.oldRow) {
    old = { oldKind: kind === TupleByte.oldKey ? 'key' : 'old', oldTuple: readTuple(r) };
    kindOffset = r.offset;
    kind = r.uint8('new tuple kind');
  }
  if (kind !== TupleByte.newTuple) {
    const expected = old === undefined ? "'K', 'O' or 'N'" : "'N' (new tuple)";
    r.fail('tuple kind', `expected ${expected}, got ${describeByte(kind)}`, kindOffset);
  }
  return { tag: 'update', ...xid, relationOid, ...old, newTuple: readTuple(r) };
}

function readTruncate(r: BufferReader, options: PgOutputOptions): PgOutputMessage {
  const xid = readStreamXid(r, options);
  const countOffset = r.offset;
  const count = r.int32('relation count');
  if (count < 0) r.fail('relation count', `negative count ${count}`, countOffset);
  const flags = r.uint8('options');
  // Fail before looping over a count that the bytes cannot hold.
  if (count * 4 > r.remaining()) {
    r.fail('relation OIDs', `truncated: ${count} OIDs need ${count * 4} bytes, ${r.remaining()} left`);
  }
  const relationOids: number[] = [];
  for (let i = 0; i < count; i++) relationOids.push(r.uint32('relation OID'));
  return {
    tag: 'truncate',
    ...xid,
    cascade: (flags & TRUNCATE_CASCADE) !== 0,
    restartIdentity: (flags & TRUNCATE_RESTART_IDENTITY) !== 0,
    relationOids,
  };
}

function readTuple(r: BufferReader): Tuple {
  const count = r.uint16('tuple column count');
  const values: TupleValue[] = [];
  for (let i = 0; i < count; i++) {
    const kindOffset = r.offset;
    const kind = r.uint8('tuple column kind');
    switch (kind) {
      case TupleByte.null:
        values.push(NULL_VALUE);
        break;
      case TupleByte.unchanged:
        values.push(UNCHANGED_VALUE);
        break;
      case TupleByte.text:
        values.push({ kind: 'text', value: r.utf8(r.int32('text length'), 'text value') });
        break;
      case TupleByte.binary:
        values.push({ kind: 'binary', value: Buffer.from(r.bytes(r.int32('binary length'), 'binary value')) });
        break;
      default:
        r.fail('tuple column kind', `expected 'n', 'u', 't' or 'b' for column ${i + 1}, got ${describeByte(kind)}`, kindOffset);
    }
  }
  return values;
}

function readStreamXid(r: BufferReader, options: PgOutputOptions): { xid?: number } {
  return options.inStreamedTransaction ? { xid: r.uint32('xid') } : {};
}

function readLsn(r: BufferReader, field: string): Lsn {
  return r.uint64(field) as Lsn;
}

function readTime(r: BufferReader, field: string): PgTimestamp {
  return r.int64(field) as PgTimestamp;
}

function expectByte(r: BufferReader, expected: number, field: string, description: string): void {
  const offset = r.offset;
  const actual = r.uint8(field);
  if (actual !== expected) r.fail(field, `expected ${description}, got ${describeByte(actual)}`, offset);
}

function requireStreaming(r: BufferReader, options: PgOutputOptions, name: string): void {
  r.describe(`pgoutput ${name}`);
  if (!options.streaming) r.fail('message tag', `${name} received but streaming was not requested`, 0);
}

function unknownTagProblem(tag: number): string {
  if (TWO_PHASE_TAGS.has(tag)) {
    return `two-phase commit message ${describeByte(tag)} is not supported; the slot must be used without two_phase`;
  }
  return `unknown tag ${describeByte(tag)}`;
}
