/**
 * A fresh publisher/subscriber pair of embedded servers (default EmbeddedServer settings, fsync on) with the bench
 * table, linked either by pgmesh or by a native subscription, with the consumer stopped until start() is called.
 *
 * - native: CREATE SUBSCRIPTION ... WITH (enabled = false) creates the slot now (so the workload is retained) and
 *   starts no apply worker; start() is ALTER SUBSCRIPTION ... ENABLE.
 * - pgmesh: a 2-node cluster (createCluster links both directions); start() starts n2's agent in this process, so
 *   process.cpuUsage() over the apply window is the agent's CPU. n1's agent is never started: only n1 -> n2 matters.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import postgres from 'postgres';
import { Agent } from '../../src/agent/agent.ts';
import { readLinkNames } from '../../src/cluster/link-names.ts';
import { createCluster } from '../../src/cluster/cluster-ops.ts';
import { loadConfig } from '../../src/config/config.ts';
import type { Logger } from '../../src/core/logger.ts';
import { EmbeddedServer } from '../../src/embedded/embedded-server.ts';
import type { PgMajor } from '../../src/embedded/postgres-binaries.ts';
import { quoteLiteral } from '../../src/pg/quote.ts';
import { MARKER_TABLE, SCHEMA, TABLE, largeTableSql, preloadSql } from './workloads.ts';
import { makeServerTempDir } from '../../src/embedded/server-user.ts';

export type Sql = postgres.Sql<Record<string, never>>;
export type System = 'pgmesh' | 'native';

export interface Consumer {
  /** Starts applying what the publisher has retained for the subscriber. */
  start(): Promise<void>;
  /** A reason when the consumer has failed (so the bench stops waiting), else undefined. */
  failure(): Promise<string | undefined>;
  stop(): Promise<void>;
}

export interface ServerPair {
  readonly system: System;
  readonly publisher: EmbeddedServer;
  readonly subscriber: EmbeddedServer;
  /** Client pools for the bench's own statements (not used by the consumer). */
  readonly pub: Sql;
  readonly sub: Sql;
  readonly consumer: Consumer;
  destroy(): Promise<void>;
}

/** Servers and folders of every pair still alive, so that an interrupted bench leaves nothing behind. */
const live = new Set<EmbeddedServer>();
const liveDirs = new Set<string>();

export async function killLiveServers(): Promise<void> {
  await Promise.all([...live].map((s) => s.kill().catch(() => undefined)));
  live.clear();
  if (!process.env.PGMESH_KEEP_BENCH_DIRS) for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
  liveDirs.clear();
}

export function client(server: EmbeddedServer, parameters: Record<string, string> = {}): Sql {
  return postgres(server.dsn, {
    max: 1,
    onnotice: () => undefined,
    fetch_types: false,
    idle_timeout: 0,
    connection: { application_name: 'pgmesh bench', ...parameters },
  }) as unknown as Sql;
}

/** Keeps the agent's last error, so a failing apply stops the bench instead of running into the deadline. */
class RecordingLogger implements Logger {
  constructor(private readonly errors: string[]) {}
  debug(): void {}
  info(): void {}
  warn(obj: object, msg?: string): void {
    this.errors.push(`warn: ${msg ?? ''} ${JSON.stringify(obj)}`);
  }
  error(obj: object, msg?: string): void {
    this.errors.push(`error: ${msg ?? ''} ${JSON.stringify(obj)}`);
  }
  child(): Logger {
    return this;
  }
}

export async function createPair(options: {
  system: System;
  major: PgMajor;
  preloadRows: number;
  /** Rows of `--preload` (largeTableSql), besides the workload's own. */
  largeTableRows: number;
  pgmeshTuning?: Record<string, unknown>;
}): Promise<ServerPair> {
  const baseDir = makeServerTempDir(`pgmesh-bench-${options.system}-`);
  liveDirs.add(baseDir);
  const password = `pw-${Math.random().toString(36).slice(2, 10)}`;
  const servers: EmbeddedServer[] = [];
  const pools: Sql[] = [];
  let consumer: Consumer | undefined;
  const destroy = async (): Promise<void> => {
    // LIFO: the consumer, then our connections, then the servers.
    await consumer?.stop().catch(() => undefined);
    await Promise.all(pools.map((p) => p.end({ timeout: 1 }).catch(() => undefined)));
    await Promise.all(
      servers.map(async (s) => {
        await s.stop().catch(() => s.kill());
        live.delete(s);
      }),
    );
    if (!process.env.PGMESH_KEEP_BENCH_DIRS) rmSync(baseDir, { recursive: true, force: true });
    liveDirs.delete(baseDir);
  };
  try {
    for (const name of ['n1', 'n2']) {
      const server = await EmbeddedServer.create({ name, baseDir, major: options.major, password });
      servers.push(server);
    }
    for (const server of servers) live.add(server);
    await Promise.all(servers.map((s) => s.start()));
    const [publisher, subscriber] = servers as [EmbeddedServer, EmbeddedServer];
    const pub = client(publisher);
    const sub = client(subscriber);
    pools.push(pub, sub);
    for (const sql of [pub, sub]) await sql.unsafe(SCHEMA).simple();
    const loads = [options.preloadRows > 0 ? preloadSql(options.preloadRows) : '', options.largeTableRows > 0 ? largeTableSql(options.largeTableRows) : ''].filter(Boolean);
    if (loads.length > 0) await preload(pub, loads);
    const link = options.system === 'native' ? await linkNative(pub, sub, publisher) : await linkPgmesh(publisher, subscriber, baseDir, options.pgmeshTuning);
    consumer = link.consumer;
    if (loads.length > 0) await preload(sub, loads, link.origin, subscriber);
    return { system: options.system, publisher, subscriber, pub, sub, consumer, destroy };
  } catch (error) {
    await destroy();
    throw error;
  }
}

/**
 * Loads the same rows on a node. On the subscriber they are written under the link's replication origin, so they
 * look like what they are in the steady state being modelled: rows that came from the publisher earlier. (Written
 * as local rows, pgmesh would rightly see every remote update of them, seconds later, as an update_origin_differs
 * conflict and log it, and PostgreSQL 18's native apply would log the same conflict: a different benchmark.)
 * The origin's progress does not move: only pg_replication_origin_xact_setup would set it.
 */
async function preload(sql: Sql, loads: readonly string[], origin?: string, server?: EmbeddedServer): Promise<void> {
  if (origin && server) {
    // Its own connection: the origin stays busy in a session until that session ends, and the consumer needs it.
    const session = client(server);
    try {
      await session.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup(${quoteLiteral(origin)})`);
      for (const load of loads) await session.unsafe(load);
    } finally {
      await session.end({ timeout: 1 });
    }
  } else {
    for (const load of loads) await sql.unsafe(load);
  }
  // Hint bits and the visibility map set now, not by the first statements of the measured apply.
  await sql.unsafe(`VACUUM (ANALYZE) ${TABLE}`);
}

const NATIVE_SUBSCRIPTION = 'bench_sub';

interface Link {
  readonly consumer: Consumer;
  /** The replication origin on the subscriber that tracks the publisher's stream. */
  readonly origin: string;
}

async function linkNative(pub: Sql, sub: Sql, publisher: EmbeddedServer): Promise<Link> {
  await pub.unsafe(`CREATE PUBLICATION bench_pub FOR TABLE ${TABLE}, ${MARKER_TABLE}`);
  const conninfo = `host=127.0.0.1 port=${publisher.port} dbname=postgres user=postgres password=${publisher.password}`;
  // The same kind of stream and apply as pgmesh: whole transactions decoded on the publisher and sent at commit
  // (streaming off; PostgreSQL 18 would default to parallel), text format, only the publisher's own changes,
  // asynchronous commit of applied transactions (the native default, stated so it is visible).
  await sub.unsafe(
    `CREATE SUBSCRIPTION ${NATIVE_SUBSCRIPTION} CONNECTION ${quoteLiteral(conninfo)} PUBLICATION bench_pub
       WITH (enabled = false, copy_data = false, streaming = off, binary = false, origin = none, synchronous_commit = off)`,
  );
  const rows = await sub.unsafe<{ origin: string }[]>(
    `SELECT 'pg_' || oid::text AS origin FROM pg_catalog.pg_subscription WHERE subname = ${quoteLiteral(NATIVE_SUBSCRIPTION)}`,
  );
  const origin = rows[0]?.origin;
  if (!origin) throw new Error(`subscription ${NATIVE_SUBSCRIPTION} was not created`);
  const consumer: Consumer = {
    start: async () => {
      await sub.unsafe(`ALTER SUBSCRIPTION ${NATIVE_SUBSCRIPTION} ENABLE`);
    },
    failure: async () => {
      const rows = await sub.unsafe<{ errors: string }[]>(
        `SELECT apply_error_count::text AS errors FROM pg_catalog.pg_stat_subscription_stats WHERE subname = ${quoteLiteral(NATIVE_SUBSCRIPTION)}`,
      );
      const errors = Number(rows[0]?.errors ?? 0);
      return errors > 0 ? `native apply worker reported ${errors} error(s); see the subscriber's server log` : undefined;
    },
    stop: async () => {
      await sub.unsafe(`ALTER SUBSCRIPTION ${NATIVE_SUBSCRIPTION} DISABLE`).catch(() => undefined);
    },
  };
  return { consumer, origin };
}

async function linkPgmesh(publisher: EmbeddedServer, subscriber: EmbeddedServer, baseDir: string, tuning: Record<string, unknown> = {}): Promise<Link> {
  // Through a file and loadConfig, as `pgmesh start` does: default tuning (unless the bench was told otherwise), validated.
  const configPath = join(baseDir, 'cluster.json');
  const nodes = [
    { name: 'n1', dsn: publisher.dsn },
    { name: 'n2', dsn: subscriber.dsn },
  ];
  writeFileSync(configPath, JSON.stringify({ maxNodes: 8, logLevel: 'silent', nodes, tuning }, null, 2), { mode: 0o600 });
  const config = loadConfig({ file: configPath });
  const errors: string[] = [];
  const logger = new RecordingLogger(errors);
  await createCluster(config, logger);
  let agent: Agent | undefined;
  const consumer: Consumer = {
    start: async () => {
      agent = await Agent.start(config, 'n2', logger);
    },
    failure: async () => {
      // A stream that stopped (and will retry) is a failed run; other logged errors are shown with it.
      const lastError = agent?.status().peers[0]?.lastError;
      if (!lastError) return undefined;
      return `pgmesh agent n2: ${lastError.code}: ${lastError.message}\n${errors.slice(-5).join('\n')}`;
    },
    stop: async () => {
      await agent?.stop();
      agent = undefined;
    },
  };
  const subscriberSql = client(subscriber);
  const origin = await readLinkNames(subscriberSql, 'n1').finally(() => subscriberSql.end({ timeout: 1 }));
  if (!origin) throw new Error('createCluster made no link n1 -> n2');
  return { consumer, origin: origin.origin };
}
