/** LSNs are unsigned 64-bit and printed as PostgreSQL prints pg_lsn: two upper-case hex halves without leading zeros. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LSN_ZERO, formatLsn, lsn, maxLsn, parseLsn } from '../../src/core/lsn.ts';

const MAX_U64 = (1n << 64n) - 1n;

test('parses and formats like pg_lsn', () => {
  assert.equal(parseLsn('16/B374D848'), (0x16n << 32n) | 0xb374d848n);
  assert.equal(parseLsn('0/0'), LSN_ZERO);
  assert.equal(parseLsn(' 0/1a2b\n'), 0x1a2bn);
  assert.equal(formatLsn(parseLsn('16/b374d848')), '16/B374D848');
  assert.equal(formatLsn(parseLsn('00000001/0000000A')), '1/A');
  assert.equal(formatLsn(0n), '0/0');
});

test('values above 2^63 stay unsigned', () => {
  assert.equal(parseLsn('FFFFFFFF/FFFFFFFF'), MAX_U64);
  assert.equal(formatLsn(MAX_U64), 'FFFFFFFF/FFFFFFFF');
  assert.equal(parseLsn('80000000/0'), 1n << 63n);
  assert.equal(formatLsn(1n << 63n), '80000000/0');
  assert.equal(formatLsn((1n << 63n) + 1n), '80000000/1');
  assert.ok(parseLsn('80000000/0') > parseLsn('7FFFFFFF/FFFFFFFF'));
  assert.equal(maxLsn(lsn(1n << 63n), lsn((1n << 63n) - 1n)), 1n << 63n);
});

test('malformed LSNs are refused with an example of the right form', () => {
  for (const text of ['', '1', '1/', '/1', '1/2/3', 'G/0', '-1/0', '1/-1', '123456789/0', '0/123456789', '0x1/2', '1 /2']) {
    assert.throws(() => parseLsn(text), (error: Error) => {
      assert.ok(error instanceof SyntaxError, text);
      assert.match(error.message, /expected two hex numbers separated by "\/", like 16\/B374D848/);
      assert.ok(error.message.includes(`"${text}"`), error.message);
      return true;
    });
  }
});

test('lsn() refuses values outside unsigned 64-bit', () => {
  assert.throws(() => lsn(-1n), RangeError);
  assert.throws(() => lsn(MAX_U64 + 1n), RangeError);
  assert.equal(lsn(MAX_U64), MAX_U64);
});

test('property: format then parse is the identity on every unsigned 64-bit value', () => {
  fc.assert(
    fc.property(fc.bigInt({ min: 0n, max: MAX_U64 }), (value) => {
      const text = formatLsn(value);
      assert.match(text, /^(0|[1-9A-F][0-9A-F]{0,7})\/(0|[1-9A-F][0-9A-F]{0,7})$/);
      assert.equal(parseLsn(text), value);
    }),
    { numRuns: 2000 },
  );
});

test('property: parse then format normalises case and leading zeros', () => {
  const half = fc.bigInt({ min: 0n, max: 0xffffffffn });
  const written = fc.tuple(half, fc.nat({ max: 7 }), fc.boolean()).map(([v, zeros, lower]) => {
    const hex = '0'.repeat(zeros) + v.toString(16);
    return { v, text: (lower ? hex.toLowerCase() : hex.toUpperCase()).slice(-8).padStart(1, '0') };
  });
  fc.assert(
    fc.property(written, written, (hi, lo) => {
      const value = parseLsn(`${hi.text}/${lo.text}`);
      assert.equal(value, (hi.v << 32n) | lo.v);
      assert.equal(formatLsn(value), `${hi.v.toString(16).toUpperCase()}/${lo.v.toString(16).toUpperCase()}`);
    }),
    { numRuns: 1000 },
  );
});
