/**
 * What one applied transaction costs the apply session's backend, statement by statement: the figures behind "where
 * the time goes" in README. One embedded server with the pgmesh catalog and an origin session, as the applier opens
 * it (replica mode, asynchronous commit, generic plans); N one-row insert transactions per variant, each one
 * simple-query message, pipelined as the applier sends them. Backend CPU comes from /proc/<pid>/stat of the
 * session's backend, agent CPU from process.cpuUsage(). Medians of --rounds rounds, variants interleaved.
 *
 * Variants (the differences between them are the cost of one thing):
 *   literal-insert    INSERT ... VALUES (literals): parsed and planned every time
 *   execute-insert    EXECUTE of a prepared plain INSERT
 *   origin-only       + pg_replication_origin_xact_setup in a second statement
 *   progress-only     + an update of the peer's row in pgmesh.apply_progress (how progress was kept before the log)
 *   second-insert     + an insert into another table in a second statement
 *   plus-finish       + the finish statement (progress log row, origin LSN and timestamp): a real applied transaction
 *   combined          the same as plus-finish in one statement (finish as CTEs of the insert)
 *   fast-path         the fast-path insert pgmesh sends instead of the plain one, + finish
 *   fast-path-locked  the same after the key lock (key-lock.ts: rows of pgmesh.apply_lock): what pgmesh does today
 *   fast-path-keyslot the same with only the key's row of pgmesh.apply_lock locked (not its table's row too)
 *   fast-path-advisory the same with the key's advisory lock instead (what pgmesh did before apply_lock)
 *   execute-update    a prepared plain UPDATE of one row + finish
 *   fast-update       the fast-path update pgmesh sends (version check, counted) + finish
 *   full-statement    the full conflict-detecting statement (key and row locks + CTE) + finish: what a conflict costs
 *
 * Usage: npx tsx bench/statement-costs.ts [--transactions 10000] [--rounds 3]
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import postgres from 'postgres';
import { bindRelation, loadLocalRelation } from '../src/apply/local-relation.ts';
import { buildFastStatement, buildFinish, buildStatement } from '../src/apply/statement-builder.ts';
import { buildKeyLock } from '../src/apply/key-lock.ts';
import { APPLY_LOCK_SLOTS } from '../src/apply/lock-space.ts';
import { addTables, ensurePeer, initNode } from '../src/cluster/node-admin.ts';
import { formatLsn } from '../src/core/lsn.ts';
import type { Logger } from '../src/core/logger.ts';
import { formatPgTimestamp, pgTimestamp, pgTimestampFromDate } from '../src/core/pg-time.ts';
import { EmbeddedServer } from '../src/embedded/embedded-server.ts';
import { parseMajor } from '../src/embedded/postgres-binaries.ts';
import { openSql } from '../src/pg/connect.ts';
import { quoteLiteral } from '../src/pg/quote.ts';
import type { RelationMessage } from '../src/protocol/messages.ts';
import { makeServerTempDir } from '../src/embedded/server-user.ts';

const { values } = parseArgs({ options: { transactions: { type: 'string', default: '10000' }, rounds: { type: 'string', default: '3' } } });
const N = Number(values.transactions);
const ROUNDS = Number(values.rounds);
const TICKS_MS = 10; // /proc clock ticks are 1/100 s on Linux

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };
const base = makeServerTempDir('pgmesh-bench-');
const server = await EmbeddedServer.create({ name: 's1', baseDir: base, major: parseMajor(process.env.PGMESH_PG_MAJOR, 'PGMESH_PG_MAJOR'), password: 'bench' });
try {
  await server.start();
  const admin = postgres(server.dsn, { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Parameters<typeof initNode>[0];
  await admin.unsafe(`CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL, payload text NOT NULL)`);
  await initNode(admin, { nodeName: 'n2', nodeSlot: 2, maxNodes: 16, expectedPeers: 1 });
  await addTables(admin, 'all');
  await ensurePeer(admin, { name: 'n1', nodeSlot: 1, endpoint: 'bench' });
  const local = await loadLocalRelation(admin, 'public', 't');
  if (!local) throw new Error('table t not found');
  const relation: RelationMessage = {
    tag: 'relation',
    relationOid: 1,
    schema: 'public',
    name: 't',
    replicaIdentity: 'd',
    columns: [
      { isKey: true, name: 'id', typeOid: 20, typeModifier: -1 },
      { isKey: false, name: 'n', typeOid: 23, typeModifier: -1 },
      { isKey: false, name: 'payload', typeOid: 25, typeModifier: -1 },
    ],
  };
  const binding = bindRelation(relation, local, { peer: 'n1', node: 'n2' });
  const origin = (await admin.unsafe<{ origin_name: string }[]>(`SELECT origin_name FROM pgmesh.peer WHERE node_name = 'n1'`))[0]?.origin_name ?? '';
  const origins = await admin.unsafe<{ id: number }[]>(`SELECT roident::int AS id FROM pg_replication_origin WHERE roname = $1`, [origin]);
  const ctx = { peer: 'n1', localNode: 'n2', conflictWindowMs: 10_000, peerOriginId: origins[0]?.id ?? 0 };
  const shape = { kind: 'upsert' as const, binding, valuePositions: [0, 1, 2], multiRow: false };
  const fast = buildFastStatement(shape, ctx, 'i')?.text;
  const fastUpdate = buildFastStatement(shape, ctx, 'u')?.text;
  if (!fast || !fastUpdate) throw new Error('no fast path for the bench table');

  const session = openSql(server.dsn, {
    node: 'n2',
    applicationName: 'pgmesh bench statements',
    logger: silent,
    pipelined: true,
    parameters: { session_replication_role: 'replica', synchronous_commit: 'off', plan_cache_mode: 'force_generic_plan' },
  });
  await session.unsafe(`SELECT pg_replication_origin_session_setup($1)`, [origin]);
  await session.unsafe(`SELECT set_config('pgmesh.applied_end', '0/0', false)`);
  await admin.unsafe(`CREATE TABLE second (end_lsn pg_lsn PRIMARY KEY, ts timestamptz)`);
  const pid = Number((await session.unsafe<{ pid: number }[]>(`SELECT pg_backend_pid() AS pid`))[0]?.pid);
  await session.unsafe(
    `PREPARE plain_insert AS INSERT INTO public.t (id, n, payload) VALUES ($1::text::bigint, $2::text::int, $3::text); ` +
      `PREPARE fast_insert AS ${fast}; PREPARE fast_update AS ${fastUpdate}; ` +
      `PREPARE plain_update AS UPDATE public.t SET n = $2::text::int, payload = $3::text WHERE id = $1::text::bigint; ` +
      `PREPARE lock_row AS ${buildKeyLock(shape, 'keys', true).text}; PREPARE lock_key AS ${buildKeyLock(shape, 'keys', false).text}; ` +
      `PREPARE lock_keyslot AS SELECT 1 FROM pgmesh.apply_lock l WHERE l.slot = (${APPLY_LOCK_SLOTS} + (pg_catalog.hashtextextended(pg_catalog.jsonb_build_array($1::text::bigint)::text, ${local.oid}) & ${APPLY_LOCK_SLOTS - 1}))::int4 FOR UPDATE; ` +
      `PREPARE lock_advisory AS SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(pg_catalog.jsonb_build_array($1::text::bigint)::text, ${local.oid})); ` +
      `PREPARE full_upsert AS ${buildStatement(shape, ctx, 'last_update_wins')}; PREPARE finish AS ${buildFinish(ctx)}; ` +
      `PREPARE origin_only AS SELECT pg_catalog.pg_replication_origin_xact_setup($3::text::pg_lsn, $4::text::timestamptz), $1::text, $2::text; ` +
      `` +
      `PREPARE second_insert AS INSERT INTO public.second SELECT $3::text::pg_lsn, $4::text::timestamptz WHERE $1::text || $2::text IS NOT NULL; ` +
      `PREPARE combined AS WITH o AS (SELECT CASE WHEN pg_catalog.current_setting('pgmesh.applied_end', true) = $5::text ` +
      `THEN pg_catalog.set_config('pgmesh.applied_end', $6::text, false) ELSE pgmesh.raise_error('PM001', 'x', NULL) END AS checked, ` +
      `pg_catalog.pg_replication_origin_xact_setup($6::text::pg_lsn, $7::text::timestamptz) AS origin), ` +
      `f AS (INSERT INTO pgmesh.applied_xact (peer, end_lsn, remote_commit_ts) SELECT $4::text, $6::text::pg_lsn, $7::text::timestamptz FROM o) ` +
      `INSERT INTO public.t (id, n, payload) VALUES ($1::text::bigint, $2::text::int, $3::text); ` +
      `PREPARE progress_only AS UPDATE pgmesh.apply_progress SET applied_xacts = applied_xacts + 1 WHERE peer = $1::text AND $2::text || $3::text || $4::text IS NOT NULL`,
  );

  const backendMs = (): number => {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * TICKS_MS;
  };
  let nextId = 1;
  let secondEnd = 0n;
  let end = 0n; // the progress row's end LSN, advanced by every finish
  // Every transaction gets a later commit timestamp, as a peer's stream does (an update must be newer than its row).
  const start = pgTimestampFromDate(new Date(Date.now() + 3_600_000));
  let tick = 0n;
  let ts = formatPgTimestamp(start);
  const nextTs = (): string => {
    ts = formatPgTimestamp(pgTimestamp(start + ++tick));
    return ts;
  };
  const finish = (): string => {
    const prev = formatLsn(end);
    end += 100n;
    return `EXECUTE finish('${prev}', '${formatLsn(end)}', '${ts}')`;
  };
  const row = (): [string, string, string] => {
    const id = nextId++;
    return [String(id), String(id % 1000), `payload ${id}`];
  };
  // Updates of rows inserted by the earlier variants of the round (the peer's origin wrote them: the fast path's case).
  let updateId = 0;
  const updated = (): [string, string, string] => {
    updateId = (updateId % (nextId - 1)) + 1;
    return [String(updateId), String(updateId % 7), `updated ${updateId}`];
  };
  const args = (values: readonly string[]): string => values.map(quoteLiteral).join(', ');
  const variants: Record<string, () => string> = {
    'literal-insert': () => `INSERT INTO public.t (id, n, payload) VALUES (${args(row())})`,
    'execute-insert': () => `EXECUTE plain_insert(${args(row())})`,
    'plus-finish': () => `EXECUTE plain_insert(${args(row())}); ${finish()}`,
    'origin-only': () => `EXECUTE plain_insert(${args(row())}); EXECUTE origin_only('n1', '0/0', '${formatLsn(end + 1n)}', '${ts}')`,
    'progress-only': () => `EXECUTE plain_insert(${args(row())}); EXECUTE progress_only('n1', '0/0', '0/0', '${ts}')`,
    'second-insert': () => {
      secondEnd += 100n;
      return `EXECUTE plain_insert(${args(row())}); EXECUTE second_insert('0/', '0', '${formatLsn(secondEnd)}', '${ts}')`;
    },
    'combined': () => {
      const prev = formatLsn(end);
      end += 100n;
      return `EXECUTE combined(${args(row())}, 'n1', '${prev}', '${formatLsn(end)}', '${ts}')`;
    },
    'fast-path': () => `EXECUTE fast_insert(${args([...row(), 'i'])}); ${finish()}`,
    'fast-path-locked': () => {
      const r = row();
      return `EXECUTE lock_key(${quoteLiteral(r[0])}); EXECUTE fast_insert(${args([...r, 'i'])}); ${finish()}`;
    },
    'fast-path-keyslot': () => {
      const r = row();
      return `EXECUTE lock_keyslot(${quoteLiteral(r[0])}); EXECUTE fast_insert(${args([...r, 'i'])}); ${finish()}`;
    },
    'fast-path-advisory': () => {
      const r = row();
      return `EXECUTE lock_advisory(${quoteLiteral(r[0])}); EXECUTE fast_insert(${args([...r, 'i'])}); ${finish()}`;
    },
    'execute-update': () => `EXECUTE plain_update(${args(updated())}); ${finish()}`,
    'fast-update': () => `EXECUTE fast_update(${args([...updated(), 'u', nextTs()])}); ${finish()}`,
    'full-statement': () => {
      const r = row();
      return `EXECUTE lock_row(${quoteLiteral(r[0])}); EXECUTE full_upsert(${args([...r, 'i', ts, formatLsn(end + 100n)])}); ${finish()}`;
    },
  };

  const results = new Map<string, { backendUs: number[]; agentUs: number[]; tps: number[] }>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, message] of Object.entries(variants)) {
      const cpu0 = process.cpuUsage();
      const backend0 = backendMs();
      const t0 = performance.now();
      let pending: Promise<unknown>[] = [];
      for (let i = 0; i < N; i++) {
        pending.push(session.unsafe(message()));
        if (pending.length >= 500) {
          await Promise.all(pending);
          pending = [];
        }
      }
      await Promise.all(pending);
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const entry = results.get(name) ?? { backendUs: [], agentUs: [], tps: [] };
      entry.backendUs.push(((backendMs() - backend0) * 1000) / N);
      entry.agentUs.push((cpu.user + cpu.system) / N);
      entry.tps.push(N / seconds);
      results.set(name, entry);
    }
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  console.log(`statement costs of one-row transactions, PostgreSQL ${server.major}, ${N} transactions per variant, median of ${ROUNDS} rounds`);
  console.log('');
  console.log(`${'variant'.padEnd(18)} ${'backend µs/txn'.padStart(15)} ${'agent µs/txn'.padStart(13)} ${'txn/s'.padStart(9)}`);
  for (const [name, r] of results) {
    console.log(
      `${name.padEnd(18)} ${median(r.backendUs).toFixed(0).padStart(15)} ${median(r.agentUs).toFixed(0).padStart(13)} ${Math.round(median(r.tps)).toLocaleString('en-US').padStart(9)}`,
    );
  }
  console.log('');
  console.log('backend = CPU of the apply session\'s server process (1/100 s ticks); agent = CPU of this process (driver, string building).');
  await session.end({ timeout: 1 });
  await (admin as unknown as { end(o: { timeout: number }): Promise<void> }).end({ timeout: 1 });
} finally {
  await server.kill().catch(() => undefined);
  rmSync(base, { recursive: true, force: true });
}
