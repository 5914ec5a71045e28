/**
 * Apply throughput of pgmesh against PostgreSQL's native logical replication, measured in the same run on the same
 * kind of servers (embedded PostgreSQL, major from PGMESH_PG_MAJOR, default 17; EmbeddedServer's default settings,
 * fsync on).
 *
 * Method, per workload, per system, per run: a fresh publisher/subscriber pair with the same table; the consumer
 * is stopped (native: subscription created disabled; pgmesh: 2-node cluster with n2's agent not started); the
 * workload is generated on the publisher; then the consumer starts and the clock runs until the subscriber has
 * caught up. So the figure is how fast each system drains a backlog: decoding on the publisher, transfer, apply.
 *
 * "Caught up" is a marker row the publisher writes in its own transaction after the workload. Both systems apply
 * the publisher's transactions one after another in commit order (native: one apply worker, streaming off;
 * pgmesh: pipelined, but each transaction commits only after its predecessor did), so once the marker is visible
 * on the subscriber every transaction before it is committed there. It is one index probe per poll, where a
 * count(*) of a million rows would load the subscriber we measure. Comparing the publisher's WAL position with
 * the slot's confirmed_flush_lsn would be wrong for this purpose: it moves only with each system's feedback
 * (pgmesh polls durable progress every 200 ms and reports every second; native reports at its own pace), so it
 * would measure feedback intervals and WAL flush timing, not apply; and pg_current_wal_lsn moves on with WAL the
 * subscriber never receives (running-xacts records), so it is not a reachable target. The subscriber's origin
 * progress would be exact (both systems set it to the end LSN of each applied commit), but only against the end
 * LSN of the last commit, which the publisher does not report; the marker is that commit. After the clock stops,
 * the row count and sums are compared on both sides, so a system that skipped rows cannot look fast.
 *
 * Where the time goes (pgmesh): CPU of this Node process over the apply window (the agent runs in-process; the
 * 10 ms poll adds a little, which the native rows show on their own, since there it is all this process does),
 * and the CPU of every process of the subscriber and publisher servers from /proc. 100% = one core busy.
 *
 * A cost that grows with the table shows as a rate that falls during the run. For the insert workloads (each
 * transaction writes the next keys) the bench samples the subscriber's highest key every 250 ms (an index probe) and
 * reports the rate over the first and over the last fifth of the rows; `--preload N` first puts N rows in the table on
 * both nodes (keys below the workload's), so the same workloads run against a large table.
 *
 * Usage: npm run bench -- [--scale 0.1] [--runs 3] [--json] [--only insert-1row,bulk-1000] [--system pgmesh|native]
 *        [--preload 2000000] [--stream-large-transactions]
 * Never part of `npm test`.
 */
import { execFileSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { parseMajor, type PgMajor } from '../src/embedded/postgres-binaries.ts';
import { machineBusyMs, postmasterPid, sampleServerCpu, serverCpuBetween, syscalls, type ServerCpuUsage, type SyscallCount } from './support/proc-cpu.ts';
import { startCpuProfile } from './support/cpu-profile.ts';
import { client, createPair, killLiveServers, type ServerPair, type Sql, type System } from './support/server-pair.ts';
import { MARKER_TABLE, TABLE, workloads, type Workload } from './support/workloads.ts';

const POLL_INTERVAL_MS = 10;
const PROGRESS_SAMPLE_MS = 250;
/** --stream-large-transactions: pgmesh's tuning.streamLargeTransactions on (native keeps streaming off). */
let streamLargeTransactions = false;
const pgmeshTuning = (): Record<string, unknown> => (streamLargeTransactions ? { streamLargeTransactions: true } : {});
const FAILURE_CHECK_INTERVAL_MS = 1000;
const CATCH_UP_TIMEOUT_MS = 30 * 60_000;

interface RunResult {
  readonly system: System;
  readonly seconds: number;
  readonly rowsPerS: number;
  readonly txnsPerS: number;
  /** CPU of this process (pgmesh: the agent) over the window, % of one core. */
  readonly nodeCpuPct: number;
  readonly subscriberCpuPct: number;
  readonly publisherCpuPct: number;
  /**
   * CPU used on this machine by anything but this process and the two servers (other work on a shared machine):
   * when it is high, the run was disturbed.
   */
  readonly otherCpuPct: number;
  /** The subscriber process that used the most CPU (pgmesh: the apply session's backend; native: the apply worker). */
  readonly subscriberBusiest: BusyProcess | undefined;
  readonly publisherBusiest: BusyProcess | undefined;
  /**
   * Read and write system calls of this process per transaction (pgmesh: the agent's socket I/O, plus the poll).
   * About one write and one read per statement means the statements go one round trip at a time.
   */
  readonly nodeSyscallsPerTxn: SyscallCount | undefined;
  readonly generateSeconds: number;
  /** Rows/s over the first and the last fifth of the rows (workloads with progressByKey). */
  readonly startRowsPerS: number | undefined;
  readonly endRowsPerS: number | undefined;
}

interface BusyProcess {
  readonly what: string;
  readonly cpuPct: number;
}

interface SystemSummary {
  readonly rowsPerS: number;
  readonly txnsPerS: number;
  readonly seconds: number;
  readonly nodeCpuPct: number;
  readonly subscriberCpuPct: number;
  readonly subscriberBusiestCpuPct: number;
  readonly publisherCpuPct: number;
  readonly otherCpuPct: number;
  readonly startRowsPerS: number | undefined;
  readonly endRowsPerS: number | undefined;
  readonly runs: readonly RunResult[];
}

interface WorkloadResult {
  readonly workload: string;
  readonly description: string;
  readonly rows: number;
  readonly txns: number;
  readonly pgmesh: SystemSummary | undefined;
  readonly native: SystemSummary | undefined;
  /** pgmesh rows/s / native rows/s (medians). */
  readonly ratio: number | undefined;
}

/** The commit the figures belong to, "+dirty" when src/ has uncommitted changes (the apply engine moves fast). */
function sourceRevision(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    return dirty ? `${head}+dirty` : head;
  } catch {
    return 'unknown';
  }
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function generate(pair: ServerPair, workload: Workload): Promise<number> {
  // Asynchronous commit only for the generating session: the WAL (and so the stream) is the same, without an
  // fsync per generated transaction. The marker commits synchronously, which also flushes all WAL before it:
  // a walsender sends only flushed WAL.
  const gen = client(pair.publisher, { synchronous_commit: 'off' });
  const started = performance.now();
  try {
    await gen.unsafe(workload.generate).simple();
  } finally {
    await gen.end({ timeout: 1 });
  }
  await pair.pub.unsafe(`INSERT INTO ${MARKER_TABLE} (id) VALUES (1)`);
  const seconds = (performance.now() - started) / 1000;
  // Every run starts right after a checkpoint on both servers, so full-page writes weigh the same in every run.
  await Promise.all([pair.pub.unsafe('CHECKPOINT'), pair.sub.unsafe('CHECKPOINT')]);
  return seconds;
}

/** When the subscriber held `rows` of the workload's rows (ms since the consumer started). */
interface ProgressSample {
  readonly ms: number;
  readonly rows: number;
}

/**
 * Waits until the subscriber has the marker; for a workload with progressByKey, samples how many of its rows it
 * holds on the way (its highest key).
 */
async function waitForMarker(pair: ServerPair, workload: Workload, t0: number): Promise<ProgressSample[]> {
  const deadline = Date.now() + CATCH_UP_TIMEOUT_MS;
  let nextFailureCheck = Date.now() + FAILURE_CHECK_INTERVAL_MS;
  const samples: ProgressSample[] = [{ ms: 0, rows: 0 }];
  let nextSample = performance.now() + PROGRESS_SAMPLE_MS;
  for (;;) {
    const rows = await pair.sub.unsafe<{ done: boolean }[]>(`SELECT EXISTS (SELECT 1 FROM ${MARKER_TABLE} WHERE id = 1) AS done`);
    if (rows[0]?.done) {
      samples.push({ ms: performance.now() - t0, rows: workload.txns * workload.rowsPerTxn });
      return samples;
    }
    if (workload.progressByKey && performance.now() >= nextSample) {
      const top = await pair.sub.unsafe<{ top: number }[]>(`SELECT coalesce(max(aid), 0) AS top FROM ${TABLE}`);
      samples.push({ ms: performance.now() - t0, rows: Math.max(0, top[0]?.top ?? 0) });
      nextSample = performance.now() + PROGRESS_SAMPLE_MS;
    }
    if (Date.now() >= nextFailureCheck) {
      const failure = await pair.consumer.failure();
      if (failure) throw new Error(`${pair.system} apply failed: ${failure}\n--- subscriber log ---\n${pair.subscriber.logTail(20)}`);
      if (Date.now() > deadline) throw new Error(`${pair.system} did not catch up within ${CATCH_UP_TIMEOUT_MS / 1000} s`);
      nextFailureCheck = Date.now() + FAILURE_CHECK_INTERVAL_MS;
    }
    await delay(POLL_INTERVAL_MS);
  }
}

/** Checks the subscriber against the publisher; returns how many conflicts pgmesh logged (expected: none). */
async function verify(pair: ServerPair): Promise<number | undefined> {
  const query = `SELECT count(*)::text AS n, coalesce(sum(aid), 0)::text AS a, coalesce(sum(abalance), 0)::text AS b FROM ${TABLE}`;
  const [p, s] = await Promise.all([pair.pub.unsafe<{ n: string; a: string; b: string }[]>(query), pair.sub.unsafe<{ n: string; a: string; b: string }[]>(query)]);
  const expected = JSON.stringify(p[0]);
  const actual = JSON.stringify(s[0]);
  if (expected !== actual) throw new Error(`${pair.system}: subscriber differs from publisher after catch-up: ${actual} vs ${expected}`);
  if (pair.system !== 'pgmesh') return undefined;
  const conflicts = await pair.sub
    .unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM pgmesh.conflict`)
    .then((rows) => Number(rows[0]?.n ?? 0))
    .catch(() => undefined); // a catalog without a conflict log
  return conflicts;
}

/** Names a server process by what pg_stat_activity says it is (the pgmesh apply session is a plain backend). */
async function describeProcess(sql: Sql, usage: ServerCpuUsage, seconds: number): Promise<BusyProcess | undefined> {
  const busiest = usage.busiest;
  if (!busiest) return undefined;
  const rows = await sql.unsafe<{ what: string }[]>(
    `SELECT coalesce(nullif(application_name, ''), backend_type) AS what FROM pg_catalog.pg_stat_activity WHERE pid = $1`,
    [busiest.pid],
  );
  return { what: rows[0]?.what ?? busiest.title, cpuPct: busiest.ms / 10 / seconds };
}

function perTxn(count: SyscallCount | undefined, txns: number): SyscallCount | undefined {
  return count ? { reads: count.reads / txns, writes: count.writes / txns } : undefined;
}

function syscallsSince(before: SyscallCount | undefined): SyscallCount | undefined {
  const after = syscalls('self');
  return before && after ? { reads: after.reads - before.reads, writes: after.writes - before.writes } : undefined;
}

async function runOnce(system: System, workload: Workload, major: PgMajor, profileDir: string | undefined, preload: number): Promise<RunResult> {
  const pair = await createPair({ system, major, preloadRows: workload.preloadRows, largeTableRows: preload, pgmeshTuning: pgmeshTuning() });
  try {
    const generateSeconds = await generate(pair, workload);
    const subPid = postmasterPid(pair.subscriber.dataDir);
    const pubPid = postmasterPid(pair.publisher.dataDir);
    const sub0 = sampleServerCpu(subPid);
    const pub0 = sampleServerCpu(pubPid);
    const profile = profileDir ? await startCpuProfile() : undefined;
    const io0 = syscalls('self');
    const node0 = process.cpuUsage();
    const machine0 = machineBusyMs();
    const t0 = performance.now();
    await pair.consumer.start();
    const samples = await waitForMarker(pair, workload, t0);
    const seconds = (performance.now() - t0) / 1000;
    const node = process.cpuUsage(node0);
    const machineMs = machineBusyMs() - machine0;
    const nodeIo = syscallsSince(io0);
    if (profile && profileDir) {
      const { path, allocatedBytes } = await profile.stop(profileDir, `${workload.name}-${system}`);
      log(`cpu profile of the apply window: ${path} (and .heapprofile); allocated ${Math.round(allocatedBytes / (workload.txns * workload.rowsPerTxn))} bytes per row`);
    }
    const subUsage = serverCpuBetween(sub0, sampleServerCpu(subPid));
    const pubUsage = serverCpuBetween(pub0, sampleServerCpu(pubPid));
    const [subscriberBusiest, publisherBusiest] = await Promise.all([
      describeProcess(pair.sub, subUsage, seconds),
      describeProcess(pair.pub, pubUsage, seconds),
    ]);
    await pair.consumer.stop();
    const conflicts = await verify(pair);
    if (conflicts) log(`[${workload.name}] warning: pgmesh logged ${conflicts} conflict(s); the figures include conflict logging`);
    const rows = workload.txns * workload.rowsPerTxn;
    const pct = (ms: number): number => ms / 10 / seconds;
    const nodeMs = (node.user + node.system) / 1000;
    return {
      system,
      seconds,
      rowsPerS: rows / seconds,
      txnsPerS: workload.txns / seconds,
      nodeCpuPct: pct(nodeMs),
      subscriberCpuPct: pct(subUsage.totalMs),
      publisherCpuPct: pct(pubUsage.totalMs),
      otherCpuPct: Math.max(0, pct(machineMs - nodeMs - subUsage.totalMs - pubUsage.totalMs)),
      subscriberBusiest,
      publisherBusiest,
      nodeSyscallsPerTxn: perTxn(nodeIo, workload.txns),
      generateSeconds,
      ...(workload.progressByKey ? fifthRates(samples, rows) : { startRowsPerS: undefined, endRowsPerS: undefined }),
    };
  } finally {
    await pair.destroy();
  }
}

/**
 * Rows/s over the first fifth of the rows (from the consumer's start) and over the last fifth (to the marker), the
 * times at which the fifths were reached interpolated between samples. Undefined when the samples cannot place them
 * (a run too short for the 250 ms samples, or one transaction that commits at once).
 */
function fifthRates(samples: readonly ProgressSample[], rows: number): { startRowsPerS: number | undefined; endRowsPerS: number | undefined } {
  const timeAt = (target: number): number | undefined => {
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1] as ProgressSample;
      const b = samples[i] as ProgressSample;
      if (b.rows >= target && b.rows > a.rows) return a.ms + ((target - a.rows) / (b.rows - a.rows)) * (b.ms - a.ms);
    }
    return undefined;
  };
  // A fifth must span a few samples, or the figure is the sampling's.
  const enough = samples.filter((s) => s.rows > 0 && s.rows < rows).length >= 8;
  const first = timeAt(rows / 5);
  const fourFifths = timeAt((rows * 4) / 5);
  const end = samples[samples.length - 1]?.ms;
  if (!enough || first === undefined || fourFifths === undefined || end === undefined) return { startRowsPerS: undefined, endRowsPerS: undefined };
  return { startRowsPerS: rows / 5 / (first / 1000), endRowsPerS: rows / 5 / ((end - fourFifths) / 1000) };
}

function medianOf(values: readonly (number | undefined)[]): number | undefined {
  const known = values.filter((v): v is number => v !== undefined);
  return known.length > 0 ? median(known) : undefined;
}

function summarize(runs: readonly RunResult[]): SystemSummary | undefined {
  if (runs.length === 0) return undefined;
  return {
    rowsPerS: median(runs.map((r) => r.rowsPerS)),
    txnsPerS: median(runs.map((r) => r.txnsPerS)),
    seconds: median(runs.map((r) => r.seconds)),
    nodeCpuPct: median(runs.map((r) => r.nodeCpuPct)),
    subscriberCpuPct: median(runs.map((r) => r.subscriberCpuPct)),
    subscriberBusiestCpuPct: median(runs.map((r) => r.subscriberBusiest?.cpuPct ?? 0)),
    publisherCpuPct: median(runs.map((r) => r.publisherCpuPct)),
    otherCpuPct: median(runs.map((r) => r.otherCpuPct)),
    startRowsPerS: medianOf(runs.map((r) => r.startRowsPerS)),
    endRowsPerS: medianOf(runs.map((r) => r.endRowsPerS)),
    runs,
  };
}

function fmt(value: number | undefined, digits = 0): string {
  if (value === undefined || !Number.isFinite(value)) return '-';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** A rate: below 10 (transactions/s of the one-transaction workload) with two decimals. */
function rate(value: number | undefined): string {
  return fmt(value, value !== undefined && Math.abs(value) < 10 ? 2 : 0);
}

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function printTables(results: readonly WorkloadResult[], context: { major: PgMajor; scale: number; runs: number; revision: string; preload: number }): void {
  const out: string[] = [];
  const ratio = (end: number | undefined, start: number | undefined): string => (end !== undefined && start ? fmt(end / start, 2) : '-');
  out.push(
    `apply throughput, pgmesh ${context.revision}, PostgreSQL ${context.major}, scale ${context.scale}, median of ${context.runs} run(s), ${cpus().length} CPUs` +
      `${context.preload > 0 ? `, table preloaded with ${fmt(context.preload)} rows` : ''}${streamLargeTransactions ? ', pgmesh streaming large transactions' : ''}`,
    '',
    table(
      ['workload', 'rows', 'txns', 'pgmesh rows/s', 'native rows/s', 'ratio', 'pgmesh txn/s', 'native txn/s', 'agent CPU %', 'server CPU %'],
      results.map((r) => [
        r.workload,
        fmt(r.rows),
        fmt(r.txns),
        fmt(r.pgmesh?.rowsPerS),
        fmt(r.native?.rowsPerS),
        fmt(r.ratio, 2),
        rate(r.pgmesh?.txnsPerS),
        rate(r.native?.txnsPerS),
        fmt(r.pgmesh?.nodeCpuPct),
        fmt(r.pgmesh?.subscriberCpuPct),
      ]),
    ),
    '',
    'rate during the run (rows/s over the first and the last fifth of the rows; a cost that grows with the table makes "end/start" fall):',
    table(
      ['workload', 'pgmesh start', 'pgmesh end', 'end/start', 'native start', 'native end', 'end/start'],
      results
        .filter((r) => r.pgmesh?.startRowsPerS !== undefined || r.native?.startRowsPerS !== undefined)
        .map((r) => [
          r.workload,
          fmt(r.pgmesh?.startRowsPerS),
          fmt(r.pgmesh?.endRowsPerS),
          ratio(r.pgmesh?.endRowsPerS, r.pgmesh?.startRowsPerS),
          fmt(r.native?.startRowsPerS),
          fmt(r.native?.endRowsPerS),
          ratio(r.native?.endRowsPerS, r.native?.startRowsPerS),
        ]),
    ),
    '',
    'where the time goes (medians; CPU % of one core over the apply window; "sub busiest" = the subscriber process that used most',
    'CPU; "node syscalls" = read/write system calls of this Node process per transaction, mostly socket I/O of the agent):',
    table(
      ['workload', 'system', 'seconds', 'node CPU %', 'sub server %', 'sub busiest %', 'pub server %', 'other %', 'node syscalls rd/wr per txn', 'busiest sub process'],
      results.flatMap((r) =>
        (['pgmesh', 'native'] as const).flatMap((system) => {
          const s = r[system];
          if (!s) return [];
          const io = (pick: (run: RunResult) => SyscallCount | undefined): string => {
            const counts = s.runs.map(pick).filter((c): c is SyscallCount => c !== undefined);
            if (counts.length === 0) return '-';
            return `${fmt(median(counts.map((c) => c.reads)), 1)} / ${fmt(median(counts.map((c) => c.writes)), 1)}`;
          };
          return [
            [
              r.workload,
              system,
              fmt(s.seconds, 2),
              fmt(s.nodeCpuPct),
              fmt(s.subscriberCpuPct),
              fmt(s.subscriberBusiestCpuPct),
              fmt(s.publisherCpuPct),
              fmt(s.otherCpuPct),
              io((run) => run.nodeSyscallsPerTxn),
              s.runs[0]?.subscriberBusiest?.what ?? '-',
            ],
          ];
        }),
      ),
    ),
    '',
    'agent CPU % = the Node process running the pgmesh agent (for native: only the bench poll). server CPU % = all processes of the',
    'subscriber server. Both pairs share this machine: publisher decoding (pub server %) competes for the same cores.',
  );
  process.stdout.write(`${out.join('\n')}\n`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      scale: { type: 'string', default: '1' },
      runs: { type: 'string', default: '3' },
      json: { type: 'boolean', default: false },
      only: { type: 'string' },
      system: { type: 'string', default: 'both' },
      'cpu-profile': { type: 'string' },
      'stream-large-transactions': { type: 'boolean', default: false },
      preload: { type: 'string', default: '0' },
    },
    strict: true,
  });
  streamLargeTransactions = values['stream-large-transactions'];
  const scale = Number(values.scale);
  const runs = Number(values.runs);
  if (!(scale > 0)) throw new Error(`--scale ${values.scale} must be a positive number`);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${values.runs} must be a whole number >= 1`);
  const preload = Number(values.preload);
  if (!Number.isInteger(preload) || preload < 0 || preload > 2_000_000_000) throw new Error(`--preload ${values.preload} must be a whole number of rows, 0 to 2000000000`);
  const systems: System[] =
    values.system === 'both' ? ['pgmesh', 'native'] : values.system === 'pgmesh' || values.system === 'native' ? [values.system] : [];
  if (systems.length === 0) throw new Error(`--system ${values.system} must be pgmesh, native or both`);
  const major = parseMajor(process.env.PGMESH_PG_MAJOR, 'PGMESH_PG_MAJOR');
  const all = workloads(scale);
  const only = values.only?.split(',').map((s) => s.trim());
  const unknown = only?.filter((name) => !all.some((w) => w.name === name)) ?? [];
  if (unknown.length > 0) throw new Error(`unknown workload(s) ${unknown.join(', ')}; known: ${all.map((w) => w.name).join(', ')}`);
  const chosen = only ? all.filter((w) => only.includes(w.name)) : all;

  const started = performance.now();
  const revision = sourceRevision();
  log(`pgmesh ${revision}, PostgreSQL ${major}, scale ${scale}, preload ${preload} rows, ${runs} run(s), load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const results: WorkloadResult[] = [];
  for (const workload of chosen) {
    const bySystem = new Map<System, RunResult[]>(systems.map((s) => [s, []]));
    // Interleaved (pgmesh, native, pgmesh, ...) so that drift of the machine affects both alike.
    for (let run = 1; run <= runs; run++) {
      for (const system of systems) {
        const result = await runOnce(system, workload, major, values['cpu-profile'], preload);
        bySystem.get(system)?.push(result);
        log(
          `[${workload.name}] run ${run}/${runs} ${system.padEnd(6)}: ${fmt(result.seconds, 2)} s, ${fmt(result.rowsPerS)} rows/s, ` +
            `${rate(result.txnsPerS)} txn/s; node CPU ${fmt(result.nodeCpuPct)}%, subscriber ${fmt(result.subscriberCpuPct)}% ` +
            `(busiest: ${result.subscriberBusiest?.what ?? '-'} ${fmt(result.subscriberBusiest?.cpuPct)}%), publisher ${fmt(result.publisherCpuPct)}%, other ${fmt(result.otherCpuPct)}% ` +
            `(generated in ${fmt(result.generateSeconds, 1)} s)`,
        );
      }
    }
    const pgmesh = summarize(bySystem.get('pgmesh') ?? []);
    const native = summarize(bySystem.get('native') ?? []);
    const result: WorkloadResult = {
      workload: workload.name,
      description: workload.description,
      rows: workload.txns * workload.rowsPerTxn,
      txns: workload.txns,
      pgmesh,
      native,
      ratio: pgmesh && native ? pgmesh.rowsPerS / native.rowsPerS : undefined,
    };
    results.push(result);
    if (values.json) {
      const line = { ...result, pgMajor: major, scale, preload, cpus: cpus().length, revision };
      // Three decimals are more than the measurement holds.
      process.stdout.write(`${JSON.stringify(line, (_, v: unknown) => (typeof v === 'number' ? Math.round(v * 1000) / 1000 : v))}\n`);
    }
  }
  if (!values.json) printTables(results, { major, scale, runs, revision, preload });
  log(`bench finished in ${fmt((performance.now() - started) / 1000, 0)} s`);
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`${signal}: stopping the servers of this bench`);
    void killLiveServers().finally(() => process.exit(130));
  });
}

main().then(
  () => process.exit(0),
  async (error: unknown) => {
    log(error instanceof Error ? (error.stack ?? error.message) : String(error));
    await killLiveServers();
    process.exit(1);
  },
);
