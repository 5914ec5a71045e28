/**
 * Helpers of the conflict tests (tests/cluster/conflicts.test.ts, unique-keys.test.ts): three nodes n1..n3, writes
 * with their commit timestamps, rows and versions on every node, the conflict records and counters they must show.
 */
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { listConflicts, listExceptions, type ConflictRecord, type ExceptionRecord } from '../../src/cluster/repair.ts';
import { eventually, type TestCluster, type TestNode } from './cluster.ts';
import { isoTimestampSql } from '../../src/core/pg-time.ts';

export type Node = 'n1' | 'n2' | 'n3';
export type Row = Record<string, unknown> | null;

export interface Version {
  readonly ts: string | null;
  readonly node: string | null;
}

/** The parts of a conflict record a scenario predicts exactly. */
export interface Conflict {
  readonly peer: string;
  readonly relation: string;
  readonly key: string;
  readonly type: string;
  readonly resolution: string;
  readonly local: Version & { readonly row: unknown };
  readonly remote: Version & { readonly row: unknown };
}

export type PerNode<T> = Record<Node, T>;

// ---- helpers ----

/** Stops every agent (so the scenario's counters start at zero), then starts these. */
export async function restartAgents(cluster: TestCluster, running: readonly Node[]): Promise<void> {
  await Promise.all(cluster.nodes.map((node) => cluster.stopAgent(node.name)));
  await cluster.startAgents(running);
}

/** Runs the statements in one transaction on a node; returns the commit timestamp as the servers print it. */
export async function commit(node: TestNode, ...statements: string[]): Promise<string> {
  const xid = await node.sql.begin(async (tx) => {
    for (const statement of statements) await tx.unsafe(statement);
    const rows = await tx.unsafe<{ xid: string }[]>(`SELECT xid(pg_current_xact_id())::text AS xid`);
    return rows[0]?.xid ?? '';
  });
  const rows = await node.sql.unsafe<{ ts: string | null }[]>(`SELECT ${isoTimestampSql('pg_xact_commit_timestamp($1::text::xid)')} AS ts`, [xid]);
  const ts = rows[0]?.ts;
  assert.ok(ts, `commit timestamp of transaction ${xid} on ${node.name}`);
  return ts;
}

export async function rowOf(node: TestNode, table: string, id: number): Promise<Row> {
  const rows = await node.sql.unsafe<{ r: string }[]>(`SELECT to_jsonb(t)::text AS r FROM ${table} t WHERE id = $1::int`, [id]);
  return rows[0] ? (JSON.parse(rows[0].r) as Row) : null;
}

export async function rowsOn(cluster: TestCluster, table: string, id: number): Promise<PerNode<Row>> {
  return {
    n1: await rowOf(cluster.node('n1'), table, id),
    n2: await rowOf(cluster.node('n2'), table, id),
    n3: await rowOf(cluster.node('n3'), table, id),
  };
}

export async function waitRow(node: TestNode, table: string, id: number, expected: Row): Promise<void> {
  let last: Row = null;
  await eventually(
    async () => {
      last = await rowOf(node, table, id);
      return isDeepStrictEqual(last, expected);
    },
    { timeoutMs: 20_000, what: () => `${table} ${id} on ${node.name} to be ${JSON.stringify(expected)} (is ${JSON.stringify(last)})` },
  );
}

/** The version (commit timestamp, node) of a live row, as the apply statements read it. */
export async function rowVersion(node: TestNode, table: string, id: number): Promise<Version | null> {
  const rows = await node.sql.unsafe<{ ts: string; node: string }[]>(
    `SELECT ${isoTimestampSql('v.ts')} AS ts, v.node FROM ${table} x CROSS JOIN LATERAL pgmesh.row_version_keyed($1::text::regclass, jsonb_build_array(x.id)::text, x.xmin, $2) v
      WHERE x.id = $3::int`,
    [table, node.name, id],
  );
  return rows[0] ? { ts: rows[0].ts, node: rows[0].node } : null;
}

/** The version a delete (or an eviction: the evicted row's own) left behind in its tombstone. */
export async function tombstoneVersion(node: TestNode, table: string, id: number): Promise<Version | null> {
  const rows = await node.sql.unsafe<{ ts: string; node: string }[]>(
    `SELECT ${isoTimestampSql('v.ts')} AS ts, v.node FROM pgmesh.tombstone t CROSS JOIN LATERAL pgmesh.tombstone_version(t.xmin, t.ts, t.node, $2) v
      WHERE t.relid = $1::text::regclass AND t.pkey = jsonb_build_array($3::int)::text`,
    [table, node.name, id],
  );
  return rows[0] ? { ts: rows[0].ts, node: rows[0].node } : null;
}

export async function maxId(node: TestNode, table: 'conflict' | 'exception'): Promise<number> {
  const rows = await node.sql.unsafe<{ id: string }[]>(`SELECT coalesce(max(id), 0)::text AS id FROM pgmesh.${table}`);
  return Number(rows[0]?.id ?? 0);
}

export interface Baseline {
  readonly conflict: PerNode<number>;
  readonly exception: PerNode<number>;
}

export async function baseline(cluster: TestCluster): Promise<Baseline> {
  const of = async (table: 'conflict' | 'exception'): Promise<PerNode<number>> => ({
    n1: await maxId(cluster.node('n1'), table),
    n2: await maxId(cluster.node('n2'), table),
    n3: await maxId(cluster.node('n3'), table),
  });
  return { conflict: await of('conflict'), exception: await of('exception') };
}

export function shape(record: ConflictRecord): Conflict {
  return {
    peer: record.peer,
    relation: record.relation,
    key: record.key,
    type: record.type,
    resolution: record.resolution,
    local: { ts: record.local.ts, node: record.local.node, row: record.local.row },
    remote: { ts: record.remote.ts, node: record.remote.node, row: record.remote.row },
  };
}

export async function conflictsSince(cluster: TestCluster, since: Baseline): Promise<PerNode<Conflict[]>> {
  const on = async (name: Node) =>
    (await listConflicts(cluster.node(name).sql, { limit: 10_000 }))
      .filter((c) => c.id > since.conflict[name])
      .sort((a, b) => a.id - b.id)
      .map(shape);
  return { n1: await on('n1'), n2: await on('n2'), n3: await on('n3') };
}

/**
 * Waits until exactly these conflict records (in the order they were recorded on each node) are the new ones on
 * every node, then fails with a diff if they never are.
 */
export async function expectConflicts(cluster: TestCluster, since: Baseline, expected: PerNode<Conflict[]>): Promise<void> {
  let actual: PerNode<Conflict[]> | undefined;
  await eventually(
    async () => {
      actual = await conflictsSince(cluster, since);
      return isDeepStrictEqual(actual, expected);
    },
    { timeoutMs: 20_000, what: 'the conflict records' },
  ).catch(() => undefined);
  assert.deepEqual(actual, expected);
}

export type Counters = Record<string, Record<string, Record<string, number>>>;

/** Conflict counters of the running agents: node -> peer -> type -> count (peers without conflicts left out). */
export function counters(cluster: TestCluster): Counters {
  const out: Counters = {};
  for (const [name, agent] of cluster.agents) {
    for (const peer of agent.status().peers) {
      const nonZero = Object.fromEntries(Object.entries(peer.conflicts).filter(([, n]) => n > 0));
      if (Object.keys(nonZero).length > 0) (out[name] ??= {})[peer.peer] = nonZero;
    }
  }
  return out;
}

/** The counters the agents must show for these conflict records (agents started at the scenario's start). */
export function countersOf(records: PerNode<Conflict[]>): Counters {
  const out: Counters = {};
  for (const [node, list] of Object.entries(records)) {
    for (const c of list) {
      const byType = ((out[node] ??= {})[c.peer] ??= {});
      byType[c.type] = (byType[c.type] ?? 0) + 1;
    }
  }
  return out;
}

export async function expectCounters(cluster: TestCluster, expected: Counters): Promise<void> {
  let actual: Counters = {};
  await eventually(
    () => {
      actual = counters(cluster);
      return isDeepStrictEqual(actual, expected);
    },
    { timeoutMs: 10_000, what: 'the conflict counters' },
  ).catch(() => undefined);
  assert.deepEqual(actual, expected);
}

export async function exceptionsSince(node: TestNode, since: Baseline): Promise<ExceptionRecord[]> {
  return (await listExceptions(node.sql, { limit: 100_000 })).filter((e) => e.id > since.exception[node.name as Node]);
}

export async function waitExceptions(node: TestNode, since: Baseline, count: number): Promise<ExceptionRecord[]> {
  let found: ExceptionRecord[] = [];
  await eventually(
    async () => {
      found = await exceptionsSince(node, since);
      return found.length >= count;
    },
    { timeoutMs: 20_000, what: () => `${count} exception(s) on ${node.name} (found ${found.length})` },
  );
  assert.equal(found.length, count, `exceptions on ${node.name}: ${JSON.stringify(found)}`);
  return found;
}

export function peerStatus(cluster: TestCluster, node: Node, peer: Node) {
  const status = cluster.agents.get(node)?.status().peers.find((p) => p.peer === peer);
  assert.ok(status, `agent ${node} runs and streams from ${peer}`);
  return status;
}

/**
 * Holds one inbound stream of a node (its agent does not stream from that peer) until releaseStream. Set it while the
 * node's agent is stopped: an agent reads it when a stream starts.
 */
export async function holdStream(node: TestNode, peer: string): Promise<void> {
  await node.sql.unsafe(`UPDATE pgmesh.apply_progress SET paused_at = now(), paused_reason = 'held by the test' WHERE peer = $1`, [peer]);
}

/** Lets a held stream go (as "pgmesh resume" does); the running agent picks it up within a second. */
export async function releaseStream(node: TestNode, peer: string): Promise<void> {
  await node.sql.unsafe(`UPDATE pgmesh.apply_progress SET paused_at = NULL, paused_reason = NULL WHERE peer = $1`, [peer]);
}
