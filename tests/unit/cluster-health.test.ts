/**
 * clusterHealth (src/cluster/health.ts), the verdict of `pgmesh status --check`, from a status as clusterStatus reads
 * it. Without the code under test: nothing but a node down or in error made status fail, so a probe saw a cluster
 * with a paused peer, an open exception, an uninitialized node or a slot about to be invalidated as healthy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterHealth } from '../../src/cluster/health.ts';
import type { ClusterStatus, LinkStatus, NodeStatus } from '../../src/cluster/cluster-ops.ts';

function node(name: string, extra: Partial<NodeStatus> = {}): NodeStatus {
  return {
    name,
    endpoint: `127.0.0.1:5432/${name}`,
    reachable: true,
    error: null,
    serverVersion: '17.10',
    initialized: true,
    replicatedTables: 1,
    openExceptions: 0,
    sequences: null,
    schemaFingerprint: null,
    versionHorizon: null,
    membership: null,
    needsResync: [],
    copyTables: [],
    ...extra,
  };
}

function link(from: string, to: string, extra: Partial<LinkStatus> = {}): LinkStatus {
  return {
    from,
    to,
    streaming: true,
    slotStatus: 'reserved',
    walLimitUsed: 0.01,
    lagBytes: 0,
    appliedXacts: 1,
    lastAppliedAt: null,
    lastRemoteCommit: null,
    clockSkewMs: null,
    clockSkewWarning: false,
    conflicts: 0,
    pausedReason: null,
    applyRetries: 0,
    retrying: null,
    lockWait: null,
    ...extra,
  };
}

function status(nodes: NodeStatus[], links: LinkStatus[]): ClusterStatus {
  return { at: '2026-01-01T00:00:00.000Z', nodes, links, leftoverSlots: [] };
}

const kinds = (s: ClusterStatus) => clusterHealth(s).problems.map((p) => `${p.kind} ${p.peer ? `${p.peer}->` : ''}${p.node}`);

test('a healthy cluster passes', () => {
  const health = clusterHealth(status([node('n1'), node('n2')], [link('n1', 'n2'), link('n2', 'n1', { walLimitUsed: null })]));
  assert.deepEqual(health, { healthy: true, problems: [] });
});

test('each problem is named, with its node and link', () => {
  const s = status(
    [node('n1', { openExceptions: 2 }), node('n2')],
    [link('n1', 'n2', { pausedReason: 'conflict on public.t' }), link('n2', 'n1', { walLimitUsed: 0.85 })],
  );
  assert.deepEqual(kinds(s), ['open_exceptions n1', 'link_paused n1->n2', 'slot_wal_limit n2->n1']);
  assert.match(clusterHealth(s).problems[2]?.message ?? '', /85% of max_slot_wal_keep_size/);
  assert.deepEqual(kinds(status([node('n1'), node('n2')], [link('n1', 'n2', { streaming: false }), link('n2', 'n1', { slotStatus: 'lost' })])), [
    'link_not_streaming n1->n2',
    'slot_wal_limit n2->n1',
  ]);
});

test('a node down or not initialized is one problem, not one per link as well', () => {
  const s = status(
    [node('n1', { initialized: false }), node('n2', { reachable: false, error: 'connection refused' }), node('n3')],
    [link('n1', 'n3', { streaming: false }), link('n3', 'n2', { streaming: false, slotStatus: 'unknown' }), link('n3', 'n1', { streaming: false })],
  );
  assert.deepEqual(kinds(s), ['node_not_initialized n1', 'node_unreachable n2']);
  assert.match(clusterHealth(s).problems[0]?.message ?? '', /run "pgmesh init --node n1"/);
});
