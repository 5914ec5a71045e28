/**
 * The demo: a local cluster of real PostgreSQL servers (embedded), one real agent process per node, a writer that
 * writes to every node in turn, and a live view showing each change arriving everywhere.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, createWriteStream, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../core/logger.ts';
import { loadConfig, type ClusterConfig } from '../config/config.ts';
import { createCluster, clusterStatus } from '../cluster/cluster-ops.ts';
import { setDeltaColumns } from '../cluster/repair.ts';
import { EmbeddedServer } from '../embedded/embedded-server.ts';
import { canEnter, makeServerTempDir, serverUser } from '../embedded/server-user.ts';
import type { PgMajor } from '../embedded/postgres-binaries.ts';
import { openSql, type Sql } from '../pg/connect.ts';
import { formatStatus, renderTable } from './status.ts';
import { pgmeshCommand } from './self.ts';

export interface DemoOptions {
  readonly nodes: number;
  readonly major: PgMajor;
  readonly dir: string;
  /** Stop by itself after this many seconds (0: run until Ctrl-C). */
  readonly durationS: number;
  readonly writesPerSecond: number;
  readonly logger: Logger;
  readonly out: (text: string) => void;
  readonly interactive: boolean;
}

export const DEMO_SCHEMA = `
CREATE TABLE IF NOT EXISTS public.orders (
  id uuid PRIMARY KEY,
  placed_on text NOT NULL,
  item text NOT NULL,
  quantity integer NOT NULL,
  price numeric(10,2) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.stock (
  sku text PRIMARY KEY,
  on_hand integer NOT NULL,
  updated_on text
);
INSERT INTO public.stock (sku, on_hand) SELECT 'sku-' || g, 100 FROM generate_series(1, 5) g ON CONFLICT DO NOTHING;
`;

const ITEMS = ['teapot', 'kettle', 'mug', 'saucer', 'spoon', 'strainer'];

export async function runDemo(options: DemoOptions): Promise<void> {
  const { out, logger } = options;
  const dir = resolve(options.dir);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  // As root the servers run as the postgres user; in a checkout that user cannot enter (a private home directory)
  // their folders go to the system's temporary folder, removed at the end.
  const serverDir = canEnter(serverUser(), dir) ? dir : makeServerTempDir('pgmesh-demo-');
  const password = randomBytes(12).toString('hex');
  const servers: EmbeddedServer[] = [];
  const agents: ChildProcess[] = [];
  const conns: Sql[] = [];
  // Handlers for the whole run, cleanup included: a second Ctrl-C (or the signal a wrapper such as npm or tsx
  // passes on after the terminal's) must not kill the process halfway through stopping the servers.
  const stop = { requested: false };
  const onSignal = () => {
    if (stop.requested) out('still stopping agents and servers ...\n');
    stop.requested = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const cleanup = async () => {
    for (const agent of agents.reverse()) await stopProcess(agent);
    await Promise.all(conns.map((c) => c.end({ timeout: 1 }).catch(() => undefined)));
    for (const server of servers.reverse()) await server.stop().catch(() => undefined);
    if (serverDir !== dir) rmSync(serverDir, { recursive: true, force: true });
  };
  try {
    out(`starting ${options.nodes} PostgreSQL ${options.major} servers in ${serverDir}\n`);
    if (serverDir !== dir) out(`  (the postgres user cannot enter ${dir}: the servers' folders are removed at the end)\n`);
    for (let i = 1; i <= options.nodes && !stop.requested; i++) {
      const began = Date.now();
      out(`  n${i}: initdb ...`);
      const server = await EmbeddedServer.create({ name: `n${i}`, baseDir: serverDir, major: options.major, password });
      servers.push(server);
      out(' starting ...');
      await server.start();
      out(` ready on port ${server.port} (${((Date.now() - began) / 1000).toFixed(1)} s)\n`);
    }
    if (stop.requested) return;
    const configPath = join(dir, 'cluster.json');
    writeFileSync(
      configPath,
      JSON.stringify({ maxNodes: 16, logLevel: 'info', nodes: servers.map((s) => ({ name: s.name, dsn: s.dsn })) }, null, 2),
      { mode: 0o600 },
    );
    const config = loadConfig({ file: configPath });
    for (const s of servers) {
      const sql = openSql(s.dsn, { node: s.name, applicationName: 'pgmesh demo', logger, max: 2 });
      conns.push(sql);
      await sql.unsafe(DEMO_SCHEMA);
    }
    out('creating the cluster: pgmesh catalog, publication and a slot per link on every node ...\n');
    const created = await createCluster(config, logger);
    out(`cluster created: ${created.nodes.map((n) => n.name).join(', ')} replicate ${created.nodes[0]?.tables.added.map((t) => t.name).join(', ')}\n`);
    // Every node decrements stock concurrently: as a delta column the decrements add up instead of overwriting.
    for (const sql of conns) await setDeltaColumns(sql, { schema: 'public', name: 'stock' }, ['on_hand']);
    for (const s of servers) agents.push(startAgent(configPath, s.name, join(dir, `${s.name}-agent.log`)));
    out(`agents started (logs: ${dir}/<node>-agent.log)\n`);
    out(`try, in another terminal:  npx pgmesh status --config ${configPath}\n`);
    if (!stop.requested) await live(config, conns, servers, options, stop);
  } finally {
    out('\nstopping agents and servers ...\n');
    await cleanup();
    out('stopped.\n');
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function live(
  config: ClusterConfig,
  conns: readonly Sql[],
  servers: readonly EmbeddedServer[],
  options: DemoOptions,
  stop: { readonly requested: boolean },
): Promise<void> {
  const started = Date.now();
  let writes = 0;
  let lastWrite = '';
  const writer = setInterval(() => {
    const i = writes % conns.length;
    const sql = conns[i] as Sql;
    const node = servers[i]?.name ?? '?';
    const item = ITEMS[writes % ITEMS.length] as string;
    const qty = 1 + (writes % 4);
    writes++;
    void sql
      .unsafe(
        `WITH o AS (INSERT INTO public.orders (id, placed_on, item, quantity, price) VALUES (gen_random_uuid(), $1, $2, $3::int, $4::numeric) RETURNING 1)
         UPDATE public.stock SET on_hand = on_hand - $3::int, updated_on = $1 WHERE sku = $5`,
        [node, item, String(qty), (2 + qty * 1.25).toFixed(2), `sku-${1 + (writes % 5)}`],
      )
      .then(() => {
        lastWrite = `order for ${qty} x ${item} written on ${node}`;
      })
      .catch((error: Error) => {
        lastWrite = `write on ${node} failed: ${error.message}`;
      });
  }, Math.max(10, Math.round(1000 / options.writesPerSecond)));
  try {
    while (!stop.requested && (options.durationS === 0 || Date.now() - started < options.durationS * 1000)) {
      const status = await clusterStatus(config, options.logger);
      const rows = [['NODE', 'ORDERS', 'ITEMS ORDERED', 'STOCK ON HAND', 'STOCK + ORDERED', 'CONTENT HASH']];
      const hashes = new Set<string>();
      for (const [i, sql] of conns.entries()) {
        const r = await sql
          .unsafe<{ orders: string; ordered: string; stock: string; hash: string }[]>(
            `SELECT (SELECT count(*) FROM public.orders)::text AS orders,
                    (SELECT coalesce(sum(quantity), 0) FROM public.orders)::text AS ordered,
                    (SELECT sum(on_hand) FROM public.stock)::text AS stock,
                    md5((SELECT coalesce(string_agg(o::text, ',' ORDER BY id), '') FROM public.orders o) ||
                        (SELECT string_agg(s::text, ',' ORDER BY sku) FROM public.stock s)) AS hash`,
          )
          .catch(() => [{ orders: '?', ordered: '?', stock: '?', hash: 'unreachable' }]);
        const row = r[0] ?? { orders: '?', ordered: '?', stock: '?', hash: '?' };
        hashes.add(row.hash);
        const total = Number(row.stock) + Number(row.ordered);
        rows.push([servers[i]?.name ?? '?', row.orders, row.ordered, row.stock, Number.isFinite(total) ? String(total) : '?', row.hash.slice(0, 12)]);
      }
      const verdict = hashes.size === 1 ? 'all nodes identical' : 'nodes differ (changes in flight)';
      const screen = [
        `pgmesh demo: ${servers.length} nodes, a write every ${Math.round(1000 / options.writesPerSecond)} ms to each node in turn. Ctrl-C stops.`,
        '',
        formatStatus(status),
        '',
        renderTable(rows),
        `=> ${verdict}; ${writes} writes so far`,
        `   last: ${lastWrite}`,
        '   stock.on_hand is a delta column: decrements made on different nodes at once',
        '   add up, so stock + ordered stays 500.',
      ].join('\n');
      options.out(options.interactive ? `\x1b[2J\x1b[H${screen}\n` : `${screen}\n\n`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    clearInterval(writer);
  }
}

function startAgent(configPath: string, node: string, logFile: string): ChildProcess {
  // The agent is this same pgmesh (compiled or from the sources), found from this file, not the current folder.
  const self = pgmeshCommand();
  const log = createWriteStream(logFile, { flags: 'a' });
  const child = spawn(self.command, [...self.args, '--config', configPath, 'start', '--node', node], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env },
  });
  child.stdout?.pipe(log);
  child.stderr?.pipe(log);
  return child;
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}
