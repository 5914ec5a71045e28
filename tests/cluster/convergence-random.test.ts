/**
 * Topology: 3 nodes, full mesh, agents in this process, started and stopped by the test.
 * Scenario (randomized, fast-check): transactions of inserts (upserts), updates, deletes and primary key changes on
 * 6 overlapping keys, written on all 3 nodes in a random order, while agents are stopped and started at random
 * points, so that streams are held back and released and every node sees the others' changes in another order and
 * interleaved with its own writes. Inserts and updates also set a unique column `u` from 3 values (or NULL), so
 * rows of different keys collide on it. After the last step every agent runs, a causal barrier passes, and then:
 *   - every node's table is identical (convergence), and
 *   - it is the last-update-wins outcome (design.md, "What converge means"): for each key, the write with the highest
 *     version (commit timestamp, node) among all writes of all nodes decides, a delete (tombstone) included; and a
 *     row gives way when a write of another key with a higher version took its `u` (docs/conflicts.md, "Unique keys
 *     other than the primary key"), whether or not that write is still there.
 * Without the code under test: a late insert revives a deleted row on some nodes only, an update that arrives
 * before its row is lost, an older change overwrites a newer one, nodes keep different winners, or different rows
 * holding the same `u` (each node the one it had). Every row has a large value stored out of line that only inserts
 * write: updates leave it unchanged, so pgoutput does not send it in the new row, and without the old row (REPLICA
 * IDENTITY FULL) an update could not recreate or replace a row whole.
 *
 * Divergences it found are kept as deterministic tests in convergence-regressions.test.ts.
 *
 * Each run uses a fresh table (created on every node while every agent is stopped), so runs share the cluster but
 * no rows, tombstones or versions. Agent timing is not part of the seed: a seed replays the same steps, not the same
 * interleaving of apply and local writes.
 *
 * PGMESH_CONVERGENCE_RUNS (default 4) sets the number of runs; PGMESH_SEED (and PGMESH_SEED_PATH) replay a run;
 * PGMESH_SHRINK=1 lets fast-check shrink a counterexample (slow: every attempt is a cluster run).
 * `npm run test:convergence-long` runs many more.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { addTables } from '../../src/cluster/node-admin.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, localDdl, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { integerFromEnv } from '../support/env.ts';

const KEYS = 6;
/** About 6.4 KB of md5 hex, which does not compress: the `big` column (STORAGE EXTERNAL) is stored out of line. */
const BIG_TEXT = `CREATE FUNCTION big_text(seed text) RETURNS text LANGUAGE sql AS $$ SELECT string_agg(md5(seed || i), '') FROM generate_series(1, 200) i $$;`;
const TRACE = process.env.PGMESH_TRACE === '1';
const RUNS = integerFromEnv('PGMESH_CONVERGENCE_RUNS') ?? 4;
const SEED = integerFromEnv('PGMESH_SEED') ?? (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) | 0;

type Op =
  | { readonly kind: 'upsert'; readonly k: number; readonly v: string | null; readonly u: number | null }
  | { readonly kind: 'update'; readonly k: number; readonly v: string | null; readonly u: number | null }
  /** A change computed from the local row, whatever version of it this node holds. */
  | { readonly kind: 'bump'; readonly k: number }
  | { readonly kind: 'delete'; readonly k: number }
  | { readonly kind: 'rekey'; readonly k: number; readonly to: number };

type Step =
  | { readonly kind: 'write'; readonly node: number; readonly ops: readonly Op[] }
  /** Start the node's agent if it is stopped, stop it if it runs. */
  | { readonly kind: 'toggle'; readonly node: number }
  /** Start every agent and wait until every node has applied everything: the next writes start from shared rows. */
  | { readonly kind: 'sync' };

const key = fc.integer({ min: 1, max: KEYS });
const value = fc.option(fc.string({ maxLength: 6 }), { freq: 5 });
/** A value of the unique column: a small domain, so that rows of different keys collide on it. */
const unique = fc.option(fc.integer({ min: 1, max: 3 }), { freq: 4, nil: null });
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('upsert' as const), k: key, v: value, u: unique }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('update' as const), k: key, v: value, u: unique }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('bump' as const), k: key }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), k: key }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('rekey' as const), k: key, to: key }) },
);
const node = fc.integer({ min: 0, max: 2 });
const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('write' as const), node, ops: fc.array(op, { minLength: 1, maxLength: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('toggle' as const), node }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'sync' as const }) },
);
const scenario = fc.record({
  /** Agents running at the start. */
  running: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean()),
  steps: fc.array(step, { minLength: 1, maxLength: 40 }),
});

/** One row written by a committed local transaction (row null: deleted), with that transaction's version. */
interface Write {
  readonly k: number;
  readonly row: Row | null;
  readonly ts: bigint;
  readonly node: string;
  readonly step: number;
}

interface Row {
  readonly k: string;
  readonly v: string | null;
  readonly n: string;
  readonly u: string | null;
  /** The hash of the row's large value, stored out of line: written by inserts only, left unchanged by updates. */
  readonly big: string | null;
}

const RETURNING = `RETURNING k::text AS k, v, n::text AS n, u::text AS u, md5(big) AS big`;

/** Runs one write step as one local transaction; returns what it wrote (nothing if it failed or found no rows). */
async function write(target: TestNode, table: string, ops: readonly Op[]): Promise<Omit<Write, 'node' | 'step'>[]> {
  let written: Omit<Write, 'ts' | 'node' | 'step'>[] = [];
  let xid: string | undefined;
  try {
    await target.sql.begin(async (tx) => {
      written = [];
      const touched = new Set<number>();
      for (const o of ops) {
        const keys = o.kind === 'rekey' ? [o.k, o.to] : [o.k];
        // A key written twice in one transaction would have two results under one version: keep the first.
        if (keys.some((k) => touched.has(k)) || (o.kind === 'rekey' && o.k === o.to)) continue;
        for (const k of keys) touched.add(k);
        const k = String(o.k);
        // A statement whose unique value (u, or the new key) is taken here changes nothing: the savepoint keeps the rest.
        const guarded = (statement: string, params: (string | null)[]) =>
          tx.savepoint((sp) => sp.unsafe<Row[]>(statement, params)).catch((error: { code?: string }) => {
            if (error.code === '23505') return [] as Row[];
            throw error;
          });
        switch (o.kind) {
          case 'upsert': {
            const rows = await guarded(
              `INSERT INTO ${table} AS t (k, v, n, u, big) VALUES ($1::text::int, $2::text, 0, $3::text::int, big_text(random()::text)) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, u = EXCLUDED.u, n = t.n + 1 ${RETURNING}`,
              [k, o.v, o.u === null ? null : String(o.u)],
            );
            for (const row of rows) written.push({ k: o.k, row });
            break;
          }
          case 'update': {
            const rows = await guarded(`UPDATE ${table} SET v = $2::text, u = $3::text::int, n = n + 1 WHERE k = $1::text::int ${RETURNING}`, [
              k,
              o.v,
              o.u === null ? null : String(o.u),
            ]);
            for (const row of rows) written.push({ k: o.k, row });
            break;
          }
          case 'bump': {
            const rows = await tx.unsafe<Row[]>(`UPDATE ${table} SET n = n * 2 + 1 WHERE k = $1::text::int ${RETURNING}`, [k]);
            for (const row of rows) written.push({ k: o.k, row });
            break;
          }
          case 'delete': {
            const rows = await tx.unsafe(`DELETE FROM ${table} WHERE k = $1::text::int RETURNING k`, [k]);
            if (rows.length > 0) written.push({ k: o.k, row: null });
            break;
          }
          case 'rekey': {
            const rows = await guarded(`UPDATE ${table} SET k = $2::text::int WHERE k = $1::text::int ${RETURNING}`, [k, String(o.to)]);
            for (const row of rows) written.push({ k: o.k, row: null }, { k: o.to, row });
            break;
          }
        }
      }
      if (written.length > 0) {
        const rows = await tx.unsafe<{ xid: string }[]>(`SELECT pg_current_xact_id()::text AS xid`);
        xid = rows[0]?.xid;
      }
    });
  } catch (error) {
    // A local transaction may lose a deadlock against an apply transaction: then it wrote nothing.
    const code = (error as { code?: string }).code;
    if (code === '40P01' || code === '40001') return [];
    throw error;
  }
  if (xid === undefined) return [];
  const ts = await commitMicros(target, xid);
  return written.map((w) => ({ ...w, ts }));
}

/** A committed transaction's commit timestamp in microseconds since the Unix epoch: its version's first half. */
async function commitMicros(target: TestNode, xid: string): Promise<bigint> {
  const rows = await target.sql.unsafe<{ us: string | null }[]>(
    `SELECT (extract(epoch FROM pg_xact_commit_timestamp(xid($1::text::xid8))) * 1000000)::bigint::text AS us`,
    [xid],
  );
  const us = rows[0]?.us;
  if (!us) throw new Error(`no commit timestamp for transaction ${xid} on ${target.name}`);
  return BigInt(us);
}

/** Turns a hang into a failure that names what hung. */
async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Last-update-wins over every write of every node: per key the highest (commit timestamp, node) decides; a row whose
 * `u` was taken by a write of another key with a higher version gives way (that write may have been overwritten,
 * deleted or evicted since: it took the value all the same).
 */
function expectedRows(writes: readonly Write[]): Row[] {
  const newer = (a: Write, b: Write) => a.ts > b.ts || (a.ts === b.ts && a.node > b.node);
  const winners = new Map<number, Write>();
  for (const w of writes) {
    const best = winners.get(w.k);
    if (!best || newer(w, best)) winners.set(w.k, w);
  }
  return [...winners.values()]
    .filter((w) => w.row?.u == null || !writes.some((o) => o.k !== w.k && o.row?.u === w.row?.u && newer(o, w)))
    .flatMap((w) => (w.row ? [w.row] : []))
    .sort((a, b) => Number(a.k) - Number(b.k))
    .map((r) => ({ k: r.k, v: r.v, n: r.n, u: r.u, big: r.big }));
}

async function rowsOf(target: TestNode, table: string): Promise<Row[]> {
  const rows = await target.sql.unsafe<Row[]>(`SELECT k::text AS k, v, n::text AS n, u::text AS u, md5(big) AS big FROM ${table} ORDER BY k`);
  return rows.map((r) => ({ k: r.k, v: r.v, n: r.n, u: r.u, big: r.big }));
}

class Runner {
  private runs = 0;
  private readonly running = new Set<string>();

  constructor(private readonly cluster: TestCluster) {}

  private async setRunning(name: string, run: boolean): Promise<void> {
    if (run === this.running.has(name)) return;
    if (run) {
      await this.cluster.startAgents([name]);
      this.running.add(name);
      // Stopping an agent whose streams are still being opened does not stop them (PeerReplicator.stop() closes
      // only a stream that exists), so a toggle waits until the agent streams from every peer.
      const agent = this.cluster.agents.get(name);
      await eventually(() => agent?.status().peers.every((p) => p.state === 'streaming') === true, {
        timeoutMs: 30_000,
        what: () => `agent ${name} to stream from every peer: ${JSON.stringify(agent?.status().peers.map((p) => [p.peer, p.state, p.lastError?.message]))}`,
      });
    } else {
      await withDeadline(this.cluster.stopAgent(name), 30_000, `agent ${name} to stop`);
      this.running.delete(name);
    }
  }

  async run(input: { running: readonly boolean[]; steps: readonly Step[] }): Promise<void> {
    const { cluster } = this;
    const table = `conv_${++this.runs}`;
    // Every agent is stopped while the run's table is created: streams pick it up from their next start.
    for (const n of cluster.nodes) await this.setRunning(n.name, false);
    for (const n of cluster.nodes) {
      await localDdl(n, `CREATE TABLE ${table} (k integer PRIMARY KEY, v text, n integer NOT NULL DEFAULT 0, u integer UNIQUE, big text); ALTER TABLE ${table} ALTER COLUMN big SET STORAGE EXTERNAL`);
      const added = await addTables(n.sql, [{ schema: 'public', name: table }]);
      assert.equal(added.added.length, 1, `${table} added on ${n.name}: ${JSON.stringify(added.refused)}`);
    }
    for (const [i, n] of cluster.nodes.entries()) await this.setRunning(n.name, input.running[i] === true);

    const writes: Write[] = [];
    for (const [index, s] of input.steps.entries()) {
      if (TRACE) process.stderr.write(`# ${table} step ${index}: ${JSON.stringify(s)}\n`);
      if (s.kind === 'sync') {
        for (const n of cluster.nodes) await this.setRunning(n.name, true);
        await barrier(cluster);
        continue;
      }
      const target = cluster.nodes[s.node] as TestNode;
      if (s.kind === 'toggle') {
        await this.setRunning(target.name, !this.running.has(target.name));
        continue;
      }
      for (const w of await withDeadline(write(target, table, s.ops), 60_000, `step ${index} on ${target.name}`)) writes.push({ ...w, node: target.name, step: index });
    }
    for (const n of cluster.nodes) await this.setRunning(n.name, true);
    await barrier(cluster);

    const actual = await Promise.all(cluster.nodes.map((n) => rowsOf(n, table)));
    const expected = expectedRows(writes);
    const report = async () =>
      `table ${table}\n` +
      cluster.nodes.map((n, i) => `${n.name}: ${JSON.stringify(actual[i])}`).join('\n') +
      `\nexpected (last-update-wins over all writes): ${JSON.stringify(expected)}\nwrites:\n` +
      writes.map((w) => `  step ${w.step} ${w.node} ts=${w.ts} k=${w.k} ${w.row ? JSON.stringify(w.row) : 'deleted'}`).join('\n') +
      `\ntombstones and conflicts:\n${await this.catalogReport(table)}`;
    for (const [i, n] of cluster.nodes.entries()) {
      if (JSON.stringify(actual[i]) !== JSON.stringify(actual[0])) assert.fail(`nodes diverged (${n.name} differs from n1)\n${await report()}`);
    }
    if (JSON.stringify(actual[0]) !== JSON.stringify(expected)) assert.fail(`nodes agree on a state that is not last-update-wins\n${await report()}`);
  }

  private async catalogReport(table: string): Promise<string> {
    const parts: string[] = [];
    for (const n of this.cluster.nodes) {
      const tombs = await n.sql.unsafe<{ pkey: string; ts: string | null; origin: string | null }[]>(
        `SELECT t.pkey, pg_xact_commit_timestamp(t.xmin)::text AS ts, (pg_xact_commit_timestamp_origin(t.xmin)).roident::text AS origin,
                t.ts::text AS own_ts, t.node AS own_node
           FROM pgmesh.tombstone t WHERE t.relid = $1::text::regclass ORDER BY 1`,
        [table],
      );
      const claims = await n.sql.unsafe<{ value: string; pkey: string; ts: string | null; node: string | null }[]>(
        `SELECT c.value, c.pkey, coalesce(c.ts, pg_xact_commit_timestamp(c.xmin))::text AS ts, c.node FROM pgmesh.unique_claim c
          WHERE c.relid = $1::text::regclass ORDER BY 1`,
        [table],
      );
      const conflicts = await n.sql.unsafe<{ c: string }[]>(
        `SELECT format('%s %s %s from %s -> %s (local %s %s %s, remote %s)', pkey, conflict_type, remote_row, peer, resolution, local_node, local_ts, local_row, remote_ts) AS c
           FROM pgmesh.conflict WHERE relation = $1 ORDER BY id`,
        [`public.${table}`],
      );
      parts.push(
        `${n.name} tombstones ${JSON.stringify(tombs)}\n${n.name} claims ${JSON.stringify(claims)}\n${conflicts.map((c) => `  ${n.name} ${c.c}`).join('\n')}`,
      );
    }
    return parts.join('\n');
  }
}

test(`randomized writes on 3 nodes with streams held and released converge to last-update-wins (${RUNS} runs)`, { timeout: 120_000 + RUNS * 60_000 }, async (t) => {
  const path = process.env.PGMESH_SEED_PATH;
  process.stderr.write(`# convergence-random: seed ${SEED}${path ? ` path ${path}` : ''}, ${RUNS} runs (replay with PGMESH_SEED=${SEED})\n`);
  await withCluster({ nodes: 3, schema: `${BARRIER_TABLE} ${BIG_TEXT}` }, async (cluster) => {
    const runner = new Runner(cluster);
    const started = Date.now();
    try {
      await fc.assert(
        fc.asyncProperty(scenario, (input) => runner.run(input)),
        { numRuns: RUNS, seed: SEED, ...(path ? { path } : {}), endOnFailure: process.env.PGMESH_SHRINK !== '1', includeErrorInReport: true },
      );
    } catch (error) {
      process.stderr.write(`# convergence-random failed: replay with PGMESH_SEED=${SEED}\n`);
      throw error;
    }
    t.diagnostic(`seed ${SEED}: ${RUNS} runs in ${Date.now() - started} ms`);
    // What the runs exercised: conflicts by type and resolution, over every node.
    const seen = new Map<string, number>();
    for (const n of cluster.nodes) {
      const rows = await n.sql.unsafe<{ kind: string; n: number }[]>(`SELECT conflict_type || '/' || resolution || CASE WHEN local_row ->> 'k' <> pkey::jsonb ->> 0 THEN ' (unique)' ELSE '' END AS kind,
                count(*)::int AS n FROM pgmesh.conflict GROUP BY 1`);
      for (const r of rows) seen.set(r.kind, (seen.get(r.kind) ?? 0) + r.n);
    }
    t.diagnostic(`conflicts: ${[...seen].sort().map(([kind, n]) => `${kind} ${n}`).join(', ')}`);
  });
});
