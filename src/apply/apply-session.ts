/**
 * The apply session's pipeline: the statements of many transactions sent on the one connection without waiting for
 * replies, grouped into simple-query messages, and what is known of which transactions committed. When a statement
 * fails, the server skips the rest of its message, COMMIT included, and the session stays in the aborted
 * transaction: every message behind it fails too, so nothing is applied out of order; settle() then asks the
 * session which transactions did commit.
 *
 * The session's mode is one variable (design.md, "Applier"):
 *
 *   applying   --a statement failed, or fail()-->                      failed
 *   failed     --recover(): the applier settles, may apply again-->   recovering
 *   recovering --resume(): applying again from the kept events-->     applying
 *   recovering --giveUp(): no replay (another failure, ...)-->        failed
 *   any        --the connection closed, a settle without answer, or close()--> closed (final)
 *
 * Invariant: `failure` is set in failed and recovering (and may be in closed), and unset in applying; nothing is sent
 * unless the mode is applying.
 */
import Denque from 'denque';
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import { sqlState } from '../core/sqlstate.ts';
import type { Sql } from '../pg/connect.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import { countConflicts, type CommitRecord, type Failure, type OpenTransaction } from './apply-types.ts';

/** Message bytes in flight before the applier waits for replies (keeps a huge transaction's memory flat). */
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;
/**
 * Transactions sent and not yet known to have committed before the applier waits for replies. Everything of such a
 * transaction (its events, kept for a replay; its state; its statements) lives until the reply: with up to
 * maxInflightStatements messages of MAX_TRANSACTIONS_PER_MESSAGE each (16k one-row transactions) the garbage
 * collector copied that much on every young-generation collection, a third of the agent's time. At this bound the
 * session still has tens of milliseconds of work queued when the applier wakes (at half of it).
 */
const MAX_UNCONFIRMED_TRANSACTIONS = 1024;
/** A large transaction is sent in messages of about this size. */
export const MESSAGE_BYTES = 512 * 1024;
/**
 * Small transactions that arrive together are sent together, up to this many in one message (each still its own
 * BEGIN ... COMMIT): the driver's work per call is a large part of the agent's CPU on small transactions.
 */
const MAX_TRANSACTIONS_PER_MESSAGE = 32;
/** How long the session is asked, after a failure, which transactions committed (see settle). */
const SETTLE_TIMEOUT_MS = 10_000;

export type SessionMode = 'applying' | 'failed' | 'recovering' | 'closed';

/** The transitions of SessionMode that the code makes (any other is a bug: it throws). */
const TRANSITIONS: Readonly<Record<SessionMode, readonly SessionMode[]>> = {
  applying: ['failed', 'closed'],
  failed: ['recovering', 'closed'],
  recovering: ['applying', 'failed', 'closed'],
  closed: [],
};

export interface ApplySessionOptions {
  readonly peer: string;
  readonly localNode: string;
  readonly maxInflightStatements: number;
  readonly logger: Logger;
  /** The commit LSN of the transaction being handled, to which a failure of a statement sent now is attributed. */
  readonly currentLsn: () => Lsn | undefined;
  /** A transaction is known to have committed (in order). */
  readonly onCommitted: (record: CommitRecord) => void;
}

export class ApplySession {
  private modeNow: SessionMode = 'applying';
  private failureNow: Failure | undefined;
  private inflight = 0;
  private inflightBytes = 0;
  private roomWaiter: (() => void) | undefined;
  private drainWaiter: (() => void) | undefined;
  /**
   * Set while the applier waits for events: a failed statement wakes it (like an ended stream), so it does not wait
   * for the next event first. Not a long-lived promise raced against every wait: each Promise.race leaves a
   * reaction on a promise that never settles, and that reaction keeps the race's result alive.
   */
  wakeOnFailure: (() => void) | undefined;
  /** The statements of the message being built. */
  private message: string[] = [];
  private bytes = 0;
  /** The transactions whose statements are in the message, where each one's statements start. */
  private segments: { readonly txn: OpenTransaction; start: number; commit: CommitRecord | undefined }[] = [];
  /** Transactions whose COMMIT is sent or about to be, not yet known to have committed, in order. */
  private readonly unconfirmed = new Denque<CommitRecord>();

  constructor(
    readonly sql: Sql,
    private readonly options: ApplySessionOptions,
  ) {}

  get mode(): SessionMode {
    return this.modeNow;
  }

  get failure(): Failure | undefined {
    return this.failureNow;
  }

  get closed(): boolean {
    return this.modeNow === 'closed';
  }

  private to(next: SessionMode): void {
    if (next === this.modeNow) return;
    if (!TRANSITIONS[this.modeNow].includes(next)) throw new PgmeshError('INTERNAL', `apply session of ${this.options.peer}: no transition from ${this.modeNow} to ${next}`);
    this.modeNow = next;
  }

  /** Something failed (a statement, or a step of the applier): the first failure is kept; nothing more is sent. */
  fail(failure: Failure): void {
    if (this.failureNow === undefined) this.failureNow = failure;
    if (this.modeNow === 'applying') this.to('failed');
    this.wakeOnFailure?.();
  }

  /** The applier takes the failure in hand (settles, then applies again or gives up). */
  recover(): void {
    this.to('recovering');
  }

  /** Applying again from the kept events: the failure is over, and what was built or unconfirmed is dropped. */
  resume(): void {
    this.to('applying');
    this.failureNow = undefined;
    this.message = [];
    this.bytes = 0;
    this.segments = [];
    this.unconfirmed.clear();
  }

  /** No replay: the failure stands (the run ends with it). */
  giveUp(): void {
    if (this.modeNow === 'recovering') this.to('failed');
  }

  /** Sends a statement without waiting for its reply; waits only when too many replies are outstanding. */
  issue(text: string, params: readonly (string | null)[], what: string, onResult?: (result: unknown) => void): Promise<void> | undefined {
    if (this.modeNow !== 'applying') return undefined;
    // The statement text counts too: a message of grouped statements carries its values as literals in it.
    let bytes = text.length;
    for (const p of params) bytes += p === null ? 0 : p.length;
    this.inflight++;
    this.inflightBytes += bytes;
    const finalLsn = this.options.currentLsn();
    const query = params.length > 0 ? this.sql.unsafe(text, params as string[], { prepare: true }) : this.sql.unsafe(text);
    query.then(
      (result) => {
        onResult?.(result);
        this.settled(bytes);
      },
      (error: unknown) => {
        this.fail({ error, what, finalLsn });
        this.settled(bytes);
      },
    );
    if (this.inflight < this.options.maxInflightStatements && this.inflightBytes < MAX_INFLIGHT_BYTES && this.unconfirmed.length < MAX_UNCONFIRMED_TRANSACTIONS) {
      return undefined;
    }
    return new Promise((resolve) => {
      this.roomWaiter = resolve;
    });
  }

  private settled(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (
      this.roomWaiter &&
      this.inflight <= this.options.maxInflightStatements / 2 &&
      this.inflightBytes < MAX_INFLIGHT_BYTES / 2 &&
      // After a failure the failed message's transactions stay unconfirmed: the replies are what count then.
      (this.unconfirmed.length <= MAX_UNCONFIRMED_TRANSACTIONS / 2 || this.failureNow !== undefined || this.inflight === 0)
    ) {
      const wake = this.roomWaiter;
      this.roomWaiter = undefined;
      wake();
    }
    if (this.drainWaiter && this.inflight === 0) {
      const wake = this.drainWaiter;
      this.drainWaiter = undefined;
      wake();
    }
  }

  /**
   * The connection closed: its origin session and prepared statements are gone with it, so nothing more may run on
   * whatever connection the driver opens next. The applier stops (the peer replicator starts a new one), without
   * waiting for statements the driver holds for a reconnect.
   */
  connectionClosed(): void {
    if (this.modeNow === 'closed') return;
    this.options.logger.info({ peer: this.options.peer, inflight: this.inflight }, 'apply session closed');
    this.fail({
      error: new PgmeshError('CONNECTION_FAILED', `the apply session on ${this.options.localNode} was closed (server restarted or connection lost)`),
      what: 'the apply session',
      finalLsn: this.options.currentLsn(),
    });
    this.to('closed');
    const room = this.roomWaiter;
    this.roomWaiter = undefined;
    room?.();
    const drained = this.drainWaiter;
    this.drainWaiter = undefined;
    drained?.();
  }

  /** Waits until no statement is in flight (at once when the session is closed). */
  drain(): Promise<void> {
    if (this.inflight === 0 || this.modeNow === 'closed') return Promise.resolve();
    return new Promise((resolve) => {
      this.drainWaiter = resolve;
    });
  }

  // ---- the message being built ----

  /** A transaction begins: its statements start here (no BEGIN yet: see flushMessage). */
  beginSegment(txn: OpenTransaction): void {
    this.segments.push({ txn, start: this.message.length, commit: undefined });
  }

  /** Nothing of txn is in the message or sent yet: its next statement would be its only one. */
  nothingOf(txn: OpenTransaction): boolean {
    const segment = this.segments.at(-1);
    return segment?.txn === txn && this.message.length === segment.start && !txn.sent;
  }

  /** Adds a statement to the message being built. */
  append(statement: string): void {
    this.message.push(statement);
    this.bytes += statement.length;
  }

  /** The message is large enough to send now. */
  get full(): boolean {
    return this.bytes >= MESSAGE_BYTES;
  }

  /** txn's statements are all in the message: COMMIT follows; sent now when the message is full or txn already partly sent. */
  endSegment(record: CommitRecord, what: string): Promise<void> | undefined {
    const current = this.segments.at(-1);
    if (current?.txn !== record.txn) throw new PgmeshError('INTERNAL', 'the transaction being committed is not the last one of the message');
    this.unconfirmed.push(record);
    current.commit = record;
    // A reply without error means every statement of the message ran, every COMMIT included (a failing
    // statement makes the server skip the rest of the message). A transaction already partly sent goes now; small
    // ones wait for more to share the message, until the stream batch at hand is handled (see Applier.handleAll).
    return record.txn.sent || this.segments.length >= MAX_TRANSACTIONS_PER_MESSAGE || this.bytes >= MESSAGE_BYTES ? this.flushMessage(what) : undefined;
  }

  /**
   * Sends the message built so far: the complete transactions in it, and (`all`) the statements of the one still
   * open, which then continues in later messages inside BEGIN ... COMMIT. A transaction sent alone and whole is an
   * implicit transaction block; every other one is wrapped in BEGIN ... COMMIT, so each still commits on its own.
   */
  flushMessage(what: string, all = true): Promise<void> | undefined {
    const open = this.segments.at(-1)?.commit === undefined ? this.segments.at(-1) : undefined;
    const complete = open ? this.segments.slice(0, -1) : this.segments;
    const cut = open && !all ? open.start : this.message.length;
    if (cut === 0) return undefined;
    const segments = open && all ? [...complete, open] : complete;
    const only = segments.length === 1 ? segments[0] : undefined;
    const implicit = only !== undefined && only.commit !== undefined && !only.txn.sent && only.start === 0;
    const parts: string[] = [];
    segments.forEach((segment, i) => {
      const end = i + 1 < segments.length ? (segments[i + 1]?.start ?? cut) : cut;
      if (!implicit && !segment.txn.sent) {
        // Right after the previous transaction's COMMIT: COMMIT AND CHAIN opens this one (one statement less).
        if (i > 0 && parts.at(-1) === 'COMMIT') parts[parts.length - 1] = 'COMMIT AND CHAIN';
        else parts.push('BEGIN');
      }
      if (!implicit) segment.txn.sent = true;
      for (let j = segment.start; j < end; j++) parts.push(this.message[j] as string);
      if (segment.commit && !implicit) parts.push('COMMIT');
    });
    // Statements before the first segment belong to the open transaction of the previous message.
    const first = segments[0]?.start ?? cut;
    const text = [...this.message.slice(0, first), ...parts].join(';\n');
    const rest = this.message.slice(cut);
    this.message = rest;
    this.bytes = rest.reduce((n, statement) => n + statement.length, 0);
    // The open transaction's statements not sent yet (or those still to come) start the next message.
    this.segments = open ? [{ txn: open.txn, start: 0, commit: undefined }] : [];
    const commits = complete.map((segment) => segment.commit as CommitRecord);
    const conflictsOf = commits.at(-1)?.txn ?? open?.txn;
    return this.issue(text, [], what, (result) => {
      if (conflictsOf) countConflicts(conflictsOf, result);
      for (const record of commits) {
        if (this.unconfirmed.peekFront() === record) this.unconfirmed.shift();
        this.options.onCommitted(record);
      }
    });
  }

  /** Sends the complete transactions of the message being built (a stream batch is handled: do not wait for more). */
  flushComplete(): Promise<void> | undefined {
    return this.flushMessage('transactions', false);
  }

  /**
   * After a failure, once nothing is in flight: ends the aborted transaction, learns from the session which
   * transactions did commit (a failed message may hold several, and those before the failing one committed), and
   * points the failure at the first one that did not (after appliedEnd). Nothing to learn when the session is gone.
   */
  async settle(appliedEnd: () => Lsn): Promise<void> {
    const failure = this.failureNow;
    if (!failure || this.modeNow === 'closed') return;
    // Only a session whose server answered with an error can be asked. After a connection error or a shutdown
    // (class 08, 57P) the driver may queue a query on the closing connection and never settle it; and whatever the
    // reason, the answer is not waited for long: the peer replicator restarts from the durable progress anyway.
    const code = sqlState(failure.error);
    if (code === undefined || code.startsWith('08') || code.startsWith('57P')) return;
    let end: Lsn;
    let counts: { lsn: string; conflict: string; rel: string; n: number }[];
    try {
      const ask = async (): Promise<{ end: Lsn; counts: typeof counts }> => {
        await this.sql.unsafe('ROLLBACK');
        // The failed transaction may have set up its origin LSN: cleared, so that no later transaction of the
        // session that aborts with an xid moves the origin there (PostgreSQL advances it on such aborts too).
        const rows = await this.sql.unsafe<{ end: string | null }[]>(
          `SELECT pg_catalog.current_setting('pgmesh.applied_end', true) AS end, pg_catalog.pg_replication_origin_xact_reset() AS reset`,
        );
        const end = parseLsn(rows[0]?.end ?? '0/0');
        // Transactions of the failed message that committed before the failing statement: the message's reply,
        // with their conflict summaries, was lost with the failure, so their conflicts are counted from the log.
        const lsns = this.unconfirmed.toArray().flatMap((r) => (r.endLsn <= end ? [formatLsn(r.txn.finalLsn)] : []));
        const counts =
          lsns.length === 0
            ? []
            : await this.sql.unsafe<{ lsn: string; conflict: string; rel: string; n: number }[]>(
                `SELECT remote_commit_lsn::text AS lsn, conflict_type AS conflict, relation AS rel, count(*)::int AS n FROM pgmesh.conflict
                  WHERE peer = $1::text AND remote_commit_lsn = ANY ($2::text::pg_lsn[]) GROUP BY 1, 2, 3`,
                [this.options.peer, textArrayLiteral(lsns)],
              );
        return { end, counts };
      };
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('no answer from the apply session')), SETTLE_TIMEOUT_MS);
      });
      try {
        const answer = ask();
        answer.catch(() => undefined); // a late failure, after the timeout, is not waited for
        ({ end, counts } = await Promise.race([answer, late]));
      } finally {
        clearTimeout(timer);
      }
    } catch {
      this.to('closed');
      return;
    }
    while ((this.unconfirmed.peekFront()?.endLsn ?? end + 1n) <= end) {
      const record = this.unconfirmed.shift() as CommitRecord;
      const lsn = formatLsn(record.txn.finalLsn);
      record.txn.conflicts = undefined; // what earlier messages of it counted is in the log too
      countConflicts(record.txn, counts.filter((c) => c.lsn === lsn));
      this.options.onCommitted(record);
    }
    // The first transaction that did not commit is the one that failed: the earliest unconfirmed one, or the open
    // transaction whose messages were sent before it completed.
    const applied = appliedEnd();
    const candidates = [this.unconfirmed.peekFront()?.txn.finalLsn, this.segments[0]?.txn.sent ? this.segments[0].txn.finalLsn : undefined, failure.finalLsn].filter(
      (lsn): lsn is Lsn => lsn !== undefined && lsn > applied,
    );
    const first = candidates.reduce<Lsn | undefined>((min, lsn) => (min === undefined || lsn < min ? lsn : min), undefined);
    if (first !== undefined) this.failureNow = { ...failure, finalLsn: first };
  }

  async close(): Promise<void> {
    if (this.modeNow !== 'closed') this.to('closed');
    await this.sql.end({ timeout: 2 }).catch(() => undefined);
  }
}
