/**
 * Retrying a transaction in place. The apply session runs beside the node's own sessions, so a remote transaction
 * can meet a deadlock with one of them (40P01), a row that changed under a lock (40001: also raised on purpose by
 * the unique-key resolution, see unique-resolution.ts), or a lock not granted within the session's lock_timeout
 * (55P03: a local session idle in a transaction that holds the row). None of these is the transaction's own fault:
 * applied again a moment later, it goes through. The applier keeps the events of every transaction not yet known
 * to have committed (its replay buffer), so it rolls back and applies the failed transaction again from them, on
 * the same session and stream, after a short exponential backoff with jitter. After `limit` retries of the same
 * transaction it gives up, and the stream is restarted as for any other failure (the peer replicator's backoff).
 *
 * Each retry is counted (ApplyStats.applyRetries, and pgmesh.apply_progress.apply_retries for `pgmesh status`),
 * logged at info level, at warn level past RETRY_WARN_AFTER retries of one transaction; while one is retried,
 * apply_progress.retry_since and retry_sqlstate say so (cleared by the next commit).
 */
import { errorMessage, messageWithoutValues } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, type Lsn } from '../core/lsn.ts';
import { APPLY_RETRY_REASONS, sqlState } from '../core/sqlstate.ts';
import type { Sql } from '../pg/connect.ts';

/** The first retry's backoff ceiling; it doubles with each retry of the same transaction, up to RETRY_MAX_MS. */
export const RETRY_BASE_MS = 20;
export const RETRY_MAX_MS = 2_000;
/** Retries of one transaction logged at info level; later ones at warn level (something keeps it from applying). */
export const RETRY_WARN_AFTER = 3;

/** The backoff before retry number `attempt` (1, 2, ...): half of the ceiling fixed, half random. */
export function retryDelayMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(Math.max(attempt - 1, 0), 20));
  return ceiling / 2 + random() * (ceiling / 2);
}

export interface ApplyRetriesOptions {
  readonly peer: string;
  /** The agent's catalog connection (not the apply session, which is in the failed transaction's place). */
  readonly catalog: Sql;
  /** Retries of one transaction before giving up. */
  readonly limit: number;
  readonly logger: Logger;
}

/** Counts and records the retries of one apply session; decides whether a failed transaction is tried again. */
export class ApplyRetries {
  /** The transaction being retried (its commit LSN), how often so far. */
  private current: { readonly finalLsn: Lsn; attempts: number } | undefined;
  /** Catalog writes, one after the other (a clear must not overtake the mark it clears). */
  private writes: Promise<void> = Promise.resolve();
  /**
   * The catalog may say a transaction is being retried: cleared at the next commit. True at first, since an
   * earlier session (or agent) may have left it so.
   */
  private marked = true;

  constructor(private readonly options: ApplyRetriesOptions) {}

  /**
   * A transaction failed with a SQLSTATE that isApplyRetrySqlState accepts: the backoff before it is applied again
   * in place, or undefined when it was retried `limit` times already (the stream restarts instead).
   */
  next(finalLsn: Lsn, error: unknown): number | undefined {
    const { peer, logger, limit } = this.options;
    if (this.current?.finalLsn !== finalLsn) this.current = { finalLsn, attempts: 0 };
    const code = sqlState(error) ?? '';
    const reason = APPLY_RETRY_REASONS[code] ?? code;
    if (this.current.attempts >= limit) {
      logger.warn({ peer, transaction: formatLsn(finalLsn), retries: this.current.attempts, reason }, 'transaction still fails after its retries in place; restarting the stream');
      return undefined;
    }
    const attempt = ++this.current.attempts;
    const delayMs = retryDelayMs(attempt);
    const fields = { peer, transaction: formatLsn(finalLsn), attempt, reason, delayMs: Math.round(delayMs), err: messageWithoutValues(error) };
    if (attempt > RETRY_WARN_AFTER) logger.warn(fields, 'transaction failed again; applying it again in place');
    else logger.info(fields, 'transaction failed; applying it again in place');
    this.marked = true;
    this.write(
      `UPDATE pgmesh.apply_progress SET apply_retries = apply_retries + 1, retry_since = coalesce(retry_since, pg_catalog.now()), retry_sqlstate = $2
        WHERE peer = $1`,
      [peer, code],
    );
    return delayMs;
  }

  /** A transaction committed: whatever was retried before it is done. Cheap when nothing was (every commit calls it). */
  committed(finalLsn: Lsn): void {
    if (this.current !== undefined && finalLsn >= this.current.finalLsn) this.current = undefined;
    if (!this.marked) return;
    this.marked = false;
    this.write(`UPDATE pgmesh.apply_progress SET retry_since = NULL, retry_sqlstate = NULL WHERE peer = $1 AND retry_since IS NOT NULL`, [this.options.peer]);
  }

  /** Waits for the catalog writes made so far (they never fail: a failed one is logged at debug level). */
  flushed(): Promise<void> {
    return this.writes;
  }

  private write(text: string, params: string[]): void {
    const { catalog, logger, peer } = this.options;
    this.writes = this.writes.then(() =>
      catalog.unsafe(text, params).then(
        () => undefined,
        (error: unknown) => logger.debug({ peer, err: errorMessage(error) }, 'recording an apply retry failed'),
      ),
    );
  }
}
