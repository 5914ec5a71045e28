/**
 * Measures each peer's clock against the local one, NTP-style: read the peer's clock_timestamp() between two local
 * readings; offset = peer - midpoint, uncertainty = half the round trip. The median of the last samples is kept in
 * pgmesh.peer_clock (so `pgmesh status` shows it) and a warning is logged past the threshold.
 */
import { errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { openSql, type Sql } from '../pg/connect.ts';

export interface ClockReading {
  readonly skewMs: number;
  readonly rttMs: number;
  readonly at: string;
}

export class ClockMonitor {
  private readonly samples: { skew: number; rtt: number }[] = [];
  private reading: ClockReading | undefined;
  private timer: NodeJS.Timeout | undefined;
  private peerSql: Sql | undefined;
  private lastWarnAt = 0;

  constructor(
    private readonly options: {
      readonly peer: string;
      readonly peerDsn: string;
      readonly localNode: string;
      readonly catalog: Sql;
      readonly warnMs: number;
      readonly intervalMs: number;
      readonly logger: Logger;
      readonly now?: () => number;
    },
  ) {}

  start(): void {
    const tick = () => void this.measure().catch((error) => this.options.logger.debug({ peer: this.options.peer, err: errorMessage(error) }, 'clock reading failed'));
    tick();
    this.timer = setInterval(tick, this.options.intervalMs);
    this.timer.unref();
  }

  current(): ClockReading | undefined {
    return this.reading;
  }

  async measure(): Promise<void> {
    const now = this.options.now ?? Date.now;
    if (!this.peerSql) {
      this.peerSql = openSql(this.options.peerDsn, {
        node: this.options.peer,
        applicationName: `pgmesh clock ${this.options.localNode}`,
        logger: this.options.logger,
        max: 1,
        connectTimeoutS: 5,
      });
      // Connect first: a reading that includes the connection set-up has a long, lopsided round trip.
      await this.peerSql.unsafe('SELECT 1');
    }
    const t0 = now();
    const rows = await this.peerSql.unsafe<{ ms: string }[]>(`SELECT (extract(epoch FROM clock_timestamp()) * 1000)::text AS ms`);
    const t1 = now();
    const peerMs = Number(rows[0]?.ms);
    this.samples.push({ skew: peerMs - (t0 + t1) / 2, rtt: t1 - t0 });
    if (this.samples.length > 7) this.samples.shift();
    const sorted = [...this.samples].sort((a, b) => a.skew - b.skew);
    const median = sorted[Math.floor(sorted.length / 2)] ?? { skew: 0, rtt: 0 };
    this.reading = { skewMs: median.skew, rttMs: median.rtt, at: new Date(t1).toISOString() };
    await this.options.catalog.unsafe(
      `INSERT INTO pgmesh.peer_clock (peer, skew_ms, rtt_ms, measured_at) VALUES ($1, $2::text::float8, $3::text::float8, now())
       ON CONFLICT (peer) DO UPDATE SET skew_ms = EXCLUDED.skew_ms, rtt_ms = EXCLUDED.rtt_ms, measured_at = EXCLUDED.measured_at`,
      [this.options.peer, String(median.skew), String(median.rtt)],
    );
    // Only a difference larger than the measurement's own uncertainty counts.
    if (Math.abs(median.skew) - median.rtt / 2 > this.options.warnMs && now() - this.lastWarnAt > 60_000) {
      this.lastWarnAt = now();
      this.options.logger.warn(
        { peer: this.options.peer, skewMs: Math.round(median.skew) },
        `clock of ${this.options.peer} differs from ${this.options.localNode} by ${Math.round(median.skew)} ms; last-update-wins trusts clocks: fix time synchronisation (NTP)`,
      );
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.peerSql?.end({ timeout: 1 }).catch(() => undefined);
  }
}
