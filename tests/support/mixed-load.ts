/**
 * A write load for membership tests: bank transfers (a delta balance and an insert into a transfer log, one
 * transaction each) mixed with inserts, updates and deletes of shared keys of `items`, from every writing node at
 * once. The set of writing nodes can grow while the load runs (a node that joined starts writing too).
 * What committed is read back from the databases (the transfer log), so a crash that cuts off a COMMIT is fine.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { BARRIER_TABLE, barrier } from './barrier.ts';
import { eventually, type TestCluster, type TestNode } from './cluster.ts';

export const ACCOUNTS = 20;
export const INITIAL_CENTS = 100_000;
const ITEM_KEYS = 60;

/** The tables and the transfer function, without rows: what a joining node must have before node add. */
export const MIXED_DDL = `
CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric NOT NULL);
CREATE TABLE transfer_log (id text PRIMARY KEY, from_id integer NOT NULL, to_id integer NOT NULL, cents integer NOT NULL);
CREATE TABLE items (id integer PRIMARY KEY, val text NOT NULL, n integer NOT NULL DEFAULT 0);
CREATE FUNCTION transfer(id text, from_id integer, to_id integer, cents integer) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  leg record;
BEGIN
  INSERT INTO transfer_log VALUES (id, from_id, to_id, cents);
  FOR leg IN SELECT * FROM (VALUES (from_id, -cents), (to_id, cents)) AS l(account, delta) ORDER BY account LOOP
    UPDATE accounts SET balance = balance + round(leg.delta / 100.0, 2) WHERE accounts.id = leg.account;
    IF NOT FOUND THEN RAISE EXCEPTION 'no account %', leg.account; END IF;
  END LOOP;
END
$fn$;
${BARRIER_TABLE}
`;

/** The schema with the cluster's first rows, for the nodes that create the cluster. */
export const MIXED_SCHEMA = `${MIXED_DDL}
INSERT INTO accounts (id, balance) SELECT g, ${INITIAL_CENTS / 100} FROM generate_series(1, ${ACCOUNTS}) g;
INSERT INTO items (id, val) SELECT g, 'seed ' || g FROM generate_series(1, ${ITEM_KEYS}) g WHERE g % 2 = 0;
`;

/** The balance is a delta column on every node: a transfer applied twice, or lost, shows in the balances. */
export async function declareDeltaBalances(cluster: TestCluster): Promise<void> {
  for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'accounts' }, ['balance']);
}

export interface MixedLoad {
  /** Transfers whose COMMIT was acknowledged. */
  readonly transfers: string[];
  /** Statements run per kind. */
  readonly counts: Record<string, number>;
  /** Adds a node to the writers. */
  addWriter(node: TestNode): void;
  /** Stops the writers of one node and waits for them. */
  stopWriter(node: TestNode): Promise<void>;
  /** Resolves once `n` more transfers have committed than when it was called. */
  progress(n: number, timeoutMs?: number): Promise<void>;
  /** Stops the writers and waits for them. */
  stop(): Promise<void>;
}

const random = (n: number) => Math.floor(Math.random() * n);

/** Errors a write can meet that are not failures: deadlocks against apply transactions, a server that went away. */
function retryable(error: unknown, crashes: boolean): boolean {
  const code = String((error as { code?: unknown }).code ?? '');
  if (code === '40P01' || code === '40001') return true;
  return crashes && (/^(08|57P)/.test(code) || ['CONNECTION_CLOSED', 'CONNECTION_DESTROYED', 'CONNECTION_ENDED', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE'].includes(code));
}

export function startMixedLoad(nodes: readonly TestNode[], options: { clientsPerNode?: number; crashes?: boolean; pauseMs?: number } = {}): MixedLoad {
  let stopped = false;
  const transfers: string[] = [];
  const counts: Record<string, number> = {};
  const loops: Promise<void>[] = [];
  const byNode = new Map<string, Promise<void>[]>();
  const retired = new Set<string>();
  const crashes = options.crashes ?? false;
  const step = async (node: TestNode): Promise<void> => {
    const kind = random(100);
    const key = 1 + random(ITEM_KEYS);
    if (kind < 50) {
      const from = 1 + random(ACCOUNTS);
      let to = 1 + random(ACCOUNTS - 1);
      if (to >= from) to++;
      const id = `${node.name}-${randomUUID()}`;
      await node.sql.unsafe(`SELECT transfer($1, $2::text::int, $3::text::int, $4::text::int)`, [id, String(from), String(to), String(1 + random(10_000))]);
      transfers.push(id);
      counts.transfer = (counts.transfer ?? 0) + 1;
    } else if (kind < 70) {
      await node.sql.unsafe(`INSERT INTO items (id, val) VALUES ($1::text::int, $2) ON CONFLICT (id) DO UPDATE SET val = EXCLUDED.val`, [String(key), `${node.name} ${randomUUID()}`]);
      counts.upsert = (counts.upsert ?? 0) + 1;
    } else if (kind < 85) {
      await node.sql.unsafe(`UPDATE items SET n = n + 1, val = $2 WHERE id = $1::text::int`, [String(key), `${node.name} update`]);
      counts.update = (counts.update ?? 0) + 1;
    } else {
      await node.sql.unsafe(`DELETE FROM items WHERE id = $1::text::int`, [String(key)]);
      counts.delete = (counts.delete ?? 0) + 1;
    }
  };
  let failure: unknown;
  const writer = async (node: TestNode): Promise<void> => {
    while (!stopped && !retired.has(node.name)) {
      try {
        await step(node);
        // Pacing: the nodes' agents share the machine's cores with the writers and must keep up.
        await delay(options.pauseMs ?? 5);
      } catch (error) {
        if (!retryable(error, crashes)) {
          // Kept for stop(), which fails with it; the other writers stop too.
          failure ??= new Error(`a write on ${node.name} failed: ${(error as Error).message}`, { cause: error });
          stopped = true;
          return;
        }
        counts.retried = (counts.retried ?? 0) + 1;
        await delay(50); // a crashed server: give it time to come back (the next write checks again)
      }
    }
  };
  const addWriter = (node: TestNode) => {
    for (let i = 0; i < (options.clientsPerNode ?? 2); i++) {
      const loop = writer(node);
      loops.push(loop);
      byNode.set(node.name, [...(byNode.get(node.name) ?? []), loop]);
    }
  };
  for (const node of nodes) addWriter(node);
  return {
    transfers,
    counts,
    addWriter,
    async stopWriter(node) {
      retired.add(node.name);
      await Promise.all(byNode.get(node.name) ?? []);
    },
    async progress(n, timeoutMs = 120_000) {
      const target = transfers.length + n;
      await eventually(() => transfers.length >= target, {
        timeoutMs,
        what: `${n} more transfers (at ${transfers.length} of ${target})`,
        abort: () => (failure ? String(failure) : undefined),
      });
    },
    async stop() {
      stopped = true;
      await Promise.all(loops);
      if (failure) throw failure;
    },
  };
}

/**
 * After the load: every node holds the same rows in every table, every acknowledged transfer is logged, every
 * balance is the initial one plus each logged transfer exactly once, and nothing went to the exception table.
 */
export async function assertMixedConverged(cluster: TestCluster, load: MixedLoad): Promise<void> {
  await barrier(cluster, 120_000);
  for (const table of ['accounts', 'transfer_log', 'items']) {
    const hashes = await Promise.all(cluster.nodes.map(async (n) => `${n.name}=${await cluster.tableHash(n, table)}`));
    assert.equal(new Set(hashes.map((h) => h.split('=')[1])).size, 1, `${table} hash-equal on every node: ${hashes.join(' ')}`);
  }
  const first = cluster.nodes[0];
  assert.ok(first);
  const log = await first.sql.unsafe<{ id: string; from_id: number; to_id: number; cents: number }[]>(`SELECT id, from_id, to_id, cents FROM transfer_log`);
  const logged = new Set(log.map((l) => l.id));
  assert.deepEqual(load.transfers.filter((id) => !logged.has(id)), [], 'every acknowledged transfer is in the log');
  const expected = new Map<number, bigint>();
  for (let id = 1; id <= ACCOUNTS; id++) expected.set(id, BigInt(INITIAL_CENTS));
  for (const l of log) {
    expected.set(Number(l.from_id), (expected.get(Number(l.from_id)) ?? 0n) - BigInt(l.cents));
    expected.set(Number(l.to_id), (expected.get(Number(l.to_id)) ?? 0n) + BigInt(l.cents));
  }
  for (const node of cluster.nodes) {
    const rows = await node.sql.unsafe<{ id: number; cents: string }[]>(`SELECT id, (balance * 100)::bigint::text AS cents FROM accounts ORDER BY id`);
    assert.deepEqual(new Map(rows.map((r) => [Number(r.id), BigInt(r.cents)])), expected, `balances on ${node.name}: initial plus every logged transfer once`);
    const exceptions = await node.sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM pgmesh.exception`);
    assert.equal(exceptions[0]?.n, '0', `no exception records on ${node.name}`);
  }
}

export interface TotalReaders {
  /** Reads checked, per node. */
  readonly checks: Record<string, number>;
  /** Totals that were not the cluster's (first 100). */
  readonly violations: { node: string; totalCents: string }[];
  /** Starts reading on one more node (a node that joined: from when it is a member). */
  addReader(node: TestNode): void;
  /** Stops every reader and waits for them. */
  stop(): Promise<void>;
}

/**
 * A reader on every node checking, one statement (one snapshot) at a time, that the sum of all balances is the
 * cluster's total: a transfer is seen whole or not at all, whether local or applied from a peer.
 */
export function startTotalReaders(nodes: readonly TestNode[]): TotalReaders {
  const expected = String(ACCOUNTS * INITIAL_CENTS);
  const checks: Record<string, number> = {};
  const violations: { node: string; totalCents: string }[] = [];
  let stopped = false;
  const loops: Promise<void>[] = [];
  const reader = async (node: TestNode): Promise<void> => {
    while (!stopped) {
      const rows = await node.sql.unsafe<{ cents: string }[]>(`SELECT (sum(balance) * 100)::bigint::text AS cents FROM accounts`);
      checks[node.name] = (checks[node.name] ?? 0) + 1;
      const total = rows[0]?.cents ?? 'none';
      if (total !== expected && violations.length < 100) violations.push({ node: node.name, totalCents: total });
      await delay(20); // pacing only: leave CPU to the writers and agents
    }
  };
  const addReader = (node: TestNode) => {
    loops.push(reader(node));
  };
  for (const node of nodes) addReader(node);
  return {
    checks,
    violations,
    addReader,
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}
