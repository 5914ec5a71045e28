/**
 * `pgmesh node resync`: a node that can no longer follow the cluster by streaming (a peer's slot for it was
 * invalidated, it was restored from an old backup, or it was removed) is brought back to the cluster's state the way
 * a new node joins (node-add.ts): new slots everywhere, every replicated table copied from one exported snapshot of
 * the source, each stream starting where that snapshot ends. Its replicated rows are replaced by the source's.
 *
 * What the node wrote itself: what reached the other nodes is in the source's copy and comes back; what never left it
 * is lost. So before anything changes, the node's writes are drained to every other node (a marker transaction that
 * every other node must apply, as node remove does); when that cannot be done (its slot for a peer is gone or
 * invalidated, a peer's agent is not streaming from it), the resync needs `force`, and says what is lost.
 * A node that is 'removed', or 'joining' / 'resyncing' after an attempt that stopped, has nothing to drain: its
 * writes since it left, or since the last attempt began, reached nobody and are replaced.
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn } from '../core/lsn.ts';
import type { ClusterConfig } from '../config/config.ts';
import { joinNode, type AddNodeOptions, type AddNodeResult, type JoinConnections } from './node-add.ts';
import { drain } from './node-remove.ts';
import { readMembership } from './membership-state.ts';
import { ackFloor, readSlotHealth } from './slot-health.ts';

export interface ResyncNodeOptions extends AddNodeOptions {
  /** Resync although what the node wrote could not be drained to every other node (it is lost). */
  readonly force?: boolean | undefined;
  readonly drainTimeoutMs?: number | undefined;
}

export interface ResyncNodeResult extends AddNodeResult {
  /** Everything the node had written reached every other node before its rows were replaced. */
  readonly drained: boolean;
  /** What was lost or not done, for the user (empty when nothing was). */
  readonly warnings: readonly string[];
}

const DRAIN_TIMEOUT_MS = 60_000;

export async function resyncNode(config: ClusterConfig, logger: Logger, options: ResyncNodeOptions): Promise<ResyncNodeResult> {
  const warnings: string[] = [];
  let drained = false;
  const result = await joinNode(config, logger, options, {
    state: 'resyncing',
    beforeChanges: async (conns) => {
      await requireAgentStopped(conns, options.name);
      const outcome = await drainWrites(conns, options, logger);
      drained = outcome.drained;
      warnings.push(...outcome.warnings);
    },
  });
  logger.info({ node: options.name, source: result.source, drained }, 'node resynced');
  return { ...result, drained, warnings };
}

/** The node's own agent applies into the tables and origins that a resync replaces: it must not run meanwhile. */
async function requireAgentStopped(conns: JoinConnections, name: string): Promise<void> {
  const rows = await conns.joining.unsafe<{ n: string }[]>(
    `SELECT count(*)::text AS n FROM pg_catalog.pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
    [`pgmesh agent ${name}`],
  );
  if (Number(rows[0]?.n ?? 0) > 0) {
    throw new PgmeshError('APPLY_FAILED', `the agent of ${name} is running; stop it (the resync replaces what it applies into), run node resync again, then start it`, {
      context: { node: name },
    });
  }
}

async function drainWrites(conns: JoinConnections, options: ResyncNodeOptions, logger: Logger): Promise<{ drained: boolean; warnings: string[] }> {
  const name = options.name;
  const state = await readMembership(conns.joining);
  if (state && state.state !== 'member') return { drained: false, warnings: [] };
  const lost = (why: string) =>
    `${why}${/[.?]$/.test(why) ? '' : '.'} Changes ${name} made that they never received would be lost (its tables are replaced by the cluster's rows)`;
  // Restored from a backup: the others have applied its WAL further than its WAL now reaches, so they would skip
  // what it wrote since the restore (and a marker would look drained at once).
  const wal = await conns.joining.unsafe<{ lsn: string }[]>(`SELECT pg_catalog.pg_current_wal_insert_lsn()::text AS lsn`);
  const walLsn = parseLsn(wal[0]?.lsn ?? '0/0');
  const ahead: string[] = [];
  for (const [peer, sql] of conns.existing) {
    const rows = await sql.unsafe<{ end_lsn: string }[]>(`SELECT end_lsn::text FROM pgmesh.progress WHERE peer = $1`, [name]);
    if (rows[0] && parseLsn(rows[0].end_lsn) > walLsn) ahead.push(`${peer} (at ${rows[0].end_lsn})`);
    // Or it acknowledged more of the peer's changes than it holds: restored, and its WAL may since have passed what
    // the peer applied from it, so what it wrote in between was skipped by the peer.
    const [slot] = await readSlotHealth(sql, name);
    const floor = await ackFloor(conns.joining, peer);
    if (floor.known && slot?.confirmedFlush && slot.invalidated === null && parseLsn(slot.confirmedFlush) > floor.lsn && !ahead.some((a) => a.startsWith(`${peer} `))) {
      ahead.push(`${peer} (which it had acknowledged up to ${slot.confirmedFlush})`);
    }
  }
  // Without its slot for a peer, nothing more of the node's reaches that peer: no drain can succeed.
  const slots = new Map((await readSlotHealth(conns.joining)).map((s) => [s.subscriber, s]));
  const unreachable: string[] = [];
  for (const peer of conns.existing.keys()) {
    const slot = slots.get(peer);
    if (!slot) unreachable.push(`${peer} (the slot for ${peer} is missing on ${name})`);
    else if (slot.invalidated !== null) unreachable.push(`${peer} (slot ${slot.slot} on ${name} was invalidated: ${slot.invalidated})`);
  }
  let problem: string | undefined;
  let advice = `Make the other nodes' agents stream from ${name} and retry, or run with --force to resync anyway`;
  if (ahead.length > 0) {
    advice = 'Nothing brings those changes back: run with --force to resync anyway';
    problem = lost(
      `${name} was restored from a backup older than what it had exchanged with ${ahead.join(', ')} (its WAL is at ${formatLsn(walLsn)}), so what it wrote since the restore may not have reached them`,
    );
  } else if (unreachable.length > 0) {
    problem = lost(`${name}'s changes cannot reach ${unreachable.join(', ')}`);
  } else {
    try {
      await drain(conns.joining, name, [...conns.existing].map(([peer, sql]) => ({ name: peer, sql })), {
        timeoutMs: options.drainTimeoutMs ?? DRAIN_TIMEOUT_MS,
        marker: 'pgmesh.resync',
      });
      return { drained: true, warnings: [] };
    } catch (error) {
      problem = lost(errorMessage(error));
    }
  }
  if (!options.force) {
    throw new PgmeshError('APPLY_FAILED', `${problem}. ${advice}`, {
      context: { node: name },
    });
  }
  logger.warn({ node: name }, problem);
  return { drained: false, warnings: [`${problem} (resynced anyway: --force)`] };
}
