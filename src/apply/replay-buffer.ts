/**
 * The events of every transaction sent to the apply session and not yet known to have committed, in order: after a
 * fast-path miss or a retryable failure (apply-retry.ts) the failed transaction and those behind it are applied
 * again from here, without a new stream. Memory is bounded: past RETAIN_MAX_EVENTS events, the transaction being
 * received is not kept (a failure in it restarts the stream instead).
 */
import Denque from 'denque';
import type { Lsn } from '../core/lsn.ts';
import type { StreamEvent } from '../stream/remote-transaction.ts';

const RETAIN_MAX_EVENTS = 50_000;

export class ReplayBuffer {
  /** By transaction, in order; events null: not kept (too many). */
  private readonly kept = new Denque<{ readonly finalLsn: Lsn; events: StreamEvent[] | null }>();
  private count = 0;

  /** Keeps an event of the transaction being received (a Begin starts the next one). */
  retain(event: StreamEvent): void {
    if (event.kind === 'begin') {
      this.kept.push({ finalLsn: event.finalLsn, events: [event] });
      this.count++;
      return;
    }
    const last = this.kept.peekBack();
    if (!last?.events) return;
    if (this.count >= RETAIN_MAX_EVENTS) {
      this.count -= last.events.length;
      last.events = null;
      return;
    }
    last.events.push(event);
    this.count++;
  }

  /** The transaction at finalLsn committed: it and those before it are not needed any more. */
  committed(finalLsn: Lsn): void {
    while (this.kept.length > 0 && (this.kept.peekFront()?.finalLsn ?? 0n) <= finalLsn) {
      this.count -= this.kept.shift()?.events?.length ?? 0;
    }
  }

  /** Whether the transaction at finalLsn is the first one kept and every transaction was kept whole. */
  holdsFrom(finalLsn: Lsn | undefined): boolean {
    const first = this.kept.peekFront();
    return first !== undefined && first.finalLsn === finalLsn && this.kept.toArray().every((e) => e.events !== null);
  }

  /** Every event kept, in order; the buffer is emptied (they are kept again as they are handled again). */
  takeAll(): StreamEvent[] {
    const events = this.kept.toArray().flatMap((e) => e.events ?? []);
    this.kept.clear();
    this.count = 0;
    return events;
  }
}
