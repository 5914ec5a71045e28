/**
 * What keeps a running cluster healthy besides applying: tombstones collected once every peer is past them, and
 * clock skew measured, shown in status and warned about.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClockMonitor } from '../../src/agent/clock-monitor.ts';
import { formatStatus } from '../../src/cli/status.ts';
import { clusterStatus } from '../../src/cluster/cluster-ops.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';
import { recordingLogger } from '../support/recording-logger.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}`;

async function tombstones(node: TestNode): Promise<string[]> {
  const rows = await node.sql.unsafe<{ pkey: string }[]>(`SELECT t.pkey FROM pgmesh.tombstone t JOIN pg_class c ON c.oid = t.relid WHERE c.relname = 't' ORDER BY 1`);
  return rows.map((r) => r.pkey);
}

/** A logger that keeps warnings, to check what an operator would read. */

/**
 * Topology: 2 nodes, agents in this process, tombstone collection every 200 ms with no margin.
 * Scenario: a delete's tombstones go once both nodes are past it; then, with n2's server down, n1 deletes again:
 * n1 cannot know whether n2 has an older change of that row still to send, so it keeps the tombstone until n2 is
 * back and streaming, and only then collects it.
 * Without the code under test: tombstones grow without bound, or one is dropped while an older change of its row
 * can still arrive (which would bring the deleted row back).
 */
test('tombstones are collected once every peer is past them, and kept while a peer is not', { timeout: 120_000 }, async (t) => {
  const tuning = { tombstoneGcIntervalMs: 200, tombstoneMarginMs: 0, retryBaseMs: 100, retryMaxMs: 1000 };
  await withCluster({ nodes: 2, schema: SCHEMA, tuning }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')`);
    await barrier(cluster);

    await n1.sql.unsafe(`DELETE FROM t WHERE k = 1`);
    await eventually(async () => (await n2.sql.unsafe(`SELECT 1 FROM t WHERE k = 1`)).length === 0, { what: 'the delete to reach n2' });
    await eventually(async () => (await tombstones(n1)).length === 0 && (await tombstones(n2)).length === 0, {
      timeoutMs: 30_000,
      what: 'the tombstones of key 1 to be collected on both nodes',
    });

    await n2.server.stop();
    await n1.sql.unsafe(`DELETE FROM t WHERE k = 2`);
    assert.deepEqual(await tombstones(n1), ['[2]']);
    // Many collection rounds while n2 is away: the tombstone stays (a bounded wait is the only way to see that
    // something does not happen).
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    assert.deepEqual(await tombstones(n1), ['[2]'], 'kept while n2 is down');

    await n2.server.start();
    await eventually(async () => (await n2.sql.unsafe(`SELECT 1 FROM t WHERE k = 2`)).length === 0, { timeoutMs: 30_000, what: 'the delete to reach n2' });
    await eventually(async () => (await tombstones(n1)).length === 0 && (await tombstones(n2)).length === 0, {
      timeoutMs: 30_000,
      what: 'the tombstones of key 2 to be collected once n2 is back',
    });
    await barrier(cluster);
    const rows = await Promise.all(cluster.nodes.map((n) => n.sql.unsafe<{ k: number }[]>(`SELECT k FROM t ORDER BY k`)));
    assert.deepEqual(rows.map((r) => r.map((x) => x.k)), [[3], [3]]);
    t.diagnostic('tombstones collected on both nodes after each delete, and kept while the peer was down');
  });
});

/**
 * Topology: 2 nodes, no agents; a ClockMonitor on n1 reads n2's clock, once with this process's clock as the local
 * one and once with a local clock two seconds behind (the only way to skew a clock on one machine).
 * Without the code under test: skew would not be measured, not stored where status reads it, or not warned about.
 */
/** Whether a skew read as `skewMs` fits a true skew of 2 s, within the reading's uncertainty (half its round trip). */
function withinReading(skewMs: number, reading: { readonly rttMs: number }): boolean {
  return Math.abs(skewMs - 2_000) <= reading.rttMs / 2 + 2;
}

test('clock skew is measured, shown in status and warned about past the threshold', { timeout: 60_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    const warnings: string[] = [];
    const monitor = (now: () => number) =>
      new ClockMonitor({ peer: 'n2', peerDsn: n2.server.dsn, localNode: 'n1', catalog: n1.sql, warnMs: 500, intervalMs: 60_000, logger: recordingLogger(warnings), now });

    const synced = monitor(Date.now);
    try {
      for (let i = 0; i < 3; i++) await synced.measure();
      const reading = synced.current();
      // A reading is off by at most half its round trip (the peer's clock is read between the two local readings):
      // a bound that holds however slow a busy machine makes the round trip.
      assert.ok(reading && Math.abs(reading.skewMs) <= reading.rttMs / 2 + 2, `same machine, same clock: ${reading?.skewMs} ms (round trip ${reading?.rttMs} ms)`);
      assert.deepEqual(warnings, []);
    } finally {
      await synced.stop();
    }
    const quiet = await clusterStatus(cluster.config, recordingLogger([]));
    assert.equal(quiet.links.find((l) => l.from === 'n2' && l.to === 'n1')?.clockSkewWarning, false);

    const behind = monitor(() => Date.now() - 2_000);
    try {
      // The warning comes from the first reading past the threshold: each reading is kept to check it by its own bound.
      const readings: NonNullable<ReturnType<typeof behind.current>>[] = [];
      for (let i = 0; i < 3; i++) {
        await behind.measure();
        const r = behind.current();
        if (r) readings.push(r);
      }
      const reading = behind.current();
      assert.ok(reading && withinReading(reading.skewMs, reading), `n2 reads 2 s ahead of n1's (shifted) clock: ${reading?.skewMs} ms (round trip ${reading?.rttMs} ms)`);
      assert.equal(warnings.length, 1, 'one warning (repeated at most once a minute)');
      const warned = /clock of n2 differs from n1 by (\d+) ms; last-update-wins trusts clocks: fix time synchronisation \(NTP\)/.exec(warnings[0] ?? '');
      assert.ok(warned && readings.some((r) => withinReading(Number(warned[1]), r)), `the warning names the skew: ${warnings[0]} (readings ${readings.map((r) => `${r.skewMs} ms, round trip ${r.rttMs} ms`).join('; ')})`);
    } finally {
      await behind.stop();
    }
    const status = await clusterStatus(cluster.config, recordingLogger([]));
    const link = status.links.find((l) => l.from === 'n2' && l.to === 'n1');
    const stored = await n1.sql.unsafe<{ rtt: number }[]>(`SELECT rtt_ms AS rtt FROM pgmesh.peer_clock WHERE peer = 'n2'`);
    const rttMs = stored[0]?.rtt ?? Infinity;
    assert.ok(link?.clockSkewMs != null && withinReading(link.clockSkewMs, { rttMs }), `status shows the skew: ${link?.clockSkewMs} (round trip ${rttMs} ms)`);
    assert.equal(link?.clockSkewWarning, true);
    const shown = /^! the clock of n2 differs from n1's by \+(\d+) ms: last-update-wins trusts clocks; fix time synchronisation \(NTP\) on them$/m.exec(formatStatus(status));
    assert.ok(shown && withinReading(Number(shown[1]), { rttMs }), `status warns with the skew:\n${formatStatus(status)}`);
  });
});
