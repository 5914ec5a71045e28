/**
 * What REPLICA IDENTITY FULL costs, against the default identity (the way before it), in the same run: pgmesh sets
 * FULL on every replicated table so that an update carries the out-of-line (TOAST) values it left unchanged, in its
 * old row (docs/design.md, "Out-of-line values"). Under the default identity the peer sends no old row, and such an
 * update can only be applied as a partial update of an existing row (the way before, which leaves nodes different
 * where the row is missing or differs); the bench measures that path for comparison.
 *
 * Method, per workload, per identity, per run: a fresh 2-node pgmesh cluster (embedded PostgreSQL, major from
 * PGMESH_PG_MAJOR, default 17; fsync on), the table's identity set on both nodes, the same rows loaded on both (on
 * the subscriber under the publisher's origin, as rows that came from it); n2's agent stopped while the workload is
 * generated on n1 (one transaction per row, in a procedure); then the agent starts and the clock runs until a marker
 * row written after the workload is on n2. The tables are compared (whole rows, hashed) after every run.
 *
 * Figures: WAL written on the publisher by the workload (what every peer's walsender decodes and sends), the
 * subscriber's WAL written while applying (its table is FULL too, so an applied update logs the old row there as
 * well), out-of-line values stored on the subscriber, the apply time (rows/s), and CPU of the agent (this process)
 * and of the subscriber's busiest process (its apply backend). WAL counts full-page images: each phase starts after
 * a checkpoint. Workloads:
 *   toast-update   UPDATE of a small column of rows with an 8 KB incompressible text stored out of line (unchanged)
 *   toast-delete   DELETE of such rows
 *   narrow-update  UPDATE of pgbench-like rows (no out-of-line value): what FULL costs on ordinary tables
 *
 * Usage: npx tsx bench/toast-identity.ts [--rows 2000] [--runs 1] [--only toast-update,...]
 * Never part of `npm test`.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Agent } from '../src/agent/agent.ts';
import { createCluster } from '../src/cluster/cluster-ops.ts';
import { loadConfig } from '../src/config/config.ts';
import type { Logger } from '../src/core/logger.ts';
import { EmbeddedServer } from '../src/embedded/embedded-server.ts';
import { parseMajor, type PgMajor } from '../src/embedded/postgres-binaries.ts';
import { postmasterPid, sampleServerCpu, serverCpuBetween } from './support/proc-cpu.ts';
import { client, type Sql } from './support/server-pair.ts';

type Identity = 'default' | 'full';

interface Workload {
  readonly name: string;
  readonly table: 'doc' | 'narrow';
  /** Rows changed, one transaction each. */
  readonly rows: number;
  readonly generate: string;
}

interface Run {
  readonly publisherWalBytes: number;
  readonly subscriberWalBytes: number;
  /** Out-of-line values stored on the subscriber while applying (a value written again is one). */
  readonly subscriberToastWrites: number;
  readonly seconds: number;
  readonly agentCpuMs: number;
  readonly applyBackendCpuMs: number;
}

const SCHEMA = `
CREATE FUNCTION big_text(seed integer) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT string_agg(md5(seed || ':' || i), '' ORDER BY i) FROM generate_series(1, 256) i $$;
CREATE TABLE doc (id integer PRIMARY KEY, n integer NOT NULL, body text);
ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE narrow (aid integer PRIMARY KEY, bid integer NOT NULL, abalance integer NOT NULL, filler character(84));
CREATE TABLE marker (id integer PRIMARY KEY);
CREATE PROCEDURE bench_update_doc(txns integer) LANGUAGE plpgsql AS $$
BEGIN FOR i IN 1 .. txns LOOP UPDATE doc SET n = n + 1 WHERE id = i; COMMIT; END LOOP; END $$;
CREATE PROCEDURE bench_delete_doc(n integer) LANGUAGE plpgsql AS $$
BEGIN FOR i IN 1 .. n LOOP DELETE FROM doc WHERE id = i; COMMIT; END LOOP; END $$;
CREATE PROCEDURE bench_update_narrow(n integer) LANGUAGE plpgsql AS $$
BEGIN FOR i IN 1 .. n LOOP UPDATE narrow SET abalance = abalance + 1 WHERE aid = i; COMMIT; END LOOP; END $$;
`;

const preload = (rows: number): string =>
  `INSERT INTO doc SELECT g, 0, big_text(g) FROM generate_series(1, ${rows}) g; ` +
  `INSERT INTO narrow SELECT g, 1, 0, '' FROM generate_series(1, ${rows}) g`;

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };

async function walLsn(sql: Sql): Promise<string> {
  return (await sql.unsafe<{ lsn: string }[]>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`))[0]?.lsn ?? '0/0';
}

async function walSince(sql: Sql, from: string): Promise<number> {
  return Number((await sql.unsafe<{ b: string }[]>(`SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::text AS b`, [from]))[0]?.b);
}

/** doc's out-of-line values are TOAST chunks with an OID each, handed out in increasing order: newer ones are larger. */
async function newestToastValue(sql: Sql): Promise<string> {
  const toast = await sql.unsafe<{ rel: string }[]>(`SELECT reltoastrelid::regclass::text AS rel FROM pg_catalog.pg_class WHERE oid = 'doc'::regclass`);
  return (await sql.unsafe<{ id: string }[]>(`SELECT coalesce(max(chunk_id::text::bigint), 0)::text AS id FROM ${toast[0]?.rel}`))[0]?.id ?? '0';
}

async function toastValuesSince(sql: Sql, newest: string): Promise<number> {
  const toast = await sql.unsafe<{ rel: string }[]>(`SELECT reltoastrelid::regclass::text AS rel FROM pg_catalog.pg_class WHERE oid = 'doc'::regclass`);
  const rows = await sql.unsafe<{ n: number }[]>(`SELECT count(DISTINCT chunk_id)::int AS n FROM ${toast[0]?.rel} WHERE chunk_id::text::bigint > $1::text::bigint`, [newest]);
  return rows[0]?.n ?? 0;
}

async function tableHash(sql: Sql, table: string): Promise<string> {
  const rows = await sql.unsafe<{ h: string }[]>(`SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE "C"), '')) AS h FROM ${table} t`);
  return rows[0]?.h ?? '';
}

async function runOnce(major: PgMajor, identity: Identity, workload: Workload, preloadRows: number): Promise<Run> {
  const baseDir = mkdtempSync(join(tmpdir(), 'pgmesh-bench-toast-'));
  chmodSync(baseDir, 0o755);
  const password = `pw-${Math.random().toString(36).slice(2, 10)}`;
  const servers: EmbeddedServer[] = [];
  const pools: Sql[] = [];
  let agent: Agent | undefined;
  try {
    for (const name of ['n1', 'n2']) servers.push(await EmbeddedServer.create({ name, baseDir, major, password }));
    await Promise.all(servers.map((s) => s.start()));
    const [publisher, subscriber] = servers as [EmbeddedServer, EmbeddedServer];
    const pub = client(publisher);
    const sub = client(subscriber);
    pools.push(pub, sub);
    for (const sql of [pub, sub]) await sql.unsafe(SCHEMA).simple();
    const configPath = join(baseDir, 'cluster.json');
    writeFileSync(configPath, JSON.stringify({ maxNodes: 8, logLevel: 'silent', nodes: [{ name: 'n1', dsn: publisher.dsn }, { name: 'n2', dsn: subscriber.dsn }] }), {
      mode: 0o600,
    });
    const config = loadConfig({ file: configPath });
    await createCluster(config, silent);
    if (identity === 'default') for (const sql of [pub, sub]) await sql.unsafe(`ALTER TABLE doc REPLICA IDENTITY DEFAULT; ALTER TABLE narrow REPLICA IDENTITY DEFAULT`).simple();
    // The same rows on both nodes; on the subscriber as rows that came from the publisher (its origin, older).
    await pub.unsafe(preload(preloadRows)).simple();
    const loader = client(subscriber);
    try {
      const origin = await sub.unsafe<{ o: string }[]>(`SELECT origin_name AS o FROM pgmesh.peer WHERE node_name = 'n1'`);
      await loader.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup($1)`, [origin[0]?.o ?? '']);
      await loader.unsafe(preload(preloadRows)).simple();
    } finally {
      await loader.end({ timeout: 1 });
    }
    // The preload is not streamed to n2 again: the slot moves past it (the rows are there already).
    const slot = await sub.unsafe<{ s: string }[]>(`SELECT slot_name AS s FROM pgmesh.peer WHERE node_name = 'n1'`);
    await pub.unsafe(`SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())`, [slot[0]?.s ?? '']);
    for (const sql of [pub, sub]) for (const table of ['doc', 'narrow']) await sql.unsafe(`VACUUM (ANALYZE) ${table}`);

    // Both phases start right after a checkpoint, so each counts the full-page images of the pages it changes first.
    await pub.unsafe('CHECKPOINT');
    const gen = client(publisher, { synchronous_commit: 'off' });
    const pubStart = await walLsn(pub);
    try {
      await gen.unsafe(workload.generate).simple();
    } finally {
      await gen.end({ timeout: 1 });
    }
    const publisherWalBytes = await walSince(pub, pubStart);
    await pub.unsafe(`INSERT INTO marker VALUES (1)`);
    await Promise.all([pub.unsafe('CHECKPOINT'), sub.unsafe('CHECKPOINT')]);

    const subPid = postmasterPid(subscriber.dataDir);
    const toastBefore = await newestToastValue(sub);
    const subStart = await walLsn(sub);
    const cpu0 = process.cpuUsage();
    const server0 = sampleServerCpu(subPid);
    const t0 = performance.now();
    agent = await Agent.start(config, 'n2', silent);
    const deadline = Date.now() + 30 * 60_000;
    for (;;) {
      if ((await sub.unsafe(`SELECT 1 FROM marker WHERE id = 1`)).length > 0) break;
      const error = agent.status().peers[0]?.lastError;
      if (error) throw new Error(`pgmesh agent n2: ${error.code}: ${error.message}`);
      if (Date.now() > deadline) throw new Error('the subscriber did not catch up within 30 minutes');
      await new Promise((r) => setTimeout(r, 10));
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const server = serverCpuBetween(server0, sampleServerCpu(subPid));
    const subscriberWalBytes = await walSince(sub, subStart);
    const subscriberToastWrites = await toastValuesSince(sub, toastBefore);
    for (const table of ['doc', 'narrow']) {
      const [a, b] = await Promise.all([tableHash(pub, table), tableHash(sub, table)]);
      if (a !== b) throw new Error(`${identity}/${workload.name}: ${table} differs after catch-up: n1 ${a}, n2 ${b}`);
    }
    return { publisherWalBytes, subscriberWalBytes, subscriberToastWrites, seconds, agentCpuMs: (cpu.user + cpu.system) / 1000, applyBackendCpuMs: server.busiest?.ms ?? 0 };
  } finally {
    await agent?.stop().catch(() => undefined);
    await Promise.all(pools.map((p) => p.end({ timeout: 1 }).catch(() => undefined)));
    await Promise.all(servers.map((s) => s.stop().catch(() => s.kill())));
    if (!process.env.PGMESH_KEEP_BENCH_DIRS) rmSync(baseDir, { recursive: true, force: true });
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

const { values } = parseArgs({ options: { rows: { type: 'string', default: '2000' }, runs: { type: 'string', default: '1' }, only: { type: 'string' } } });
const rows = Number(values.rows);
const runs = Number(values.runs);
if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(runs) || runs < 1) {
  process.stderr.write('--rows and --runs take positive integers\n');
  process.exit(2);
}
const major = parseMajor(process.env.PGMESH_PG_MAJOR, 'PGMESH_PG_MAJOR');
const all: Workload[] = [
  { name: 'toast-update', table: 'doc', rows, generate: `CALL bench_update_doc(${rows})` },
  { name: 'toast-delete', table: 'doc', rows, generate: `CALL bench_delete_doc(${rows})` },
  { name: 'narrow-update', table: 'narrow', rows, generate: `CALL bench_update_narrow(${rows})` },
];
const only = values.only?.split(',');
const chosen = only ? all.filter((w) => only.includes(w.name)) : all;
if (chosen.length === 0) {
  process.stderr.write(`--only names none of ${all.map((w) => w.name).join(', ')}\n`);
  process.exit(2);
}

console.log(`REPLICA IDENTITY default vs full: PostgreSQL ${major}, ${rows} one-row transactions per workload, median of ${runs} run(s)`);
console.log('');
console.log(
  `${'workload'.padEnd(14)} ${'identity'.padEnd(8)} ${'pub WAL B/row'.padStart(13)} ${'sub WAL B/row'.padStart(13)} ${'sub TOAST/row'.padStart(13)} ${'rows/s'.padStart(8)} ${'agent µs/row'.padStart(12)} ${'apply be µs/row'.padStart(15)}`,
);
for (const workload of chosen) {
  const results: Record<Identity, Run[]> = { default: [], full: [] };
  // Interleaved, so that a slow phase of the shared machine weighs on both.
  for (let i = 0; i < runs; i++) for (const identity of ['default', 'full'] as const) results[identity].push(await runOnce(major, identity, workload, rows));
  for (const identity of ['default', 'full'] as const) {
    const r = results[identity];
    const per = (f: (x: Run) => number) => median(r.map(f)) / workload.rows;
    console.log(
      `${workload.name.padEnd(14)} ${identity.padEnd(8)} ${per((x) => x.publisherWalBytes).toFixed(0).padStart(13)} ${per((x) => x.subscriberWalBytes).toFixed(0).padStart(13)} ${per((x) => x.subscriberToastWrites).toFixed(2).padStart(13)} ` +
        `${Math.round(median(r.map((x) => workload.rows / x.seconds))).toLocaleString('en-US').padStart(8)} ${(per((x) => x.agentCpuMs) * 1000).toFixed(0).padStart(12)} ` +
        `${(per((x) => x.applyBackendCpuMs) * 1000).toFixed(0).padStart(15)}`,
    );
  }
}
console.log('');
console.log('pub WAL: written by the workload on the publisher; sub WAL: written on the subscriber while applying it;');
console.log('rows/s: apply of the backlog; agent: CPU of this process; apply be: CPU of the subscriber\'s busiest process.');
