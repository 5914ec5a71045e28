/**
 * The tables of a join copied by several sessions at once, all from the source's one exported snapshot (each COPY
 * opens its own connection with SET TRANSACTION SNAPSHOT), with their progress recorded per table.
 *
 * What limits the parallelism: a replication origin can be set up by one session at a time (PostgreSQL 16-18), and
 * every copy transaction runs in the origin session of its rows' version. Old rows all carry the source's version,
 * so each worker marks them with an origin of its own that row_version reads as the source: worker 0 the source's
 * link origin (pgmesh_S), worker 1 its replay origin (pgmeshr_S). Groups of recent rows of other nodes use those
 * nodes' origins, which any worker may need: writing the groups is one worker at a time (`exclusive`), while the
 * streaming into each worker's stage table runs in parallel.
 */
import { cpus } from 'node:os';
import type { ReservedSql } from '../pg/connect.ts';
import type { CopyCounts } from '../pg/copy-stream.ts';
import type { JoinProgress, TableCopyUpdate } from './membership-state.ts';
import { copyTable, type CopyContext } from './table-copy.ts';
import type { TableShape } from './table-shapes.ts';

/** How many tables are copied at once: at most two (see above), no more than tables or cores. */
export const MAX_COPY_PARALLELISM = 2;

export function copyParallelism(setting: number, tables: number, cores: number = cpus().length): number {
  const wanted = setting > 0 ? setting : Math.min(MAX_COPY_PARALLELISM, cores);
  return Math.max(1, Math.min(wanted, MAX_COPY_PARALLELISM, tables));
}

export interface TableJob {
  readonly shape: TableShape;
  /** The source's estimate of its rows; null when the table was never analyzed there. */
  readonly rowsEstimated: number | null;
}

export interface CopyTablesOptions {
  /** One target session per worker (session_replication_role = replica, no origin session). */
  readonly sessions: readonly ReservedSql[];
  /** What every table's copy shares; origins and the target are per worker. */
  readonly base: Omit<CopyContext, 'target' | 'originFor' | 'onProgress' | 'exclusive'>;
  /** Origin names by node for worker `worker` (the source's differs between workers). */
  readonly originFor: (worker: number) => (node: string) => string;
  /** Called at most once a second while rows flow, and after each table, with the tables that changed. */
  readonly record: (tables: readonly TableCopyUpdate[], progress: JoinProgress) => void;
}

/** How the copy's progress names a table: schema.name, as conflicts and exceptions name it. */
export function relationName(shape: TableShape): string {
  return `${shape.schema}.${shape.name}`;
}

/** Runs `fn` after every earlier call has finished. */
function serializer(): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>) => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };
}

export async function copyTables(jobs: readonly TableJob[], options: CopyTablesOptions): Promise<CopyCounts> {
  // Largest first, so that the last table to finish is a small one.
  const queue = [...jobs].sort((a, b) => (b.rowsEstimated ?? 0) - (a.rowsEstimated ?? 0));
  const tables = new Map<string, TableCopyUpdate>();
  const changed = new Set<string>();
  let tablesDone = 0;
  const estimates = jobs.map((j) => j.rowsEstimated);
  const rowsEstimated = estimates.every((e) => e !== null) ? estimates.reduce((a: number, b) => a + (b ?? 0), 0) : undefined;
  let lastReport = 0;
  const report = (force: boolean) => {
    const now = Date.now();
    if (!force && now - lastReport < 1000) return;
    lastReport = now;
    let rows = 0;
    let bytes = 0;
    for (const t of tables.values()) {
      rows += t.rows;
      bytes += t.bytes;
    }
    const updates = [...changed].map((r) => tables.get(r)).filter((t): t is TableCopyUpdate => t !== undefined);
    changed.clear();
    options.record(updates, { phase: 'copying', tablesDone, tablesTotal: jobs.length, rows, bytes, rowsEstimated });
  };
  const update = (relation: string, state: TableCopyUpdate['state'], counts: CopyCounts) => {
    tables.set(relation, { relation, state, rows: counts.rows, bytes: counts.bytes });
    changed.add(relation);
  };
  const exclusive = serializer();
  const worker = async (index: number, target: ReservedSql) => {
    const originFor = options.originFor(index);
    for (let job = queue.shift(); job; job = queue.shift()) {
      const relation = relationName(job.shape);
      update(relation, 'copying', { rows: 0, bytes: 0 });
      report(true);
      const ctx: CopyContext = {
        ...options.base,
        target,
        originFor,
        exclusive,
        onProgress: (counts) => {
          update(relation, 'copying', counts);
          report(false);
        },
      };
      const counts = await copyTable(ctx, job.shape);
      update(relation, 'done', counts);
      tablesDone++;
      report(true);
    }
  };
  const settled = await Promise.allSettled(
    options.sessions.map(async (session, index) => {
      try {
        await worker(index, session);
      } catch (error) {
        queue.length = 0; // the other workers stop after their current table
        throw error;
      }
    }),
  );
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  let rows = 0;
  let bytes = 0;
  for (const t of tables.values()) {
    rows += t.rows;
    bytes += t.bytes;
  }
  return { rows, bytes };
}
