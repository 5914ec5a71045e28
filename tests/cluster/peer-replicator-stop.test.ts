/**
 * Topology: 2 nodes (n1, n2, linked); n2's replicator for n1 connects to n1 through a TCP proxy, and no agent runs.
 * Scenario: the replicator is stopped while its session is still starting (its replication connection to n1 waits on
 * the held proxy); then the proxy lets everything through.
 * Without the code under test (stop() ending the session in progress): stop() found no stream to close, the session
 * went on to start its stream once the link answered, and applied from it for ever, so stop() never returned.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PeerReplicator } from '../../src/agent/peer-replicator.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { eventually, withCluster } from '../support/cluster.ts';
import { LinkProxy } from '../support/link-proxy.ts';

test('PeerReplicator: a stop while the session is still starting ends it, and no stream starts afterwards', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2 }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    const proxy = await LinkProxy.start('n1->n2', n1.server.port);
    try {
      proxy.hold();
      const through = new URL(n1.server.dsn);
      through.port = String(proxy.port);
      const replicator = new PeerReplicator({
        peer: 'n1',
        peerDsn: through.toString(),
        localNode: 'n2',
        localDsn: n2.server.dsn,
        catalog: n2.sql,
        tuning: cluster.config.tuning,
        logger: silentLogger,
      });
      replicator.start();
      await eventually(() => proxy.stats().open > 0, { what: "the replicator's connection to n1 to wait on the held link" });
      let stopped = false;
      const stopping = replicator.stop().then(() => {
        stopped = true;
      });
      proxy.release();
      await eventually(() => stopped, { timeoutMs: 60_000, what: 'stop() to return' });
      await stopping;
      assert.equal(replicator.status().state, 'stopped');
      const walsenders = await n1.sql.unsafe(`SELECT 1 FROM pg_stat_replication WHERE application_name = 'pgmesh n2'`);
      assert.equal(walsenders.length, 0, 'no stream from n1 is left running');
    } finally {
      await proxy.close();
    }
  });
});
