/**
 * Keeps the commit timestamps that row versions are read from until they are stable (src/cluster/version-horizon-sql.ts,
 * docs/design.md "Row versions"): one step of pgmesh.advance_version_horizon at start and then every interval, on a
 * connection of its own (creating the slot waits for the transactions running at that moment).
 */
import { errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { openSql, type Sql } from '../pg/connect.ts';

/** Xids scanned per step at most: the next step goes on from there. */
const MAX_SCAN_XIDS = 2_000_000;
/** A step that waits longer (slot creation behind a long transaction) gives up, and the next one tries again. */
const STEP_TIMEOUT_MS = 30_000;

export interface VersionHorizonReading {
  readonly slot: string;
  /** Versions at or before this time may be forgotten on this node (read as oldest); null until known. */
  readonly stableTs: string | null;
  readonly at: string;
}

interface StepRow {
  readonly slot_name: string;
  readonly created: boolean;
  readonly recreated: boolean;
  readonly stable_ts: string | null;
}

export class VersionHorizonKeeper {
  private timer: NodeJS.Timeout | undefined;
  private sql: Sql | undefined;
  private running = false;
  private reading: VersionHorizonReading | undefined;

  constructor(
    private readonly options: {
      readonly localNode: string;
      readonly localDsn: string;
      readonly intervalMs: number;
      readonly marginMs: number;
      readonly logger: Logger;
    },
  ) {}

  start(): void {
    const tick = () => {
      // One step at a time: a step held up by slot creation must not pile up others behind it.
      if (this.running) return;
      this.running = true;
      void this.step()
        .catch((error) => this.options.logger.warn({ err: errorMessage(error) }, 'version horizon step failed; commit timestamps stay held where they are'))
        .finally(() => {
          this.running = false;
        });
    };
    tick();
    this.timer = setInterval(tick, this.options.intervalMs);
    this.timer.unref();
  }

  current(): VersionHorizonReading | undefined {
    return this.reading;
  }

  async step(): Promise<void> {
    this.sql ??= openSql(this.options.localDsn, {
      node: this.options.localNode,
      applicationName: `pgmesh horizon ${this.options.localNode}`,
      logger: this.options.logger,
      max: 1,
    });
    const rows = await this.sql.begin(async (tx) => {
      await tx.unsafe(`SET LOCAL statement_timeout = ${STEP_TIMEOUT_MS}`);
      return tx.unsafe<StepRow[]>(
        `SELECT slot_name, created, recreated, stable_ts::text AS stable_ts
           FROM pgmesh.advance_version_horizon(interval '${Math.round(this.options.marginMs)} milliseconds', ${MAX_SCAN_XIDS})`,
      );
    });
    const row = rows[0];
    if (!row) return;
    if (row.created) this.options.logger.info({ slot: row.slot_name }, 'version horizon slot created');
    if (row.recreated) {
      this.options.logger.warn(
        { slot: row.slot_name },
        `the version horizon slot ${row.slot_name} was invalidated (max_slot_wal_keep_size) and is created again: row versions written while it was invalid may have lost their commit timestamps, and a late change from a peer can then decide a conflict differently here`,
      );
    }
    this.reading = { slot: row.slot_name, stableTs: row.stable_ts, at: new Date().toISOString() };
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.sql?.end({ timeout: 1 }).catch(() => undefined);
  }
}
