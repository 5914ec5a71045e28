/**
 * PostgreSQL timestamps: signed 64-bit microseconds since 2000-01-01 UTC. Commit timestamps decide last-update-wins,
 * so the microseconds must survive formatting exactly, on both sides of 2000 and of 1970.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  PG_EPOCH_MS,
  formatPgTimestamp,
  pgTimestamp,
  pgTimestampFromDate,
  pgTimestampToDate,
  pgTimestampToUnixMicros,
} from '../../src/core/pg-time.ts';

const PG_EPOCH_US = 946_684_800_000_000n;

/** The inverse of formatPgTimestamp, written independently: ISO milliseconds plus three more digits. */
function parseFormatted(text: string): bigint {
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})(\d{3})Z$/.exec(text);
  assert.ok(match, `not in the expected form: ${text}`);
  return BigInt(Date.parse(`${match[1]}Z`)) * 1000n + BigInt(match[2] as string) - PG_EPOCH_US;
}

test('PG_EPOCH_MS is 2000-01-01T00:00:00Z', () => {
  assert.equal(PG_EPOCH_MS, 946_684_800_000);
  assert.equal(PG_EPOCH_MS, Date.UTC(2000, 0, 1));
  assert.equal(new Date(PG_EPOCH_MS).toISOString(), '2000-01-01T00:00:00.000Z');
  assert.equal(pgTimestampFromDate(new Date('2000-01-01T00:00:00Z')), 0n);
  assert.equal(pgTimestampToUnixMicros(pgTimestamp(0n)), PG_EPOCH_US);
});

test('formats with all six fractional digits', () => {
  assert.equal(formatPgTimestamp(pgTimestamp(0n)), '2000-01-01T00:00:00.000000Z');
  assert.equal(formatPgTimestamp(pgTimestamp(1n)), '2000-01-01T00:00:00.000001Z');
  assert.equal(formatPgTimestamp(pgTimestamp(999n)), '2000-01-01T00:00:00.000999Z');
  assert.equal(formatPgTimestamp(pgTimestamp(1000n)), '2000-01-01T00:00:00.001000Z');
  const commit = BigInt(Date.UTC(2026, 10, 22, 4, 55, 12, 123)) * 1000n + 456n - PG_EPOCH_US;
  assert.equal(formatPgTimestamp(pgTimestamp(commit)), '2026-11-22T04:55:12.123456Z');
});

test('negative values (before 2000) borrow correctly from the millisecond', () => {
  assert.equal(formatPgTimestamp(pgTimestamp(-1n)), '1999-12-31T23:59:59.999999Z');
  assert.equal(formatPgTimestamp(pgTimestamp(-1000n)), '1999-12-31T23:59:59.999000Z');
  assert.equal(formatPgTimestamp(pgTimestamp(-1001n)), '1999-12-31T23:59:59.998999Z');
  assert.equal(formatPgTimestamp(pgTimestamp(-1_000_000n)), '1999-12-31T23:59:59.000000Z');
});

test('before 1970 (negative Unix time) too', () => {
  assert.equal(formatPgTimestamp(pgTimestamp(-PG_EPOCH_US)), '1970-01-01T00:00:00.000000Z');
  assert.equal(formatPgTimestamp(pgTimestamp(-PG_EPOCH_US - 1n)), '1969-12-31T23:59:59.999999Z');
  assert.equal(formatPgTimestamp(pgTimestamp(-PG_EPOCH_US - 1500n)), '1969-12-31T23:59:59.998500Z');
  const y1900 = BigInt(Date.UTC(1900, 0, 1)) * 1000n - PG_EPOCH_US;
  assert.equal(formatPgTimestamp(pgTimestamp(y1900 + 1n)), '1900-01-01T00:00:00.000001Z');
});

test('Date conversions keep the millisecond', () => {
  const date = new Date('2026-03-04T05:06:07.089Z');
  assert.equal(pgTimestampToDate(pgTimestampFromDate(date)).toISOString(), date.toISOString());
  assert.equal(pgTimestampToDate(pgTimestamp(-1n)).toISOString(), '1999-12-31T23:59:59.999Z');
  assert.equal(pgTimestampFromDate(new Date(PG_EPOCH_MS - 1)), -1000n);
});

test('pgTimestampToDate floors before 1970 as it does after', () => {
  // 1969-12-31T23:59:59.999999 is in the millisecond that starts at .999, not in 1970.
  assert.equal(pgTimestampToDate(pgTimestamp(-PG_EPOCH_US - 1n)).toISOString(), '1969-12-31T23:59:59.999Z');
});

// Years 1000-9999: the range where the ISO form is fixed-width (every real commit timestamp).
const micros = fc.bigInt({
  min: BigInt(Date.UTC(1000, 0, 1)) * 1000n - PG_EPOCH_US,
  max: BigInt(Date.UTC(9999, 11, 31, 23, 59, 59, 999)) * 1000n + 999n - PG_EPOCH_US,
});

test('property: formatting is exact to the microsecond', () => {
  fc.assert(
    fc.property(micros, (us) => {
      assert.equal(parseFormatted(formatPgTimestamp(pgTimestamp(us))), us);
    }),
    { numRuns: 3000 },
  );
});

test('property: formatted timestamps sort as text in time order', () => {
  fc.assert(
    fc.property(micros, micros, (a, b) => {
      const [fa, fb] = [formatPgTimestamp(pgTimestamp(a)), formatPgTimestamp(pgTimestamp(b))];
      assert.equal(Math.sign(Number(a - b)), fa < fb ? -1 : fa > fb ? 1 : 0);
    }),
    { numRuns: 2000 },
  );
});

// Commit timestamps of today's transactions: a stream of them falls in few seconds, which the formatter reuses.
test('property: runs of nearby timestamps (the same second, the next, before and after) format exactly', () => {
  const now = BigInt(Date.UTC(2026, 10, 22)) * 1000n - PG_EPOCH_US;
  fc.assert(
    fc.property(fc.bigInt({ min: -PG_EPOCH_US - 5_000_000n, max: now }), fc.array(fc.bigInt({ min: -2_500_000n, max: 2_500_000n }), { maxLength: 20 }), (base, steps) => {
      for (const step of [0n, ...steps]) assert.equal(parseFormatted(formatPgTimestamp(pgTimestamp(base + step))), base + step);
    }),
    { numRuns: 1000 },
  );
});
