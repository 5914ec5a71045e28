import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PgmeshError } from '../../src/core/errors.ts';
import { BufferReader } from '../../src/protocol/buffer-reader.ts';
import { BufferWriter } from '../../src/protocol/buffer-writer.ts';

function assertProtocolError(fn: () => unknown, expected: { field?: string; offset?: number; message?: RegExp } = {}): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof PgmeshError, `expected PgmeshError, got ${String(error)}`);
    assert.equal(error.code, 'PROTOCOL');
    if (expected.field !== undefined) assert.equal(error.context['field'], expected.field);
    if (expected.offset !== undefined) assert.equal(error.context['offset'], expected.offset);
    if (expected.message !== undefined) assert.match(error.message, expected.message);
    return true;
  });
}

const bytes = (...values: number[]): Buffer => Buffer.from(values);

describe('BufferReader', () => {
  test('reads big-endian integers of every width and advances the offset', () => {
    const r = new BufferReader(bytes(0x7f, 0xff, 0xfe, 0x01, 0x02, 0x00, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00));
    assert.equal(r.uint8(), 0x7f);
    assert.equal(r.int8(), -1);
    assert.equal(r.int16(), -511); // 0xfe01
    assert.equal(r.offset, 4);
    assert.equal(r.uint16(), 0x0200);
    assert.equal(r.int32(), 0x00010080);
    assert.equal(r.remaining(), 3);
  });

  test('uint32 reads 0xFFFFFFFF and 0x80000000 as unsigned OIDs; int32 reads them signed', () => {
    const data = bytes(0xff, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00);
    const unsigned = new BufferReader(data);
    assert.equal(unsigned.uint32(), 4_294_967_295);
    assert.equal(unsigned.uint32(), 2_147_483_648);
    const signed = new BufferReader(data);
    assert.equal(signed.int32(), -1);
    assert.equal(signed.int32(), -2_147_483_648);
  });

  test('uint64 reads LSNs above 2^63 without going negative; int64 reads timestamps signed', () => {
    const data = bytes(0x80, 0x00, 0x00, 0x16, 0xb3, 0x74, 0xd8, 0x48, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
    const r = new BufferReader(data);
    assert.equal(r.uint64(), 0x80000016b374d848n);
    assert.equal(r.uint64(), 0xffffffffffffffffn);
    const s = new BufferReader(data);
    assert.equal(s.int64(), 0x80000016b374d848n - (1n << 64n));
    assert.equal(s.int64(), -1n);
  });

  test('cstring reads NUL-terminated UTF-8, consumes the terminator, and allows the empty string', () => {
    const r = new BufferReader(Buffer.concat([Buffer.from('ünïcødé 日本 🐘\0\0', 'utf8'), bytes(0x2a)]));
    assert.equal(r.cstring(), 'ünïcødé 日本 🐘');
    assert.equal(r.cstring(), '');
    assert.equal(r.uint8(), 0x2a);
    assert.equal(r.remaining(), 0);
  });

  test('cstring without a terminator is a PROTOCOL error, not a read past the end', () => {
    const r = new BufferReader(Buffer.from('abc'), 'test message');
    assertProtocolError(() => r.cstring('name'), { field: 'name', offset: 0, message: /test message: name at byte 0: no NUL/ });
  });

  test('invalid UTF-8 is a PROTOCOL error instead of U+FFFD replacement', () => {
    assertProtocolError(() => new BufferReader(bytes(0x61, 0xc3, 0x00)).cstring('name'), { offset: 0, message: /invalid UTF-8/ });
    const r = new BufferReader(bytes(0x00, 0xed, 0xa0, 0x80)); // an encoded surrogate
    r.uint8();
    assertProtocolError(() => r.utf8(3, 'value'), { field: 'value', offset: 1, message: /invalid UTF-8/ });
  });

  test('U+FFFD that is in the data (valid UTF-8) is read as it is, beside invalid bytes that are refused', () => {
    const text = 'a\uFFFDb';
    const r = new BufferReader(Buffer.concat([Buffer.from(`${text}\0`, 'utf8'), Buffer.from(text, 'utf8'), bytes(0xff)]));
    assert.equal(r.cstring(), text);
    assert.equal(r.utf8(Buffer.byteLength(text)), text);
    assertProtocolError(() => r.utf8(1, 'value'), { field: 'value', message: /invalid UTF-8/ });
  });

  test('bytes returns a view of exactly n bytes; rest returns what is left', () => {
    const r = new BufferReader(bytes(1, 2, 3, 4, 5));
    assert.deepEqual([...r.bytes(2)], [1, 2]);
    assert.deepEqual([...r.bytes(0)], []);
    assert.deepEqual([...r.rest()], [3, 4, 5]);
    assert.equal(r.remaining(), 0);
    assert.deepEqual([...r.rest()], []);
  });

  test('every read past the end throws PROTOCOL with the field and the offset, and does not advance', () => {
    const reads: Array<[string, (r: BufferReader) => unknown, number]> = [
      ['uint8', (r) => r.uint8('f'), 1],
      ['int8', (r) => r.int8('f'), 1],
      ['int16', (r) => r.int16('f'), 2],
      ['uint16', (r) => r.uint16('f'), 2],
      ['int32', (r) => r.int32('f'), 4],
      ['uint32', (r) => r.uint32('f'), 4],
      ['int64', (r) => r.int64('f'), 8],
      ['uint64', (r) => r.uint64('f'), 8],
      ['bytes', (r) => r.bytes(5, 'f'), 5],
      ['utf8', (r) => r.utf8(5, 'f'), 5],
    ];
    for (const [name, read, width] of reads) {
      for (let available = 0; available < width; available++) {
        const r = new BufferReader(Buffer.alloc(available + 1, 0x41), 'probe');
        r.uint8();
        assertProtocolError(() => read(r), {
          field: 'f',
          offset: 1,
          message: new RegExp(`probe: f at byte 1: truncated: needs ${width} bytes, ${available} left`),
        });
        assert.equal(r.offset, 1, `${name} must not advance on failure`);
      }
    }
  });

  test('a negative length (an Int32 length field of -1) is a PROTOCOL error', () => {
    assertProtocolError(() => new BufferReader(bytes(1, 2)).bytes(-1, 'len'), { field: 'len', message: /invalid length -1/ });
  });

  test('end() passes on an exhausted reader and reports trailing bytes otherwise', () => {
    const r = new BufferReader(bytes(1, 2, 3), 'Thing');
    r.uint8();
    assertProtocolError(() => r.end(), { offset: 1, message: /Thing: end of message at byte 1: 2 unexpected trailing bytes/ });
    r.uint16();
    r.end();
  });

  test('describe() renames the message in later errors', () => {
    const r = new BufferReader(bytes(0x42), 'pgoutput message');
    r.uint8();
    r.describe('pgoutput Begin');
    assertProtocolError(() => r.uint64('final LSN'), { message: /^malformed pgoutput Begin: final LSN at byte 1/ });
  });
});

describe('BufferWriter', () => {
  test('writes big-endian values that BufferReader reads back', () => {
    const buffer = new BufferWriter(1)
      .char('B')
      .uint8(255)
      .int8(-2)
      .int16(-3)
      .uint16(65535)
      .int32(-4)
      .uint32(0xffffffff)
      .uint64(0xfedcba9876543210n)
      .int64(-5n)
      .cstring('ß')
      .utf8('€')
      .bytes([9, 8])
      .toBuffer();
    assert.equal(buffer.toString('hex'), '42fffefffdfffffffffffcfffffffffedcba9876543210fffffffffffffffbc39f00e282ac0908');
    const r = new BufferReader(buffer);
    assert.deepEqual(
      [r.uint8(), r.uint8(), r.int8(), r.int16(), r.uint16(), r.int32(), r.uint32(), r.uint64(), r.int64(), r.cstring(), r.utf8(3)],
      [0x42, 255, -2, -3, 65535, -4, 0xffffffff, 0xfedcba9876543210n, -5n, 'ß', '€'],
    );
    assert.deepEqual([...r.rest()], [9, 8]);
  });

  test('refuses values it could not write faithfully, leaving no partial bytes', () => {
    const w = new BufferWriter().uint8(1);
    assert.throws(() => w.uint32(-1), RangeError);
    assert.throws(() => w.uint8(256), RangeError);
    assert.throws(() => w.uint64(-1n), RangeError);
    assert.throws(() => w.cstring('a\0b'), RangeError);
    assert.throws(() => w.char('ab'), RangeError);
    assert.deepEqual([...w.toBuffer()], [1]);
  });
});
