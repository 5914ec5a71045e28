/**
 * PostgreSQL timestamps on the wire are signed 64-bit microseconds since 2000-01-01 00:00:00 UTC.
 * Commit timestamps decide last-update-wins, so they are kept to the microsecond (a JS Date keeps milliseconds only).
 */
export const PG_EPOCH_MS = 946_684_800_000;
const PG_EPOCH_US = BigInt(PG_EPOCH_MS) * 1000n;

/** Microseconds since the PostgreSQL epoch. */
export type PgTimestamp = bigint & { readonly __brand: 'PgTimestamp' };

export function pgTimestamp(microsSincePgEpoch: bigint): PgTimestamp {
  return microsSincePgEpoch as PgTimestamp;
}

export function pgTimestampFromDate(date: Date): PgTimestamp {
  return (BigInt(date.getTime()) * 1000n - PG_EPOCH_US) as PgTimestamp;
}

/** The millisecond the timestamp falls in (floored, before 1970 too: bigint division truncates toward zero). */
export function pgTimestampToDate(ts: PgTimestamp): Date {
  const unixUs = ts + PG_EPOCH_US;
  const ms = unixUs / 1000n;
  return new Date(Number(unixUs % 1000n < 0n ? ms - 1n : ms));
}

export function pgTimestampToUnixMicros(ts: PgTimestamp): bigint {
  return ts + PG_EPOCH_US;
}

/** ISO 8601 in UTC with all six fractional digits, accepted by timestamptz input: `2026-11-22T04:55:12.123456Z`. */
export function formatPgTimestamp(ts: PgTimestamp): string {
  const unixUs = ts + PG_EPOCH_US;
  let ms = unixUs / 1000n;
  let us = unixUs % 1000n;
  if (us < 0n) {
    us += 1000n;
    ms -= 1n;
  }
  const iso = new Date(Number(ms)).toISOString(); // yyyy-mm-ddThh:mm:ss.mmmZ
  return `${iso.slice(0, 23)}${us.toString().padStart(3, '0')}Z`;
}
