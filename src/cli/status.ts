import type { Command } from 'commander';
import { clusterStatus, type ClusterStatus, type LockWait, type NodeStatus } from '../cluster/cluster-ops.ts';
import { clusterHealth } from '../cluster/health.ts';
import { asPgmeshError, configFrom, loggerFor, printJson, type GlobalOptions } from './common.ts';
import { seconds } from './parsers.ts';

function bytes(n: number | null): string {
  if (n === null) return '-';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function ago(iso: string | null, now: number): string {
  if (!iso) return 'never';
  const ms = now - Date.parse(iso);
  if (!Number.isFinite(ms)) return iso;
  if (ms < 1000) return 'just now';
  if (ms < 60_000) return `${Math.round(ms / 1000)}s ago`;
  return `${Math.round(ms / 60_000)}m ago`;
}

function pad(cells: readonly string[], widths: readonly number[]): string {
  return cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
}

export function renderTable(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => pad(r, widths)).join('\n');
}

/** Past this, a node's kept row versions are worth a line: some peer has not been heard from for that long. */
const HORIZON_WARN_MS = 15 * 60_000;

/** A line when a node keeps row versions for long (a peer unheard from), or no longer can (its slot is gone). */
function horizonWarning(node: NodeStatus, now: number): string[] {
  const h = node.versionHorizon;
  if (!node.initialized || !node.reachable || node.error) return [];
  if (!h) return [`! node ${node.name}: no version horizon yet (its agent makes it when it starts): until then, row versions there are not kept`];
  if (h.slotStatus === 'missing' || h.slotStatus === 'lost') {
    return [`! node ${node.name}: its version horizon slot ${h.slot} is ${h.slotStatus}; its agent creates it again, and row versions written meanwhile may be forgotten (docs/conflicts.md, "Versions")`];
  }
  if (h.keptSince === null || now - Date.parse(h.keptSince) < HORIZON_WARN_MS) return [];
  return [
    `! node ${node.name} keeps row versions written since ${h.keptSince} (${bytes(h.retainedBytes)} of WAL, ${h.heldXids ?? '?'} xids): ` +
      'some peer has not been heard from since; bring it back or remove it ("pgmesh node remove"), see docs/conflicts.md, "Versions"',
  ];
}

/** A node's STATE cell: reachable, and where it is in its membership. */
function nodeState(n: NodeStatus): string {
  if (!n.reachable) return 'UNREACHABLE';
  if (!n.initialized) return 'not initialized';
  if (n.needsResync.length > 0) return 'NEEDS RESYNC';
  const state = n.membership?.state;
  return state === 'joining' || state === 'resyncing' || state === 'removed' ? state : 'up';
}

/** Lines about membership: nodes that need a resync and why, copies under way, slots left for non-members. */
function membershipLines(status: ClusterStatus, now: number): string[] {
  const lines: string[] = [];
  for (const n of status.nodes) {
    if (n.needsResync.length > 0) {
      lines.push(`! node ${n.name} needs a resync: ${n.needsResync.map((r) => r.detail).join('; ')}. Stop its agent, then run "pgmesh node resync ${n.name}"`);
    }
    const m = n.membership;
    if (m && (m.state === 'joining' || m.state === 'resyncing')) {
      const command = m.state === 'joining' ? 'add' : 'resync';
      const tables = m.tablesTotal === null ? '' : `, table ${Math.min(m.tablesDone + 1, m.tablesTotal)}/${m.tablesTotal}`;
      lines.push(
        `! node ${n.name} is ${m.state} from ${m.source}: ${m.phase ?? 'not started'}${tables}, ${m.rows.toLocaleString('en')} rows, ${bytes(m.bytes)} copied (updated ${ago(m.updatedAt, now)}); ` +
          `its agent starts once "pgmesh node ${command} ${n.name}" has finished (run it again if it stopped)`,
      );
      for (const t of n.copyTables) {
        lines.push(`    ${t.relation}: ${t.state}, ${t.rows.toLocaleString('en')}${t.rowsEstimated === null ? '' : ` of about ${t.rowsEstimated.toLocaleString('en')}`} rows, ${bytes(t.bytes)}`);
      }
    }
  }
  for (const s of status.leftoverSlots) lines.push(`! slot ${s.slot} on ${s.node} holds ${bytes(s.retainedBytes)} of WAL ${s.detail}`);
  return lines;
}

/** The human view of a cluster: one line per node, one per directed link. */
export function formatStatus(status: ClusterStatus): string {
  const now = Date.parse(status.at);
  // EXCEPTIONS: open ones; SEQUENCES: those feeding replicated tables, "ok" when interleaved (80 columns, as below).
  const nodes = [['NODE', 'ENDPOINT', 'STATE', 'VERSION', 'TABLES', 'EXCEPTIONS', 'SEQUENCES']];
  for (const n of status.nodes) {
    nodes.push([
      n.name,
      n.endpoint,
      nodeState(n),
      n.serverVersion ?? '-',
      n.replicatedTables === null ? '-' : String(n.replicatedTables),
      n.openExceptions === null ? '-' : String(n.openExceptions),
      n.sequences === null ? '-' : `${n.sequences.interleaved} ok${n.sequences.notInterleaved.length > 0 ? `, ${n.sequences.notInterleaved.length} NOT` : ''}`,
    ]);
  }
  // Short headers: a link's line fits an 80-column terminal (XACTS: transactions applied; APPLIED: when last).
  // Transactions applied again in place (deadlocks, lock timeouts) are counted in --json (applyRetries) and get a
  // line below while one is being retried.
  const links = [['FROM', 'TO', 'STREAMING', 'SLOT', 'LAG', 'XACTS', 'APPLIED', 'CONFLICTS', 'CLOCK SKEW']];
  for (const l of status.links) {
    links.push([
      l.from,
      l.to,
      l.pausedReason ? 'PAUSED' : l.streaming ? 'yes' : 'NO',
      l.slotStatus,
      bytes(l.lagBytes),
      l.appliedXacts === null ? '-' : String(l.appliedXacts),
      ago(l.lastAppliedAt, now),
      l.conflicts === null ? '-' : String(l.conflicts),
      l.clockSkewMs === null ? '-' : `${l.clockSkewMs >= 0 ? '+' : ''}${l.clockSkewMs.toFixed(1)} ms`,
    ]);
  }
  const fingerprints = status.nodes.filter((n) => n.schemaFingerprint !== null);
  const schemasDiffer = new Set(fingerprints.map((n) => n.schemaFingerprint)).size > 1;
  const errors = [
    ...status.nodes.filter((n) => n.error).map((n) => `! ${n.error}`),
    ...membershipLines(status, now),
    ...status.nodes
      .filter((n) => n.sequences && n.sequences.notInterleaved.length > 0)
      .map(
        (n) =>
          `! node ${n.name}: sequence(s) ${n.sequences?.notInterleaved.join(', ')} feed replicated tables but do not hand out node-interleaved values, so nodes can take the same keys; run "pgmesh tables add" for their tables`,
      ),
    ...(schemasDiffer
      ? [`! the nodes' schemas differ (fingerprints ${fingerprints.map((n) => `${n.name} ${n.schemaFingerprint}`).join(', ')}): see docs/ddl.md, "Checking that nodes agree"`]
      : []),
    ...status.nodes.flatMap((n) => horizonWarning(n, now)),
    ...status.links.filter((l) => l.pausedReason).map((l) => `! ${l.from} -> ${l.to} paused: ${l.pausedReason}`),
    ...status.links.flatMap((l) => (l.lockWait ? [`! ${l.from} -> ${l.to}: ${describeLockWait(l.lockWait)}`] : [])),
    ...status.links
      .filter((l) => l.retrying && !l.lockWait)
      .map((l) => `! ${l.from} -> ${l.to}: a transaction is being applied again (${l.retrying?.reason}) since ${l.retrying?.since}; ${l.applyRetries ?? 0} retried in place so far`),
    ...status.links
      .filter((l) => l.clockSkewWarning)
      .map(
        (l) =>
          `! the clock of ${l.from} differs from ${l.to}'s by ${(l.clockSkewMs ?? 0) >= 0 ? '+' : ''}${(l.clockSkewMs ?? 0).toFixed(0)} ms: last-update-wins trusts clocks; fix time synchronisation (NTP) on them`,
      ),
  ];
  return [renderTable(nodes), '', renderTable(links), ...(errors.length ? ['', ...errors] : [])].join('\n');
}

/** "applying waits for a lock on public.t since ..., held by pid 42 (idle in transaction since ...)". */
function describeLockWait(wait: LockWait): string {
  const holders = wait.blockedBy.map((b) => `pid ${b.pid}${b.state ? ` (${b.state}${b.since ? ` since ${b.since}` : ''})` : ''}`);
  return (
    `applying waits for a lock${wait.table ? ` on ${wait.table}` : ''}${wait.since ? ` since ${wait.since}` : ''}` +
    `${holders.length > 0 ? `, held by ${holders.join(', ')}` : ''}; it is tried again after tuning.lockTimeoutMs`
  );
}

/** Exit code 1 for the problems status has always flagged (a node down, in error or needing a resync). */
function nodesFailing(status: ClusterStatus): boolean {
  return status.nodes.some((n) => !n.reachable || n.error || n.needsResync.length > 0);
}

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('show every node and every replication link: streaming, lag, applied transactions')
    .option('--json', 'print as JSON')
    .option('--check', 'health check: exit 1 unless every node is initialized and reachable, every link streams, no peer is paused, no exception is open and no slot is near its WAL limit; says which')
    .option('--watch <seconds>', 'refresh every N seconds (0.5-3600) until Ctrl-C', seconds(0.5, 3600))
    .action(async (options: { json?: boolean; check?: boolean; watch?: number }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const logger = loggerFor(config);
      // On a terminal --watch redraws the screen; into a pipe or a file each refresh is appended, with its time.
      const redraw = options.watch !== undefined && process.stdout.isTTY === true;
      const show = async (): Promise<boolean> => {
        const status = await clusterStatus(config, logger);
        const health = options.check ? clusterHealth(status) : undefined;
        const failing = health ? !health.healthy || nodesFailing(status) : nodesFailing(status);
        if (options.json) {
          const value = health ? { ...status, healthy: health.healthy, problems: health.problems } : status;
          // One line per refresh when watching (a stream of JSON documents), indented otherwise.
          if (options.watch !== undefined) process.stdout.write(`${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
          else printJson(value);
        } else {
          const lines = [formatStatus(status)];
          if (health) lines.push('', health.healthy ? 'check: ok' : `check: ${health.problems.length} problem(s)\n${health.problems.map((p) => `  ${p.message}`).join('\n')}`);
          const header = options.watch === undefined ? '' : `${redraw ? '\x1b[2J\x1b[H' : ''}--- ${status.at}\n`;
          process.stdout.write(`${header}${lines.join('\n')}\n${options.watch !== undefined && !redraw ? '\n' : ''}`);
        }
        return failing;
      };
      const failing = await show();
      if (options.watch === undefined) {
        if (failing) process.exitCode = 1;
        return;
      }
      // A refresh that fails says so (a stale screen must not look current); the next one tries again.
      const refresh = () =>
        show().catch((error: unknown) => {
          const failure = asPgmeshError(error);
          const at = new Date().toISOString();
          if (options.json) process.stdout.write(`${JSON.stringify({ at, error: { code: failure.code, message: failure.message } })}\n`);
          else process.stdout.write(`--- ${at}\n! refresh failed: ${failure.message}\n\n`);
          return true;
        });
      const timer = setInterval(() => void refresh(), options.watch * 1000);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
      });
      clearInterval(timer);
    });
}
