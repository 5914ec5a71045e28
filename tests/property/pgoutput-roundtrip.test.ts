/**
 * Property tests of the pgoutput and replication codecs. fast-check prints the seed and the shrunk counterexample
 * on failure; replay one with `{ seed, path }` in the fc.assert parameters.
 *
 * Properties: every message of every kind round-trips encode -> decode under the options it was made for; a cut or
 * extended encoding is a PROTOCOL error; arbitrary or corrupted bytes either decode (and then re-encode to something
 * that decodes the same) or throw PgmeshError('PROTOCOL'), never anything else.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PgmeshError } from '../../src/core/errors.ts';
import { lsn, type Lsn } from '../../src/core/lsn.ts';
import { pgTimestamp, type PgTimestamp } from '../../src/core/pg-time.ts';
import type { PgOutputMessage, Tuple, TupleValue } from '../../src/protocol/messages.ts';
import { decodePgOutput, hasAbortInfo, PgOutputTag, type PgOutputOptions } from '../../src/protocol/pgoutput-decoder.ts';
import { encodeKeepalive, encodePgOutput, encodeXLogData } from '../../src/protocol/pgoutput-encoder.ts';
import { decodeReplicationMessage } from '../../src/protocol/replication-messages.ts';

const RUNS = { numRuns: 300 };

const u8 = fc.integer({ min: 0, max: 0xff });
const u32 = fc.integer({ min: 0, max: 0xffffffff }); // OIDs and XIDs, including those above 2^31
const i32 = fc.integer({ min: -0x80000000, max: 0x7fffffff });
const lsnArb: fc.Arbitrary<Lsn> = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map(lsn);
const timeArb: fc.Arbitrary<PgTimestamp> = fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }).map(pgTimestamp);
/** Any code points (astral planes included, lone surrogates excluded), no NUL: what a protocol String can carry. */
const nameArb = fc.string({ unit: 'binary', maxLength: 16 }).filter((s) => !s.includes('\0'));
const bytesArb = fc.uint8Array({ maxLength: 32 }).map((a) => Buffer.from(a));

const valueArb: fc.Arbitrary<TupleValue> = fc.oneof(
  fc.constant<TupleValue>({ kind: 'null' }),
  fc.constant<TupleValue>({ kind: 'unchanged' }),
  fc.string({ unit: 'binary', maxLength: 24 }).map((value): TupleValue => ({ kind: 'text', value })),
  bytesArb.map((value): TupleValue => ({ kind: 'binary', value })),
);
const tupleArb: fc.Arbitrary<Tuple> = fc.array(valueArb, { maxLength: 8 });

/** Options PostgreSQL accepts: streaming needs protocol 2+. */
const optionsArb: fc.Arbitrary<PgOutputOptions> = fc
  .record({ protocolVersion: fc.integer({ min: 1, max: 4 }), streaming: fc.boolean(), parallel: fc.boolean(), inStream: fc.boolean() })
  .map(({ protocolVersion, streaming, parallel, inStream }) => {
    const canStream = streaming && protocolVersion >= 2;
    return {
      protocolVersion,
      streaming: canStream,
      parallelStreaming: canStream && parallel,
      inStreamedTransaction: canStream && inStream,
    };
  });
const streamingOptionsArb = optionsArb.filter((o) => o.streaming);

/** The xid field as the decoder gives it back: present exactly inside a streamed transaction. */
function xidField(options: PgOutputOptions, xid: number): { xid?: number } {
  return options.inStreamedTransaction ? { xid } : {};
}

type Generator = (options: PgOutputOptions) => fc.Arbitrary<PgOutputMessage>;

const generators: Record<PgOutputMessage['tag'], { options: fc.Arbitrary<PgOutputOptions>; message: Generator }> = {
  begin: {
    options: optionsArb,
    message: () => fc.record({ finalLsn: lsnArb, commitTime: timeArb, xid: u32 }).map((m) => ({ tag: 'begin', ...m })),
  },
  commit: {
    options: optionsArb,
    message: () =>
      fc.record({ flags: u8, commitLsn: lsnArb, endLsn: lsnArb, commitTime: timeArb }).map((m) => ({ tag: 'commit', ...m })),
  },
  origin: {
    options: optionsArb,
    message: () => fc.record({ originLsn: lsnArb, name: nameArb }).map((m) => ({ tag: 'origin', ...m })),
  },
  relation: {
    options: optionsArb,
    message: (o) =>
      fc
        .record({
          xid: u32,
          relationOid: u32,
          schema: nameArb,
          name: nameArb,
          replicaIdentity: fc.constantFrom('d', 'n', 'f', 'i'),
          columns: fc.array(
            fc.record({ isKey: fc.boolean(), name: nameArb, typeOid: u32, typeModifier: i32 }, { noNullPrototype: true }),
            { maxLength: 6 },
          ),
        })
        .map(({ xid, ...m }) => ({ tag: 'relation', ...xidField(o, xid), ...m })),
  },
  type: {
    options: optionsArb,
    message: (o) =>
      fc
        .record({ xid: u32, typeOid: u32, schema: nameArb, name: nameArb })
        .map(({ xid, ...m }) => ({ tag: 'type', ...xidField(o, xid), ...m })),
  },
  insert: {
    options: optionsArb,
    message: (o) =>
      fc
        .record({ xid: u32, relationOid: u32, newTuple: tupleArb })
        .map(({ xid, ...m }) => ({ tag: 'insert', ...xidField(o, xid), ...m })),
  },
  update: {
    options: optionsArb,
    message: (o) =>
      fc
        .record({
          xid: u32,
          relationOid: u32,
          old: fc.option(fc.record({ oldKind: fc.constantFrom('key', 'old'), oldTuple: tupleArb }), { nil: undefined }),
          newTuple: tupleArb,
        })
        .map(({ xid, old, ...m }) => ({ tag: 'update', ...xidField(o, xid), ...old, ...m })),
  },
  delete: {
    options: optionsArb,
    message: (o) =>
      fc
        .record({ xid: u32, relationOid: u32, oldKind: fc.constantFrom('key', 'old'), oldTuple: tupleArb })
        .map(({ xid, ...m }) => ({ tag: 'delete', ...xidField(o, xid), ...m })),
  },
  truncate: {
    options: optionsArb,
    message: (o) =>
      fc
        .record({ xid: u32, cascade: fc.boolean(), restartIdentity: fc.boolean(), relationOids: fc.array(u32, { maxLength: 6 }) })
        .map(({ xid, ...m }) => ({ tag: 'truncate', ...xidField(o, xid), ...m })),
  },
  message: {
    options: optionsArb,
    message: (o) =>
      fc
        .record({ xid: u32, transactional: fc.boolean(), lsn: lsnArb, prefix: nameArb, content: bytesArb })
        .map(({ xid, ...m }) => ({ tag: 'message', ...xidField(o, xid), ...m })),
  },
  stream_start: {
    options: streamingOptionsArb,
    message: () => fc.record({ xid: u32, firstSegment: fc.boolean() }).map((m) => ({ tag: 'stream_start', ...m })),
  },
  stream_stop: { options: streamingOptionsArb, message: () => fc.constant({ tag: 'stream_stop' }) },
  stream_commit: {
    options: streamingOptionsArb,
    message: () =>
      fc
        .record({ xid: u32, flags: u8, commitLsn: lsnArb, endLsn: lsnArb, commitTime: timeArb })
        .map((m) => ({ tag: 'stream_commit', ...m })),
  },
  stream_abort: {
    options: streamingOptionsArb,
    message: (o) =>
      fc.record({ xid: u32, subXid: u32, abortLsn: lsnArb, abortTime: timeArb }).map(({ xid, subXid, abortLsn, abortTime }) =>
        hasAbortInfo(o) ? { tag: 'stream_abort', xid, subXid, abortLsn, abortTime } : { tag: 'stream_abort', xid, subXid },
      ),
  },
};

function caseArb(tag: PgOutputMessage['tag']): fc.Arbitrary<{ options: PgOutputOptions; message: PgOutputMessage }> {
  const { options, message } = generators[tag];
  return options.chain((o) => message(o).map((m) => ({ options: o, message: m })));
}

const anyCaseArb = fc.oneof(...(Object.keys(generators) as PgOutputMessage['tag'][]).map(caseArb));

/** Runs `fn`; a PROTOCOL PgmeshError counts as a rejection, anything else thrown fails the property. */
function decodesOrRejects<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    if (error instanceof PgmeshError && error.code === 'PROTOCOL') return undefined;
    throw error;
  }
}

function isProtocolError(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch (error) {
    if (error instanceof PgmeshError && error.code === 'PROTOCOL') return true;
    throw error;
  }
}

describe('pgoutput round trip: decode(encode(m)) deep-equals m', () => {
  for (const tag of Object.keys(generators) as PgOutputMessage['tag'][]) {
    test(tag, () => {
      fc.assert(
        fc.property(caseArb(tag), ({ options, message }) => {
          const bytes = encodePgOutput(message, options);
          assert.equal(bytes[0], PgOutputTag[tag]);
          assert.deepStrictEqual(decodePgOutput(bytes, options), message);
        }),
        RUNS,
      );
    });
  }
});

describe('pgoutput framing', () => {
  test('an encoding cut short anywhere is a PROTOCOL error', () => {
    fc.assert(
      fc.property(anyCaseArb, fc.nat(), ({ options, message }, cutSeed) => {
        const bytes = encodePgOutput(message, options);
        const cut = cutSeed % bytes.length;
        assert.ok(isProtocolError(() => decodePgOutput(bytes.subarray(0, cut), options)), `cut at ${cut} of ${bytes.length} decoded`);
      }),
      RUNS,
    );
  });

  test('an encoding followed by any extra bytes is a PROTOCOL error', () => {
    fc.assert(
      fc.property(anyCaseArb, fc.uint8Array({ minLength: 1, maxLength: 8 }), ({ options, message }, extra) => {
        const bytes = Buffer.concat([encodePgOutput(message, options), extra]);
        assert.ok(isProtocolError(() => decodePgOutput(bytes, options)));
      }),
      RUNS,
    );
  });
});

describe('pgoutput decoder on hostile input', () => {
  const tags = Object.values(PgOutputTag);

  test('random bytes after a real tag decode or throw PROTOCOL; what decodes re-encodes to the same message', () => {
    fc.assert(
      fc.property(optionsArb, fc.constantFrom(...tags), fc.uint8Array({ maxLength: 64 }), (options, tag, body) => {
        const decoded = decodesOrRejects(() => decodePgOutput(Buffer.concat([Buffer.from([tag]), body]), options));
        if (decoded !== undefined) assert.deepStrictEqual(decodePgOutput(encodePgOutput(decoded, options), options), decoded);
      }),
      RUNS,
    );
  });

  test('fully random bytes decode or throw PROTOCOL', () => {
    fc.assert(
      fc.property(optionsArb, fc.uint8Array({ maxLength: 64 }), (options, bytes) => {
        decodesOrRejects(() => decodePgOutput(Buffer.from(bytes), options));
      }),
      RUNS,
    );
  });

  test('a valid encoding with one byte changed decodes (to a message that re-encodes faithfully) or throws PROTOCOL', () => {
    fc.assert(
      fc.property(anyCaseArb, fc.nat(), u8, ({ options, message }, at, value) => {
        const bytes = encodePgOutput(message, options);
        bytes[at % bytes.length] = value;
        const decoded = decodesOrRejects(() => decodePgOutput(bytes, options));
        if (decoded !== undefined) assert.deepStrictEqual(decodePgOutput(encodePgOutput(decoded, options), options), decoded);
      }),
      RUNS,
    );
  });
});

describe('replication messages', () => {
  test('XLogData and keepalive round-trip, and random payloads decode or throw PROTOCOL', () => {
    fc.assert(
      fc.property(lsnArb, lsnArb, timeArb, bytesArb, fc.boolean(), (walStart, walEnd, sendTime, data, replyRequested) => {
        assert.deepStrictEqual(decodeReplicationMessage(encodeXLogData({ walStart, walEnd, sendTime, data })), {
          kind: 'xlogdata', walStart, walEnd, sendTime, data,
        });
        assert.deepStrictEqual(decodeReplicationMessage(encodeKeepalive({ walEnd, sendTime, replyRequested })), {
          kind: 'keepalive', walEnd, sendTime, replyRequested,
        });
      }),
      RUNS,
    );
    fc.assert(
      fc.property(fc.constantFrom(0x77, 0x6b, 0x72), fc.uint8Array({ maxLength: 40 }), (tag, body) => {
        decodesOrRejects(() => decodeReplicationMessage(Buffer.concat([Buffer.from([tag]), body])));
      }),
      RUNS,
    );
  });
});
