/**
 * The copy rate of `pgmesh node add` against PostgreSQL's own `COPY ... TO STDOUT | COPY ... FROM STDIN` between the
 * same two embedded servers, in the same run, and the time from `node add` to a node that streams.
 *
 * Setup: server A holds --tables replicated tables (default 2; a one-node pgmesh cluster, n1) with about --mb MB of
 * COPY text in all (--gb for gigabytes), written in transactions of 10,000 rows (each a version of its own); server B receives.
 * Each run makes a fresh database on B per system (so every copy goes into an empty table, as a joining node's):
 *
 * - native: `COPY t TO STDOUT` on A piped into `COPY t FROM STDIN` on B, one table after the other, through this process with
 *   the same driver and the same kind of pipe that pgmesh uses (the embedded binaries ship no psql).
 * - pgmesh: `node add` of a node on B from n1 (the library call), rows older than the copy's horizon (the usual case
 *   of a table that has been there a while: one streamed COPY per table; tuning margins 0).
 * - pgmesh-exact: the same with every row newer than the horizon (margins of a day), so every row is copied with its
 *   exact version through the stage table, one transaction per version: the worst case, rows written in the last
 *   minute before the join.
 *
 * Rates are the table's COPY text (the bytes native moved) and its rows over each system's copy time (pgmesh: the copy
 * phase that addNode reports, from the snapshot to the last table). "to streaming" is from the addNode call until an
 * agent of the new node, started right after, streams from n1. The ratio is pgmesh's median rate over native's.
 *
 * Usage: npm run bench:node-add -- [--mb 64 | --gb 1] [--runs 3] [--systems native,pgmesh,pgmesh-exact]
 *        [--tables 2] [--parallel N (tuning.copyParallelism)] [--json]
 * Never part of `npm test`.
 */
import { cpus, loadavg } from 'node:os';
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { Agent } from '../src/agent/agent.ts';
import { addTables, initNode } from '../src/cluster/node-admin.ts';
import { loadConfig } from '../src/config/config.ts';
import { silentLogger } from '../src/core/logger.ts';
import { EmbeddedServer } from '../src/embedded/embedded-server.ts';
import { parseMajor } from '../src/embedded/postgres-binaries.ts';
import { makeServerTempDir } from '../src/embedded/server-user.ts';
import { openSql } from '../src/pg/connect.ts';
import { addNode } from '../src/membership/node-add.ts';
import { dropSlotIfExists, dropSlotsFor, unlinkPeer } from '../src/membership/links.ts';
import { client, type Sql } from './support/server-pair.ts';

const tableName = (i: number) => `bench_copy_${i}`;
const schema = (tables: number) =>
  Array.from(
    { length: tables },
    (_, i) => `CREATE TABLE ${tableName(i + 1)} (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2) NOT NULL,
  note text NOT NULL, created timestamptz NOT NULL);`,
  ).join('\n');
/** About 100 bytes of COPY text per row. */
const ROW_BYTES = 100;
const ROWS_PER_TXN = 10_000;
const SYSTEMS = ['native', 'pgmesh', 'pgmesh-exact'] as const;
type System = (typeof SYSTEMS)[number];

interface RunResult {
  readonly system: System;
  readonly copySeconds: number;
  /** pgmesh: addNode call to an agent streaming from n1. */
  readonly toStreamingSeconds: number | undefined;
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

function revision(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    return dirty ? `${head}+dirty` : head;
  } catch {
    return 'unknown';
  }
}

function withDatabase(dsn: string, database: string): string {
  const url = new URL(dsn);
  url.pathname = `/${database}`;
  return url.toString();
}

async function fill(sql: Sql, table: string, rows: number): Promise<void> {
  await sql.unsafe(`DO $$
DECLARE first bigint := 1;
BEGIN
  WHILE first <= ${rows} LOOP
    INSERT INTO ${table}
      SELECT g, g % 1000, (g % 100000) / 100.0, 'note ' || md5(g::text) || ' ' || repeat('x', 20), '2026-01-01'::timestamptz + g * interval '1 second'
        FROM generate_series(first, least(first + ${ROWS_PER_TXN - 1}, ${rows})) g;
    COMMIT;
    first := first + ${ROWS_PER_TXN};
  END LOOP;
END $$`);
  await sql.unsafe(`VACUUM (ANALYZE) ${table}`);
}

/** Each table in turn, as a script of COPY | COPY would. */
async function nativeCopy(source: EmbeddedServer, target: EmbeddedServer, database: string, tables: number): Promise<{ seconds: number; bytes: number; rows: number }> {
  const to = openSql(withDatabase(target.dsn, database), { node: 'target', applicationName: 'bench native copy', logger: silentLogger, max: 1 });
  try {
    await to.unsafe('SELECT 1');
    let bytes = 0;
    let rows = 0;
    const counter = () =>
      new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          bytes += chunk.length;
          for (let i = chunk.indexOf(0x0a); i !== -1; i = chunk.indexOf(0x0a, i + 1)) rows++;
          callback(null, chunk);
        },
      });
    const started = performance.now();
    for (let i = 1; i <= tables; i++) {
      // A connection per COPY, as pgmesh's copy has (src/pg/copy-stream.ts says why).
      const from = client(source);
      try {
        const readable = await from.unsafe(`COPY ${tableName(i)} TO STDOUT`).readable();
        const writable = await to.unsafe(`COPY ${tableName(i)} FROM STDIN`).writable();
        await pipeline(readable, counter(), writable);
        // The COPY's answer: its rows are committed when the next statement is answered.
        await to.unsafe('SELECT 1');
      } finally {
        await from.end({ timeout: 1 });
      }
    }
    return { seconds: (performance.now() - started) / 1000, bytes, rows };
  } finally {
    await to.end({ timeout: 1 });
  }
}

async function pgmeshAdd(
  source: EmbeddedServer,
  target: EmbeddedServer,
  database: string,
  node: string,
  exact: boolean,
  dir: string,
  parallel: number | undefined,
): Promise<{ copySeconds: number; toStreamingSeconds: number; rows: number }> {
  const dsn = withDatabase(target.dsn, database);
  const margin = exact ? 86_400_000 : 0;
  const path = join(dir, `${node}.json`);
  const tuning: Record<string, unknown> = { tombstoneMarginMs: margin, conflictWindowMs: margin };
  if (parallel !== undefined) tuning.copyParallelism = parallel;
  writeFileSync(
    path,
    JSON.stringify({ maxNodes: 64, logLevel: 'silent', nodes: [{ name: 'n1', dsn: source.dsn }, { name: node, dsn }], tuning }),
    { mode: 0o600 },
  );
  const config = loadConfig({ file: path });
  const started = performance.now();
  const result = await addNode(config, silentLogger, { name: node, dsn, from: 'n1' });
  const agent = await Agent.start(config, node, silentLogger);
  try {
    const deadline = Date.now() + 120_000;
    while (agent.status().peers[0]?.state !== 'streaming') {
      if (Date.now() > deadline) throw new Error(`${node}'s agent did not stream from n1 within 120 s: ${JSON.stringify(agent.status().peers[0])}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return { copySeconds: result.copySeconds, toStreamingSeconds: (performance.now() - started) / 1000, rows: result.rows };
  } finally {
    await agent.stop();
  }
}

/** Leaves A as it was before the add: no slot, peer or origin of the joined node (the database on B is dropped). */
async function forget(a: Sql, node: string, b: Sql, database: string): Promise<void> {
  await dropSlotsFor(a, node, { terminate: true, node: 'n1' });
  await unlinkPeer(a, node, 'n1');
  const slots = await b.unsafe<{ slot_name: string }[]>(`SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE database = $1`, [database]);
  for (const s of slots) await dropSlotIfExists(b, s.slot_name, { terminate: true, node });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mb: { type: 'string', default: '64' },
      gb: { type: 'string' },
      runs: { type: 'string', default: '3' },
      tables: { type: 'string', default: '2' },
      systems: { type: 'string', default: SYSTEMS.join(',') },
      parallel: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  const mb = values.gb !== undefined ? Number(values.gb) * 1024 : Number(values.mb);
  const runs = Number(values.runs);
  if (!(mb > 0)) throw new Error(`--mb/--gb must be a positive number`);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${values.runs} must be a whole number >= 1`);
  const systems = values.systems.split(',').map((s) => s.trim());
  for (const s of systems) if (!(SYSTEMS as readonly string[]).includes(s)) throw new Error(`--systems: unknown system ${s} (${SYSTEMS.join(', ')})`);
  const tables = Number(values.tables);
  if (!Number.isInteger(tables) || tables < 1) throw new Error(`--tables ${values.tables} must be a whole number >= 1`);
  const parallel = values.parallel === undefined ? undefined : Number(values.parallel);
  if (parallel !== undefined && (!Number.isInteger(parallel) || parallel < 1)) throw new Error(`--parallel ${values.parallel} must be a whole number >= 1`);
  const major = parseMajor(process.env.PGMESH_PG_MAJOR, 'PGMESH_PG_MAJOR');
  const rows = Math.round((mb * 1024 * 1024) / ROW_BYTES);
  const rev = revision();
  log(`node add copy, pgmesh ${rev}, PostgreSQL ${major}, ${rows} rows (~${mb} MB) in ${tables} table(s), ${runs} run(s), ${cpus().length} CPUs, load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);

  const dir = makeServerTempDir('pgmesh-bench-copy-');
  const password = `pw-${Math.random().toString(36).slice(2, 10)}`;
  const servers: EmbeddedServer[] = [];
  const pools: Sql[] = [];
  try {
    for (const name of ['a', 'b']) servers.push(await EmbeddedServer.create({ name, baseDir: dir, major, password }));
    await Promise.all(servers.map((s) => s.start()));
    const [a, b] = servers as [EmbeddedServer, EmbeddedServer];
    const aSql = client(a);
    const bSql = client(b);
    pools.push(aSql, bSql);
    await aSql.unsafe(schema(tables)).simple();
    const filled = performance.now();
    for (let i = 1; i <= tables; i++) await fill(aSql, tableName(i), Math.round(rows / tables));
    log(`filled A in ${((performance.now() - filled) / 1000).toFixed(1)} s`);
    const aPool = openSql(a.dsn, { node: 'n1', applicationName: 'bench', logger: silentLogger, max: 1 });
    await initNode(aPool, { nodeName: 'n1', nodeSlot: 1, maxNodes: 64, expectedPeers: 1 });
    await addTables(aPool, 'all');
    await aPool.end({ timeout: 1 });
    const bAdmin = openSql(b.dsn, { node: 'b', applicationName: 'bench', logger: silentLogger, max: 1 });
    const aAdmin = openSql(a.dsn, { node: 'n1', applicationName: 'bench', logger: silentLogger, max: 1 });

    const results: RunResult[] = [];
    let bytes = 0;
    let n = 0;
    for (let run = 1; run <= runs; run++) {
      // Alternate the order, so that neither system always runs on a warmer cache.
      const order = run % 2 === 1 ? systems : [...systems].reverse();
      for (const system of order as System[]) {
        const database = `run_${++n}`;
        await bSql.unsafe(`CREATE DATABASE ${database}`);
        const dbSql = openSql(withDatabase(b.dsn, database), { node: 'b', applicationName: 'bench', logger: silentLogger, max: 1 });
        await dbSql.unsafe(schema(tables)).simple();
        await dbSql.end({ timeout: 1 });
        await bSql.unsafe('CHECKPOINT');
        await aSql.unsafe('CHECKPOINT');
        if (system === 'native') {
          const copied = await nativeCopy(a, b, database, tables);
          bytes = copied.bytes;
          results.push({ system, copySeconds: copied.seconds, toStreamingSeconds: undefined });
          log(`run ${run}/${runs} native      : copy ${copied.seconds.toFixed(2)} s (${copied.rows} rows, ${copied.bytes} bytes)`);
        } else {
          const node = `j${n}`;
          const added = await pgmeshAdd(a, b, database, node, system === 'pgmesh-exact', dir, parallel);
          results.push({ system, copySeconds: added.copySeconds, toStreamingSeconds: added.toStreamingSeconds });
          log(`run ${run}/${runs} ${system.padEnd(12)}: copy ${added.copySeconds.toFixed(2)} s, to streaming ${added.toStreamingSeconds.toFixed(2)} s (${added.rows} rows)`);
          await forget(aAdmin, node, bAdmin, database);
        }
        await bSql.unsafe(`DROP DATABASE ${database} WITH (FORCE)`);
      }
    }
    await bAdmin.end({ timeout: 1 });
    await aAdmin.end({ timeout: 1 });

    const mbs = bytes / 1024 / 1024;
    const summary = systems.map((system) => {
      const mine = results.filter((r) => r.system === system);
      const seconds = median(mine.map((r) => r.copySeconds));
      const streaming = mine.map((r) => r.toStreamingSeconds).filter((s): s is number => s !== undefined);
      return { system, seconds, mbPerS: mbs / seconds, rowsPerS: rows / seconds, toStreamingSeconds: streaming.length > 0 ? median(streaming) : undefined };
    });
    const native = summary.find((s) => s.system === 'native');
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ revision: rev, major, rows, bytes, runs, results: summary, each: results })}\n`);
      return;
    }
    process.stdout.write(
      `\nnode add copy, pgmesh ${rev}, PostgreSQL ${major}, ${rows} rows, ${mbs.toFixed(0)} MB of COPY text, median of ${runs} run(s), ${cpus().length} CPUs\n\n` +
        `| system | copy s | MB/s | rows/s | ratio | node add to streaming s |\n| --- | ---: | ---: | ---: | ---: | ---: |\n`,
    );
    for (const s of summary) {
      const ratio = native ? (native.seconds / s.seconds).toFixed(2) : '-';
      process.stdout.write(
        `| ${s.system} | ${s.seconds.toFixed(2)} | ${s.mbPerS.toFixed(1)} | ${Math.round(s.rowsPerS).toLocaleString('en-US')} | ${ratio} | ${s.toStreamingSeconds?.toFixed(2) ?? '-'} |\n`,
      );
    }
  } finally {
    await Promise.all(pools.map((p) => p.end({ timeout: 1 }).catch(() => undefined)));
    await Promise.all(servers.map((s) => s.stop().catch(() => s.kill())));
    if (!process.env.PGMESH_KEEP_BENCH_DIRS) rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    log(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  },
);
