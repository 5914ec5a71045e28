/**
 * The progress of `node add`'s copy on stderr: a bar rewritten in place on a terminal, plain lines now and then
 * otherwise (a log file or a pipe gets no carriage returns).
 */
import type { JoinProgress } from '../membership/membership-state.ts';

const PLAIN_EVERY_MS = 10_000;

function megabytes(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Rows, bytes, rate, ETA and tables of one progress report, `elapsedMs` after the copy started. */
export function describeProgress(p: JoinProgress, elapsedMs: number): { fraction: number | undefined; text: string } {
  const seconds = Math.max(elapsedMs / 1000, 0.001);
  const estimate = p.rowsEstimated !== undefined && p.rowsEstimated > 0 ? p.rowsEstimated : undefined;
  const fraction = estimate === undefined ? undefined : Math.min(p.rows / estimate, 1);
  const rowsPerS = p.rows / seconds;
  const eta = estimate !== undefined && rowsPerS > 0 && p.rows < estimate ? `, ETA ${duration((estimate - p.rows) / rowsPerS)}` : '';
  const rows = estimate === undefined ? p.rows.toLocaleString('en') : `${p.rows.toLocaleString('en')}/~${estimate.toLocaleString('en')}`;
  const text =
    `${rows} rows, ${megabytes(p.bytes)}, ${megabytes(p.bytes / seconds)}/s, ${Math.round(rowsPerS).toLocaleString('en')} rows/s${eta}, ` +
    `tables ${p.tablesDone}/${p.tablesTotal}`;
  return { fraction, text };
}

/** The bar and its text in `width` characters. */
export function progressBar(p: JoinProgress, elapsedMs: number, width: number): string {
  const { fraction, text } = describeProgress(p, elapsedMs);
  const percent = fraction === undefined ? '' : `${String(Math.floor(fraction * 100)).padStart(3)}% `;
  const barWidth = 20;
  const bar = fraction === undefined ? '' : `[${'#'.repeat(Math.round(fraction * barWidth)).padEnd(barWidth, '-')}] `;
  const line = `${bar}${percent}${text}`;
  return line.length > width ? line.slice(0, width) : line.padEnd(width);
}

export interface ProgressOutput {
  readonly isTTY: boolean;
  readonly columns: number | undefined;
  write(text: string): void;
}

/**
 * A progress callback for `output` (process.stderr): on a terminal the bar is redrawn in place at every report; else
 * a plain line at most every 10 s. `finish` ends the bar's line.
 */
export function progressReporter(output: ProgressOutput, now: () => number = Date.now): { onProgress: (p: JoinProgress) => void; finish: () => void } {
  let started: number | undefined;
  let lastPlain: number | undefined;
  let drawn = false;
  return {
    onProgress: (p) => {
      const at = now();
      started ??= at;
      if (output.isTTY) {
        output.write(`\r${progressBar(p, at - started, Math.max((output.columns ?? 80) - 1, 20))}`);
        drawn = true;
      } else if (lastPlain === undefined || at - lastPlain >= PLAIN_EVERY_MS || (p.tablesDone === p.tablesTotal && p.tablesTotal > 0)) {
        lastPlain = at;
        output.write(`node add: copying: ${describeProgress(p, at - started).text}\n`);
      }
    },
    finish: () => {
      if (drawn) output.write('\n');
    },
  };
}
