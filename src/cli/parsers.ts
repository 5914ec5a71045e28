/**
 * Parsers for commander's options and arguments. Each takes the text exactly as typed and refuses anything else
 * with InvalidArgumentError, which commander reports with the option's name; main.ts turns that into exit code 2.
 * Number() is not used on its own: it reads "0x10" as 16, "" as 0 and rounds past 2^53.
 */
import { InvalidArgumentError } from 'commander';

/** The largest bigint PostgreSQL stores (ids of pgmesh's catalog tables are bigint). */
const MAX_BIGINT = 9_223_372_036_854_775_807n;

/** A catalog id: decimal digits only, 1 to 2^63-1, kept exact as a bigint. */
export function parseId(text: string): bigint {
  if (!/^[0-9]+$/.test(text) || BigInt(text) < 1n || BigInt(text) > MAX_BIGINT) {
    throw new InvalidArgumentError(`Give the id as a whole number from 1 to ${MAX_BIGINT} (written in decimal), as the list shows it.`);
  }
  return BigInt(text);
}

/** A whole number from min to max, in decimal. */
export function wholeNumber(min: number, max: number): (text: string) => number {
  return (text) => {
    const n = /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`Give a whole number from ${min} to ${max}.`);
    return n;
  };
}

/** Seconds, with an optional fraction ("2", "0.5"), from min to max. */
export function seconds(min: number, max: number): (text: string) => number {
  return (text) => {
    const n = /^[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`Give a number of seconds from ${min} to ${max}.`);
    return n;
  };
}

/** A number (decimal, with an optional fraction) from min to max, e.g. a rate; `what` names it in the message. */
export function decimal(min: number, max: number, what: string): (text: string) => number {
  return (text) => {
    const n = /^[0-9]+(\.[0-9]+)?$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`Give ${what} from ${min} to ${max}.`);
    return n;
  };
}
