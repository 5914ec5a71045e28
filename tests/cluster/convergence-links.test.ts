/**
 * Topology: 3 nodes, full mesh, every agent a real process whose connection to each peer goes through a TCP proxy of
 * its own (tests/support/link-proxy.ts), so each of the 6 directed links is held, released and cut on its own.
 * Scenario (randomized, fast-check): transactions of upserts, updates that leave an out-of-line (TOAST) value
 * unchanged, updates of that value, delta-column credits, deletes, TRUNCATEs and primary-key changes on a few shared keys, from
 * every node, while links are held, released and cut at random and agents are killed with SIGKILL and restarted.
 * Two tables: one with a delta column (REPLICA IDENTITY FULL) and one without. After the last step every link is
 * released, every agent runs, a causal barrier passes, and then every node holds the same rows (out-of-line values
 * and delta balances included) and no change went to the exception table.
 * Without the code under test: links faulted one at a time deliver changes in orders that whole-agent stops never
 * produce (n1 sees n3's update before n2's insert, n2 the other way round); an update whose row is missing, or that
 * meets another version, loses or keeps the wrong out-of-line value; a killed agent applies a transaction twice.
 *
 * Each run uses its own keys in the same tables. PGMESH_LINK_RUNS (default 4) sets the runs; PGMESH_SEED (and
 * PGMESH_SEED_PATH) replay one; PGMESH_TRACE=1 prints every step. `npm run test:convergence-long` runs many more.
 * TRUNCATE is drawn too: it empties the whole table, the earlier runs' keys included, which is fine (each run
 * compares its own keys, and an empty earlier key range compares equal).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { LinkMesh } from '../support/link-proxy.ts';
import { integerFromEnv } from '../support/env.ts';

const KEYS = 5;
const TRACE = process.env.PGMESH_TRACE === '1';
const RUNS = integerFromEnv('PGMESH_LINK_RUNS') ?? 4;
const SEED = integerFromEnv('PGMESH_SEED') ?? (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) | 0;
const TABLES = ['lk_plain', 'lk_delta'] as const;
type Table = (typeof TABLES)[number];

const SCHEMA = `${BARRIER_TABLE}
CREATE TABLE lk_plain (k integer PRIMARY KEY, v text, big text);
CREATE TABLE lk_delta (k integer PRIMARY KEY, v text, big text, bal bigint NOT NULL DEFAULT 0);
-- EXTERNAL: stored out of line, uncompressed, whenever a row is over ~2 kB: every big value below is.
ALTER TABLE lk_plain ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE lk_delta ALTER COLUMN big SET STORAGE EXTERNAL;`;

type Op =
  | { readonly kind: 'upsert'; readonly table: Table; readonly k: number; readonly v: string }
  /** Leaves the out-of-line value as it is: pgoutput sends it as "unchanged". */
  | { readonly kind: 'update'; readonly table: Table; readonly k: number; readonly v: string }
  | { readonly kind: 'setbig'; readonly table: Table; readonly k: number }
  | { readonly kind: 'credit'; readonly k: number; readonly amount: number }
  | { readonly kind: 'delete'; readonly table: Table; readonly k: number }
  | { readonly kind: 'rekey'; readonly table: Table; readonly k: number; readonly to: number }
  /** Every row of the table, other runs' keys included. */
  | { readonly kind: 'truncate'; readonly table: Table };

type Step =
  | { readonly kind: 'write'; readonly node: number; readonly ops: readonly Op[] }
  | { readonly kind: 'hold' | 'release' | 'cut'; readonly peer: number; readonly local: number }
  | { readonly kind: 'kill'; readonly node: number }
  | { readonly kind: 'sync' };

const key = fc.integer({ min: 1, max: KEYS });
const table = fc.constantFrom(...TABLES);
const text = fc.string({ minLength: 1, maxLength: 4 });
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('upsert' as const), table, k: key, v: text }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('update' as const), table, k: key, v: text }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('setbig' as const), table, k: key }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('credit' as const), k: key, amount: fc.integer({ min: -50, max: 50 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), table, k: key }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('rekey' as const), table, k: key, to: key }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), table }) },
);
const node = fc.integer({ min: 0, max: 2 });
const link = fc
  .tuple(node, fc.integer({ min: 1, max: 2 }))
  .map(([peer, offset]) => ({ peer, local: (peer + offset) % 3 }));
const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('write' as const), node, ops: fc.array(op, { minLength: 1, maxLength: 3 }) }) },
  { weight: 2, arbitrary: link.map((l) => ({ kind: 'hold' as const, ...l })) },
  { weight: 2, arbitrary: link.map((l) => ({ kind: 'release' as const, ...l })) },
  { weight: 1, arbitrary: link.map((l) => ({ kind: 'cut' as const, ...l })) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('kill' as const), node }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'sync' as const }) },
);
const scenario = fc.array(step, { minLength: 1, maxLength: 30 });

/** ~3 kB of random hex: over the out-of-line threshold. Random, so two versions of it never compare equal by chance. */
function bigValue(): string {
  return randomBytes(1500).toString('hex');
}

/** One write step as one local transaction; a transaction that loses a deadlock or meets a taken key writes nothing. */
async function write(target: TestNode, base: number, ops: readonly Op[]): Promise<void> {
  try {
    await target.sql.begin(async (tx) => {
      for (const o of ops) {
        if (o.kind === 'truncate') {
          await tx.unsafe(`TRUNCATE ${o.table}`);
          continue;
        }
        const k = String(base + o.k);
        switch (o.kind) {
          case 'upsert':
            await tx.unsafe(`INSERT INTO ${o.table} AS t (k, v, big) VALUES ($1::text::int, $2, $3) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v`, [k, o.v, bigValue()]);
            break;
          case 'update':
            await tx.unsafe(`UPDATE ${o.table} SET v = $2 WHERE k = $1::text::int`, [k, o.v]);
            break;
          case 'setbig':
            await tx.unsafe(`UPDATE ${o.table} SET big = $2 WHERE k = $1::text::int`, [k, bigValue()]);
            break;
          case 'credit':
            await tx.unsafe(`UPDATE lk_delta SET bal = bal + $2::text::int WHERE k = $1::text::int`, [k, String(o.amount)]);
            break;
          case 'delete':
            await tx.unsafe(`DELETE FROM ${o.table} WHERE k = $1::text::int`, [k]);
            break;
          case 'rekey':
            await tx
              .savepoint((sp) => sp.unsafe(`UPDATE ${o.table} SET k = $2::text::int WHERE k = $1::text::int`, [k, String(base + o.to)]))
              .catch((error: { code?: string }) => {
                if (error.code !== '23505') throw error;
              });
            break;
        }
      }
    });
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === '40P01' || code === '40001') return;
    throw error;
  }
}

interface RowDigest {
  readonly k: number;
  readonly v: string | null;
  readonly big: string | null;
  readonly bal: string | null;
}

async function rowsOf(target: TestNode, name: Table, base: number): Promise<RowDigest[]> {
  const bal = name === 'lk_delta' ? 'bal::text' : 'NULL::text';
  return target.sql.unsafe<RowDigest[]>(
    `SELECT k, v, md5(big) || ':' || length(big) AS big, ${bal} AS bal FROM ${name} WHERE k > $1::text::int AND k <= $2::text::int ORDER BY k`,
    [String(base), String(base + KEYS)],
  );
}

class Runner {
  private runs = 0;

  constructor(
    private readonly cluster: TestCluster,
    private readonly mesh: LinkMesh,
  ) {}

  startAgent(name: string): void {
    this.cluster.startAgentProcess(name, this.mesh.agentEnv(name));
  }

  private agentsRunning(): string | undefined {
    const dead = [...this.cluster.processes.values()].filter((a) => !a.running);
    return dead.length > 0 ? `agent ${dead.map((a) => a.node).join(', ')} exited` : undefined;
  }

  async sync(): Promise<void> {
    this.mesh.releaseAll();
    const reason = this.agentsRunning();
    if (reason) throw new Error(reason);
    await barrier(this.cluster, 120_000);
  }

  async run(steps: readonly Step[]): Promise<void> {
    const { cluster, mesh } = this;
    const base = ++this.runs * 100;
    for (const [index, s] of steps.entries()) {
      if (TRACE) process.stderr.write(`# run ${this.runs} step ${index}: ${JSON.stringify(s)}\n`);
      switch (s.kind) {
        case 'write':
          await write(cluster.nodes[s.node] as TestNode, base, s.ops);
          break;
        case 'hold':
        case 'release':
        case 'cut': {
          const proxy = mesh.link(`n${s.peer + 1}`, `n${s.local + 1}`);
          if (s.kind === 'hold') proxy.hold();
          else if (s.kind === 'release') proxy.release();
          else proxy.cut();
          break;
        }
        case 'kill': {
          const name = `n${s.node + 1}`;
          await cluster.processes.get(name)?.kill('SIGKILL');
          this.startAgent(name);
          break;
        }
        case 'sync':
          await this.sync();
          break;
      }
    }
    await this.sync();
    for (const name of TABLES) {
      const actual = await Promise.all(cluster.nodes.map((n) => rowsOf(n, name, base)));
      for (const [i, n] of cluster.nodes.entries()) {
        if (JSON.stringify(actual[i]) !== JSON.stringify(actual[0])) {
          assert.fail(`${name} diverged (${n.name} differs from n1), keys ${base + 1}-${base + KEYS}:\n${cluster.nodes.map((m, j) => `${m.name}: ${JSON.stringify(actual[j])}`).join('\n')}`);
        }
      }
    }
    for (const n of cluster.nodes) {
      const open = await n.sql.unsafe<{ e: string }[]>(`SELECT format('%s %s %s: %s', peer, relation, pkey, error) AS e FROM pgmesh.exception`);
      assert.deepEqual(open.map((r) => r.e), [], `no change went to ${n.name}'s exception table`);
    }
  }
}

test(`randomized writes with out-of-line values and delta columns converge while single links are held, cut, and agents killed (${RUNS} runs)`, { timeout: 180_000 + RUNS * 120_000 }, async (t) => {
  const path = process.env.PGMESH_SEED_PATH;
  process.stderr.write(`# convergence-links: seed ${SEED}${path ? ` path ${path}` : ''}, ${RUNS} runs (replay with PGMESH_SEED=${SEED})\n`);
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    for (const n of cluster.nodes) await setDeltaColumns(n.sql, { schema: 'public', name: 'lk_delta' }, ['bal']);
    const mesh = await LinkMesh.start(cluster);
    try {
      const runner = new Runner(cluster, mesh);
      for (const n of cluster.nodes) runner.startAgent(n.name);
      await eventually(async () => (await runner.sync().then(() => true)), { timeoutMs: 120_000, what: 'the agents to start streaming' });
      const started = Date.now();
      try {
        await fc.assert(fc.asyncProperty(scenario, (steps) => runner.run(steps)), {
          numRuns: RUNS,
          seed: SEED,
          ...(path ? { path } : {}),
          endOnFailure: true,
          includeErrorInReport: true,
        });
      } catch (error) {
        process.stderr.write(`# convergence-links failed: replay with PGMESH_SEED=${SEED}\n`);
        throw error;
      }
      t.diagnostic(`seed ${SEED}: ${RUNS} runs in ${Date.now() - started} ms`);
    } finally {
      await mesh.close();
    }
  });
});
