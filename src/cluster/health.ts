/**
 * `pgmesh status --check`: whether the cluster is healthy, for a monitoring probe. Each problem names the node or
 * the link and says what is wrong; the CLI exits 1 while there is any.
 */
import type { ClusterStatus } from './cluster-ops.ts';

/** Past this share of max_slot_wal_keep_size, a slot is about to be invalidated (and its peer to need a resync). */
export const SLOT_WAL_LIMIT_WARN = 0.8;

export type HealthProblemKind =
  | 'node_unreachable'
  | 'node_error'
  | 'node_not_initialized'
  | 'node_needs_resync'
  | 'link_not_streaming'
  | 'link_paused'
  | 'open_exceptions'
  | 'slot_wal_limit';

export interface HealthProblem {
  readonly kind: HealthProblemKind;
  /** The node, or the subscriber of a link. */
  readonly node: string;
  /** The publisher of the link, for link problems. */
  readonly peer?: string;
  readonly message: string;
}

export interface ClusterHealth {
  readonly healthy: boolean;
  readonly problems: readonly HealthProblem[];
}

export function clusterHealth(status: ClusterStatus): ClusterHealth {
  const problems: HealthProblem[] = [];
  const down = new Set<string>();
  for (const n of status.nodes) {
    if (!n.reachable) {
      down.add(n.name);
      problems.push({ kind: 'node_unreachable', node: n.name, message: `node ${n.name} is unreachable${n.error ? `: ${n.error}` : ''}` });
      continue;
    }
    if (n.error) problems.push({ kind: 'node_error', node: n.name, message: n.error });
    if (!n.initialized) {
      down.add(n.name);
      problems.push({ kind: 'node_not_initialized', node: n.name, message: `node ${n.name} is not initialized: run "pgmesh init --node ${n.name}" or "pgmesh cluster create"` });
      continue;
    }
    if (n.needsResync.length > 0) {
      problems.push({ kind: 'node_needs_resync', node: n.name, message: `node ${n.name} needs a resync: ${n.needsResync.map((r) => r.detail).join('; ')}` });
    }
    if (n.openExceptions !== null && n.openExceptions > 0) {
      problems.push({ kind: 'open_exceptions', node: n.name, message: `node ${n.name} has ${n.openExceptions} open exception(s): "pgmesh exceptions list --node ${n.name}"` });
    }
  }
  for (const l of status.links) {
    // A link of a node already reported down says nothing more.
    if (down.has(l.from) || down.has(l.to)) continue;
    const link = { node: l.to, peer: l.from };
    if (l.pausedReason) problems.push({ kind: 'link_paused', ...link, message: `${l.from} -> ${l.to} is paused: ${l.pausedReason}` });
    else if (!l.streaming) problems.push({ kind: 'link_not_streaming', ...link, message: `${l.from} -> ${l.to} is not streaming (is the agent of ${l.to} running? slot ${l.slotStatus})` });
    if (l.slotStatus === 'lost' || l.slotStatus === 'unreserved' || l.slotStatus === 'missing') {
      problems.push({ kind: 'slot_wal_limit', ...link, message: `the slot of ${l.from} -> ${l.to} on ${l.from} is ${l.slotStatus}` });
    } else if (l.walLimitUsed !== null && l.walLimitUsed >= SLOT_WAL_LIMIT_WARN) {
      problems.push({
        kind: 'slot_wal_limit',
        ...link,
        message: `the slot of ${l.from} -> ${l.to} on ${l.from} holds ${Math.round(l.walLimitUsed * 100)}% of max_slot_wal_keep_size: past it the slot is invalidated and ${l.to} needs a resync`,
      });
    }
  }
  return { healthy: problems.length === 0, problems };
}
