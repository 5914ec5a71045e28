/**
 * A peer's commit timestamps from the future (docs/security.md, "Commit timestamps from the future").
 * Last-update-wins orders versions by commit timestamp: a node whose clock runs far ahead writes versions that beat
 * every later write of the others until their clocks catch up, and a node whose clock was set a year ahead wins
 * every conflict for that year. The clock monitor only warns about it.
 *
 * So a transaction of a peer whose commit timestamp is more than tuning.futureCommitHoldMs ahead of the local clock
 * is held before it is applied, until the local clock is within that bound of it. The stream is in commit order:
 * holding one transaction holds the ones after it, so nothing is lost and the order is kept; what came before it is
 * applied first. The version it then writes is no newer than what a local write made at that moment would get,
 * so it cannot win for longer than any other write. A hold is logged (once per transaction) and shown in the
 * agent's status.
 * Past tuning.futureCommitPauseMs, holding would stop the link for that long without an end in sight (a clock set
 * wrong by hours or years): the link is paused instead (pgmesh.apply_progress.paused_reason, shown by status), for
 * the operator to fix the peer's clock and then run "pgmesh resume".
 * The local clock is the local server's (the one its own commits take), read once per session through the catalog
 * connection and followed with this process's monotonic-enough wall clock.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { pgTimestampToDate } from '../core/pg-time.ts';
import type { EventSource } from '../apply/apply-types.ts';
import type { Queryable } from '../pg/connect.ts';
import type { StreamEvent } from '../stream/remote-transaction.ts';

/** How often a hold looks at the clock again (and at whether the agent stops). */
const HOLD_POLL_MS = 500;

export interface FutureHold {
  /** The held transaction's commit timestamp (ISO). */
  readonly commitTime: string;
  /** How far ahead of the local clock it was when the hold began. */
  readonly aheadMs: number;
}

export interface FutureCommitOptions {
  readonly peer: string;
  readonly localNode: string;
  readonly holdMs: number;
  readonly pauseMs: number;
  readonly logger: Logger;
  readonly signal: AbortSignal;
  /** The local clock in ms since the epoch (tests fake it); default: the local server's clock. */
  readonly now?: () => number;
}

export class FutureCommitGuard {
  /** The hold in progress, for status. */
  held: FutureHold | null = null;
  /** Transactions held so far. */
  holds = 0;
  private offsetMs = 0;

  constructor(private readonly options: FutureCommitOptions) {}

  /** Reads the local server's clock against this process's (once per session). */
  async calibrate(catalog: Queryable): Promise<void> {
    if (this.options.now) return;
    const t0 = Date.now();
    const rows = await catalog.unsafe<{ ms: string }[]>(`SELECT (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::pg_catalog.text AS ms`);
    const t1 = Date.now();
    const server = Number(rows[0]?.ms);
    if (Number.isFinite(server)) this.offsetMs = server - (t0 + t1) / 2;
  }

  private now(): number {
    return this.options.now ? this.options.now() : Date.now() + this.offsetMs;
  }

  /** The source, with each transaction too far ahead held at its begin (what precedes it is handed over first). */
  wrap(source: EventSource): EventSource {
    let rest: StreamEvent[] = [];
    return {
      next: async () => {
        const events = rest.length > 0 ? rest : await source.next();
        rest = [];
        if (events === null) return null;
        const at = events.findIndex((e, i) => e.kind === 'begin' && this.ahead(e.commitTime) > this.options.holdMs && !(i === 0 && this.released === e));
        if (at > 0) {
          rest = events.slice(at);
          return events.slice(0, at);
        }
        if (at === 0) {
          const begin = events[0] as Extract<StreamEvent, { kind: 'begin' }>;
          if (!(await this.hold(begin))) return null;
          this.released = begin;
          // Its begin is handed over now; a later one in the same batch is looked at on the next call.
          const later = events.findIndex((e, i) => i > 0 && e.kind === 'begin' && this.ahead(e.commitTime) > this.options.holdMs);
          if (later > 0) {
            rest = events.slice(later);
            return events.slice(0, later);
          }
        }
        return events;
      },
    };
  }

  private released: StreamEvent | undefined;

  private ahead(commitTime: Extract<StreamEvent, { kind: 'begin' }>['commitTime']): number {
    return pgTimestampToDate(commitTime).getTime() - this.now();
  }

  /** Waits until the transaction is within the bound; false when the agent stops first. Throws past the pause bound. */
  private async hold(begin: Extract<StreamEvent, { kind: 'begin' }>): Promise<boolean> {
    const { peer, localNode, holdMs, pauseMs, logger, signal } = this.options;
    const commitTime = pgTimestampToDate(begin.commitTime).toISOString();
    const aheadMs = Math.round(this.ahead(begin.commitTime));
    if (aheadMs > pauseMs) {
      throw new PgmeshError(
        'CLOCK_AHEAD',
        `a transaction of ${peer} committed at ${commitTime}, ${Math.round(aheadMs / 1000)} s ahead of ${localNode}'s clock (more than tuning.futureCommitPauseMs, ${Math.round(pauseMs / 1000)} s): its versions would win every conflict until then; nothing of it was applied. Fix the clock of ${peer} (or of ${localNode}: NTP), then run "pgmesh resume --node ${localNode} --peer ${peer}"; it is held until ${localNode}'s clock is within tuning.futureCommitHoldMs of it`,
        { context: { peer, node: localNode, commitTime } },
      );
    }
    this.held = { commitTime, aheadMs };
    this.holds++;
    logger.warn(
      { peer, commitTime, aheadMs },
      `holding a transaction of ${peer} whose commit timestamp is ${aheadMs} ms ahead of ${localNode}'s clock until the clock catches up (tuning.futureCommitHoldMs); fix time synchronisation (NTP)`,
    );
    try {
      for (;;) {
        if (signal.aborted) return false;
        const left = this.ahead(begin.commitTime) - holdMs;
        if (left <= 0) return true;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, HOLD_POLL_MS));
          signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
        });
      }
    } finally {
      this.held = null;
    }
  }
}
