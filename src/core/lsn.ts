/**
 * Log sequence numbers: unsigned 64-bit positions in the WAL, printed as PostgreSQL prints them (`16/B374D848`).
 * Kept as a branded bigint so that an LSN cannot be mixed up with a count or a timestamp.
 */
export type Lsn = bigint & { readonly __brand: 'Lsn' };

export const LSN_ZERO = 0n as Lsn;
const MAX_U64 = (1n << 64n) - 1n;

export function lsn(value: bigint): Lsn {
  if (value < 0n || value > MAX_U64) throw new RangeError(`LSN out of range: ${value}`);
  return value as Lsn;
}

/** Parses `X/Y` (hex halves, as pg_lsn prints them). */
export function parseLsn(text: string): Lsn {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!match) throw new SyntaxError(`invalid LSN "${text}": expected two hex numbers separated by "/", like 16/B374D848`);
  return ((BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`)) as Lsn;
}

export function formatLsn(value: Lsn | bigint): string {
  const hi = (value >> 32n) & 0xffffffffn;
  const lo = value & 0xffffffffn;
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}

export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}
