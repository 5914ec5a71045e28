/**
 * pgoutput decoding from bytes written by hand (BufferWriter or hex), never by the encoder, so that a mistake shared
 * by the encoder and the decoder cannot hide here. Layouts: protocol-logicalrep-message-formats.html.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PgmeshError } from '../../src/core/errors.ts';
import { parseLsn, type Lsn } from '../../src/core/lsn.ts';
import { pgTimestamp } from '../../src/core/pg-time.ts';
import { BufferWriter } from '../../src/protocol/buffer-writer.ts';
import type { PgOutputMessage } from '../../src/protocol/messages.ts';
import { decodePgOutput, type PgOutputOptions } from '../../src/protocol/pgoutput-decoder.ts';

const V1: PgOutputOptions = { protocolVersion: 1, streaming: false };
const V4_STREAMING: PgOutputOptions = { protocolVersion: 4, streaming: true };
const IN_STREAM: PgOutputOptions = { protocolVersion: 2, streaming: true, inStreamedTransaction: true };
const V4_PARALLEL: PgOutputOptions = { protocolVersion: 4, streaming: true, parallelStreaming: true };

const LSN = parseLsn('16/B374D848');
const END_LSN = parseLsn('16/B374D878');
const HIGH_LSN = (0xfedcba9876543210n as Lsn); // above 2^63: would go negative if read signed
const TIME = pgTimestamp(1_000_000_000_000n);
const BEFORE_2000 = pgTimestamp(-1_000_000n);
const BIG_XID = 0xfffffffe;
const BIG_OID = 0x80000001;

const w = (): BufferWriter => new BufferWriter();
const text = (value: string) => ({ kind: 'text', value }) as const;
const binary = (...values: number[]) => ({ kind: 'binary', value: Buffer.from(values) }) as const;
const NULL = { kind: 'null' } as const;
const UNCHANGED = { kind: 'unchanged' } as const;

/** TupleData column 't': Int32 byte length, then the UTF-8 bytes. */
function textColumn(writer: BufferWriter, value: string): BufferWriter {
  return writer.char('t').int32(Buffer.byteLength(value)).utf8(value);
}

interface Case {
  readonly name: string;
  readonly options: PgOutputOptions;
  readonly bytes: Buffer;
  readonly expected: PgOutputMessage;
}

const cases: Case[] = [
  {
    name: 'Begin (raw hex)',
    options: V1,
    bytes: Buffer.from('42' + '00000016b374d848' + '000000e8d4a51000' + 'fffffffe', 'hex'),
    expected: { tag: 'begin', finalLsn: LSN, commitTime: TIME, xid: BIG_XID },
  },
  {
    name: 'Commit with a timestamp before 2000 and an LSN above 2^63',
    options: V1,
    bytes: w().char('C').uint8(0).uint64(LSN).uint64(HIGH_LSN).int64(BEFORE_2000).toBuffer(),
    expected: { tag: 'commit', flags: 0, commitLsn: LSN, endLsn: HIGH_LSN, commitTime: BEFORE_2000 },
  },
  {
    name: 'Origin',
    options: V1,
    bytes: w().char('O').uint64(LSN).cstring('pgmesh_n2').toBuffer(),
    expected: { tag: 'origin', originLsn: LSN, name: 'pgmesh_n2' },
  },
  {
    name: 'Relation in pg_catalog ("" kept) with multi-byte names and OIDs above 2^31',
    options: V1,
    bytes: w()
      .char('R').uint32(BIG_OID).cstring('').cstring('bücher_日本').char('f').uint16(4)
      .uint8(1).cstring('id').uint32(23).int32(-1)
      .uint8(0).cstring('naïve_名前').uint32(25).int32(-1)
      .uint8(0).cstring('price').uint32(1700).int32(655366)
      .uint8(3).cstring('code').uint32(0xffffffff).int32(-1) // bits other than 1 are ignored, as in proto.c
      .toBuffer(),
    expected: {
      tag: 'relation',
      relationOid: BIG_OID,
      schema: '',
      name: 'bücher_日本',
      replicaIdentity: 'f',
      columns: [
        { isKey: true, name: 'id', typeOid: 23, typeModifier: -1 },
        { isKey: false, name: 'naïve_名前', typeOid: 25, typeModifier: -1 },
        { isKey: false, name: 'price', typeOid: 1700, typeModifier: 655366 },
        { isKey: true, name: 'code', typeOid: 0xffffffff, typeModifier: -1 },
      ],
    },
  },
  ...(['d', 'n', 'i'] as const).map((identity): Case => ({
    name: `Relation with replica identity '${identity}' in a streamed transaction`,
    options: IN_STREAM,
    bytes: w().char('R').uint32(0x89abcdef).uint32(16384).cstring('public').cstring('t').char(identity).uint16(0).toBuffer(),
    expected: { tag: 'relation', xid: 0x89abcdef, relationOid: 16384, schema: 'public', name: 't', replicaIdentity: identity, columns: [] },
  })),
  {
    name: 'Type',
    options: V1,
    bytes: w().char('Y').uint32(0x90000000).cstring('public').cstring('humeur_é').toBuffer(),
    expected: { tag: 'type', typeOid: 0x90000000, schema: 'public', name: 'humeur_é' },
  },
  {
    name: 'Type in a streamed transaction',
    options: IN_STREAM,
    bytes: w().char('Y').uint32(BIG_XID).uint32(16390).cstring('').cstring('int4').toBuffer(),
    expected: { tag: 'type', xid: BIG_XID, typeOid: 16390, schema: '', name: 'int4' },
  },
  {
    name: 'Insert with null, unchanged, text, empty text, binary and empty binary values',
    options: V1,
    bytes: textColumn(textColumn(w().char('I').uint32(0xfffffff0).char('N').uint16(6).char('n').char('u'), 'héllo 🌍 日本'), '')
      .char('b').int32(3).bytes([0, 1, 255])
      .char('b').int32(0)
      .toBuffer(),
    expected: {
      tag: 'insert',
      relationOid: 0xfffffff0,
      newTuple: [NULL, UNCHANGED, text('héllo 🌍 日本'), text(''), binary(0, 1, 255), binary()],
    },
  },
  {
    name: 'Insert in a streamed transaction with an empty tuple',
    options: IN_STREAM,
    bytes: w().char('I').uint32(7).uint32(16384).char('N').uint16(0).toBuffer(),
    expected: { tag: 'insert', xid: 7, relationOid: 16384, newTuple: [] },
  },
  {
    name: 'Update without an old tuple',
    options: V1,
    bytes: textColumn(w().char('U').uint32(16384).char('N').uint16(1), '42').toBuffer(),
    expected: { tag: 'update', relationOid: 16384, newTuple: [text('42')] },
  },
  {
    name: "Update with the old key ('K')",
    options: V1,
    bytes: textColumn(textColumn(w().char('U').uint32(BIG_OID).char('K').uint16(2), '1').char('n').char('N').uint16(2), '2')
      .char('u')
      .toBuffer(),
    expected: { tag: 'update', relationOid: BIG_OID, oldKind: 'key', oldTuple: [text('1'), NULL], newTuple: [text('2'), UNCHANGED] },
  },
  {
    name: "Update with the old row ('O') in a streamed transaction",
    options: IN_STREAM,
    bytes: w().char('U').uint32(99).uint32(16384).char('O').uint16(1).char('b').int32(1).bytes([7])
      .char('N').uint16(1).char('n')
      .toBuffer(),
    expected: { tag: 'update', xid: 99, relationOid: 16384, oldKind: 'old', oldTuple: [binary(7)], newTuple: [NULL] },
  },
  {
    name: "Delete with the old key ('K')",
    options: V1,
    bytes: textColumn(w().char('D').uint32(16384).char('K').uint16(1), 'clé').toBuffer(),
    expected: { tag: 'delete', relationOid: 16384, oldKind: 'key', oldTuple: [text('clé')] },
  },
  {
    name: "Delete with the old row ('O') in a streamed transaction",
    options: IN_STREAM,
    bytes: w().char('D').uint32(5).uint32(BIG_OID).char('O').uint16(2).char('n').char('n').toBuffer(),
    expected: { tag: 'delete', xid: 5, relationOid: BIG_OID, oldKind: 'old', oldTuple: [NULL, NULL] },
  },
  {
    name: 'Truncate CASCADE RESTART IDENTITY of two relations',
    options: V1,
    bytes: w().char('T').int32(2).uint8(3).uint32(16384).uint32(0xffffffff).toBuffer(),
    expected: { tag: 'truncate', cascade: true, restartIdentity: true, relationOids: [16384, 0xffffffff] },
  },
  {
    name: 'Truncate RESTART IDENTITY only',
    options: V1,
    bytes: w().char('T').int32(1).uint8(2).uint32(16384).toBuffer(),
    expected: { tag: 'truncate', cascade: false, restartIdentity: true, relationOids: [16384] },
  },
  {
    name: 'Truncate CASCADE in a streamed transaction, no relations',
    options: IN_STREAM,
    bytes: w().char('T').uint32(BIG_XID).int32(0).uint8(1).toBuffer(),
    expected: { tag: 'truncate', xid: BIG_XID, cascade: true, restartIdentity: false, relationOids: [] },
  },
  {
    name: 'transactional Message with binary content',
    options: V1,
    bytes: w().char('M').uint8(1).uint64(LSN).cstring('pgmesh/heartbeat').int32(4).bytes([0, 0xff, 0, 1]).toBuffer(),
    expected: { tag: 'message', transactional: true, lsn: LSN, prefix: 'pgmesh/heartbeat', content: Buffer.from([0, 0xff, 0, 1]) },
  },
  {
    name: 'non-transactional Message with empty content in a streamed transaction',
    options: IN_STREAM,
    bytes: w().char('M').uint32(3).uint8(0).uint64(HIGH_LSN).cstring('préfixe').int32(0).toBuffer(),
    expected: { tag: 'message', xid: 3, transactional: false, lsn: HIGH_LSN, prefix: 'préfixe', content: Buffer.alloc(0) },
  },
  {
    name: 'Stream Start of the first segment',
    options: V4_STREAMING,
    bytes: w().char('S').uint32(0xffffffff).uint8(1).toBuffer(),
    expected: { tag: 'stream_start', xid: 0xffffffff, firstSegment: true },
  },
  {
    name: 'Stream Start of a later segment',
    options: V4_STREAMING,
    bytes: w().char('S').uint32(600).uint8(0).toBuffer(),
    expected: { tag: 'stream_start', xid: 600, firstSegment: false },
  },
  {
    name: 'Stream Start with a first-segment byte other than 1 (not first, as proto.c reads it)',
    options: V4_STREAMING,
    bytes: w().char('S').uint32(601).uint8(2).toBuffer(),
    expected: { tag: 'stream_start', xid: 601, firstSegment: false },
  },
  { name: 'Stream Stop', options: V4_STREAMING, bytes: w().char('E').toBuffer(), expected: { tag: 'stream_stop' } },
  {
    name: 'Stream Commit',
    options: V4_STREAMING,
    bytes: w().char('c').uint32(BIG_XID).uint8(0).uint64(LSN).uint64(END_LSN).int64(TIME).toBuffer(),
    expected: { tag: 'stream_commit', xid: BIG_XID, flags: 0, commitLsn: LSN, endLsn: END_LSN, commitTime: TIME },
  },
  {
    name: 'Stream Abort, protocol 4 without parallel streaming: no abort LSN/time',
    options: V4_STREAMING,
    bytes: w().char('A').uint32(BIG_XID).uint32(0x80000000).toBuffer(),
    expected: { tag: 'stream_abort', xid: BIG_XID, subXid: 0x80000000 },
  },
  {
    name: 'Stream Abort, protocol 3 with parallel streaming asked: no abort LSN/time',
    options: { protocolVersion: 3, streaming: true, parallelStreaming: true },
    bytes: w().char('A').uint32(10).uint32(11).toBuffer(),
    expected: { tag: 'stream_abort', xid: 10, subXid: 11 },
  },
  {
    name: 'Stream Abort, protocol 4 with parallel streaming: abort LSN and time',
    options: V4_PARALLEL,
    bytes: w().char('A').uint32(10).uint32(11).uint64(LSN).int64(TIME).toBuffer(),
    expected: { tag: 'stream_abort', xid: 10, subXid: 11, abortLsn: LSN, abortTime: TIME },
  },
];

function assertProtocolError(fn: () => unknown, expected: { field?: string; offset?: number; message?: RegExp } = {}): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof PgmeshError, `expected PgmeshError, got ${String(error)}`);
    assert.equal(error.code, 'PROTOCOL', error.message);
    if (expected.field !== undefined) assert.equal(error.context['field'], expected.field, error.message);
    if (expected.offset !== undefined) assert.equal(error.context['offset'], expected.offset, error.message);
    if (expected.message !== undefined) assert.match(error.message, expected.message);
    return true;
  });
}

describe('decodePgOutput: every message type', () => {
  for (const c of cases) {
    test(c.name, () => {
      assert.deepStrictEqual(decodePgOutput(c.bytes, c.options), c.expected);
    });
  }

  test('covers every message tag', () => {
    const tags = new Set(cases.map((c) => c.expected.tag));
    const all: PgOutputMessage['tag'][] = [
      'begin', 'commit', 'origin', 'relation', 'type', 'insert', 'update', 'delete', 'truncate', 'message',
      'stream_start', 'stream_stop', 'stream_commit', 'stream_abort',
    ];
    assert.deepEqual([...all].filter((tag) => !tags.has(tag)), []);
  });
});

describe('decodePgOutput: malformed input', () => {
  test('every message cut at every byte position is a PROTOCOL error', () => {
    for (const c of cases) {
      for (let cut = 0; cut < c.bytes.length; cut++) {
        assertProtocolError(() => decodePgOutput(c.bytes.subarray(0, cut), c.options), { message: /truncated|NUL/ });
      }
    }
  });

  test('a byte of trailing garbage after any complete message is a PROTOCOL error', () => {
    for (const c of cases) {
      assertProtocolError(() => decodePgOutput(Buffer.concat([c.bytes, Buffer.from([0])]), c.options), {
        field: 'end of message',
        offset: c.bytes.length,
        message: /1 unexpected trailing bytes/,
      });
    }
  });

  test('the error names the message, the field and the byte offset', () => {
    const begin = cases[0]?.bytes ?? assert.fail('no Begin case');
    assertProtocolError(() => decodePgOutput(begin.subarray(0, 19), V1), {
      field: 'xid',
      offset: 17,
      message: /^malformed pgoutput Begin: xid at byte 17: truncated: needs 4 bytes, 2 left of 19$/,
    });
  });

  test('unknown tags are PROTOCOL errors; two-phase tags say why', () => {
    for (const tag of [0x00, 0x5a, 0xff, 0x77]) {
      assertProtocolError(() => decodePgOutput(Buffer.from([tag, 0, 0, 0, 0]), V4_STREAMING), { field: 'message tag', offset: 0, message: /unknown tag/ });
    }
    assertProtocolError(() => decodePgOutput(Buffer.from('P'), V1), { message: /two-phase .*'P' \(0x50\).*two_phase/ });
  });

  test('streaming messages are refused when streaming was not requested', () => {
    for (const tag of ['S', 'E', 'c', 'A']) {
      const bytes = cases.find((c) => c.bytes[0] === tag.charCodeAt(0))?.bytes ?? assert.fail(`no case for ${tag}`);
      assertProtocolError(() => decodePgOutput(bytes, V1), { message: /streaming was not requested/ });
    }
  });

  test('a wrong tuple marker, column kind or replica identity is a PROTOCOL error at its offset', () => {
    assertProtocolError(() => decodePgOutput(w().char('I').uint32(1).char('K').uint16(0).toBuffer(), V1), {
      field: 'tuple kind', offset: 5, message: /expected 'N'.*got 'K'/,
    });
    assertProtocolError(() => decodePgOutput(w().char('I').uint32(1).char('N').uint16(2).char('n').char('x').toBuffer(), V1), {
      field: 'tuple column kind', offset: 9, message: /column 2, got 'x'/,
    });
    assertProtocolError(() => decodePgOutput(w().char('U').uint32(1).char('K').uint16(0).char('O').uint16(0).toBuffer(), V1), {
      field: 'tuple kind', offset: 8,
    });
    assertProtocolError(() => decodePgOutput(w().char('U').uint32(1).char('X').toBuffer(), V1), { field: 'tuple kind', offset: 5 });
    assertProtocolError(() => decodePgOutput(w().char('D').uint32(1).char('N').uint16(0).toBuffer(), V1), {
      field: 'tuple kind', offset: 5, message: /'K'.*'O'/,
    });
    assertProtocolError(() => decodePgOutput(w().char('R').uint32(1).cstring('s').cstring('t').char('x').uint16(0).toBuffer(), V1), {
      field: 'replica identity', offset: 9,
    });
  });

  test('invalid UTF-8 in a text value or a name is a PROTOCOL error', () => {
    assertProtocolError(() => decodePgOutput(w().char('I').uint32(1).char('N').uint16(1).char('t').int32(2).bytes([0xc3, 0x28]).toBuffer(), V1), {
      field: 'text value', offset: 13, message: /invalid UTF-8/,
    });
    assertProtocolError(() => decodePgOutput(w().char('O').uint64(LSN).bytes([0xff, 0]).toBuffer(), V1), { field: 'origin name', offset: 9 });
  });

  test('negative and oversized lengths and counts fail at once instead of looping or allocating', () => {
    const started = Date.now();
    assertProtocolError(() => decodePgOutput(w().char('I').uint32(1).char('N').uint16(1).char('t').int32(-1).toBuffer(), V1), { message: /invalid length -1/ });
    assertProtocolError(() => decodePgOutput(w().char('I').uint32(1).char('N').uint16(1).char('b').int32(0x7fffffff).toBuffer(), V1), { message: /truncated/ });
    assertProtocolError(() => decodePgOutput(w().char('I').uint32(1).char('N').uint16(0xffff).char('n').toBuffer(), V1), { message: /truncated/ });
    assertProtocolError(() => decodePgOutput(w().char('T').int32(-1).uint8(0).toBuffer(), V1), { field: 'relation count', offset: 1 });
    assertProtocolError(() => decodePgOutput(w().char('T').int32(0x7fffffff).uint8(0).uint32(1).toBuffer(), V1), { field: 'relation OIDs' });
    assertProtocolError(() => decodePgOutput(w().char('M').uint8(0).uint64(LSN).cstring('p').int32(-5).toBuffer(), V1), { field: 'content' });
    // A decoder that looped over a 2^31 count or allocated its bytes would take many seconds.
    assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
  });

  test('the xid is read only inside a streamed transaction', () => {
    const streamed = w().char('I').uint32(7).uint32(16384).char('N').uint16(0).toBuffer();
    assertProtocolError(() => decodePgOutput(streamed, V4_STREAMING), { field: 'tuple kind' });
  });
});

describe('decodePgOutput: options and ownership', () => {
  test('inconsistent options are a caller bug (INTERNAL), not a protocol error', () => {
    const bad: PgOutputOptions[] = [
      { protocolVersion: 0, streaming: false },
      { protocolVersion: 1.5, streaming: false },
      { protocolVersion: 1, streaming: true },
      { protocolVersion: 2, streaming: false, inStreamedTransaction: true },
    ];
    for (const options of bad) {
      assert.throws(() => decodePgOutput(Buffer.from('E'), options), (e: unknown) => e instanceof PgmeshError && e.code === 'INTERNAL');
    }
  });

  test('binary values and Message contents are copies, not views of the input', () => {
    const insert = w().char('I').uint32(1).char('N').uint16(1).char('b').int32(2).bytes([1, 2]).toBuffer();
    const decoded = decodePgOutput(insert, V1);
    insert.fill(0);
    assert.deepStrictEqual(decoded, { tag: 'insert', relationOid: 1, newTuple: [binary(1, 2)] });
    const message = w().char('M').uint8(0).uint64(LSN).cstring('p').int32(1).bytes([9]).toBuffer();
    const decodedMessage = decodePgOutput(message, V1);
    message.fill(0);
    assert.deepEqual(decodedMessage.tag === 'message' && [...decodedMessage.content], [9]);
  });
});
