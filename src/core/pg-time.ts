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

/**
 * The second the last formatted timestamp fell in, and its text up to the fraction: the transactions of one second
 * share it (Date's ISO formatting of every commit timestamp was a few percent of the agent's time).
 */
let formattedSecond = Number.NaN;
let formattedPrefix = '';

/** ISO 8601 in UTC with all six fractional digits, accepted by timestamptz input: `2026-11-22T04:55:12.123456Z`. */
export function formatPgTimestamp(ts: PgTimestamp): string {
  const unixUs = ts + PG_EPOCH_US;
  let second: number;
  let micros: number;
  const n = Number(unixUs);
  if (Number.isSafeInteger(n)) {
    second = Math.floor(n / 1_000_000);
    micros = n - second * 1_000_000;
  } else {
    let s = unixUs / 1_000_000n;
    let us = unixUs % 1_000_000n;
    if (us < 0n) {
      us += 1_000_000n;
      s -= 1n;
    }
    second = Number(s);
    micros = Number(us);
  }
  if (second !== formattedSecond) {
    formattedPrefix = new Date(second * 1000).toISOString().slice(0, 20); // yyyy-mm-ddThh:mm:ss.
    formattedSecond = second;
  }
  return `${formattedPrefix}${String(micros).padStart(6, '0')}Z`;
}

/**
 * SQL that prints a timestamptz column as ISO 8601 in UTC, to the microsecond ("2026-05-01T12:00:00.123456Z"), for
 * JSON output; PostgreSQL's own text form ("2026-05-01 12:00:00.123456+00") is not ISO 8601. Infinite values stay
 * "infinity" / "-infinity".
 */
export function isoTimestampSql(column: string): string {
  return `CASE WHEN isfinite(${column}) THEN to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') ELSE ${column}::text END`;
}
