/**
 * Topology: 2 or 3 nodes, agents in this process; links held by pausing a peer on its receiver (tests/support/links.ts).
 * Scenario: a row's version is its xmin's commit timestamp. Freezing keeps it (the first test pins that); truncating
 * commit timestamps (after many xids, once every database is frozen) loses it on that node only. The second test
 * makes one node lose a version that a late, older change still has to lose to; the third checks that the horizon
 * which keeps versions moves on once every peer is heard from, and stays while one is held; the fourth that a node
 * marked removed drops its slot (a slot left behind would hold back freezing for ever); the fifth that an
 * invalidated slot is made again, with a warning.
 * Without the code under test (the version horizon slot): the node that lost the version lets the older change win,
 * the others keep the newer row, and the cluster differs for good.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier, linkBarrier } from '../support/barrier.ts';
import { eventually, withCluster, type Sql, type TestNode } from '../support/cluster.ts';
import { burnXids, flushWal, freezeAllDatabases, hasCommitTimestamp, XIDS_PAST_TWO_SEGMENTS } from '../support/commit-ts.ts';
import { holdLinks, releaseLinks } from '../support/links.ts';
import { recordingLogger } from '../support/recording-logger.ts';
import { clusterStatus } from '../../src/cluster/cluster-ops.ts';
import { formatStatus } from '../../src/cli/status.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { VersionHorizonKeeper } from '../../src/agent/version-horizon.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text); ${BARRIER_TABLE}`;
const valueOf = async (node: TestNode) => (await node.sql.unsafe<{ v: string }[]>(`SELECT v FROM t WHERE k = 1`))[0]?.v;
const xminOf = async (node: TestNode) => {
  const xmin = (await node.sql.unsafe<{ xmin: string }[]>(`SELECT xmin::text AS xmin FROM t WHERE k = 1`))[0]?.xmin;
  if (xmin === undefined) throw new Error(`${node.name} has no row 1`);
  return xmin;
};

/** The node's version horizon slot, once its agent has made it. */
async function horizonSlot(sql: Sql): Promise<void> {
  await eventually(async () => (await sql.unsafe(`SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'pgmesh\\_\\_versions\\_%'`)).length === 1, {
    what: 'the version horizon slot',
  });
}

/** Whether every slot whose name matches `pattern` (a regular expression) on the node has a catalog_xmin at or past `xid` (a committed xid, as text). */
async function slotsPast(sql: Sql, xid: string, pattern: string): Promise<boolean> {
  const rows = await sql.unsafe<{ past: boolean }[]>(
    `SELECT coalesce(bool_and(age(catalog_xmin) <= age($1::xid)), false) AS past FROM pg_catalog.pg_replication_slots WHERE slot_name ~ $2`,
    [xid, pattern],
  );
  return rows[0]?.past === true;
}

test('a row frozen on one node keeps its version: a concurrent older change loses everywhere', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO t VALUES (1, 'base')`);
    await barrier(cluster);

    const both = [
      { from: 'n1', to: 'n2' },
      { from: 'n2', to: 'n1' },
    ];
    await holdLinks(cluster, both);
    await n2.sql.unsafe(`UPDATE t SET v = 'older, from n2' WHERE k = 1`);
    await n1.sql.unsafe(`UPDATE t SET v = 'newer, from n1' WHERE k = 1`);
    const xmin = await xminOf(n1);
    // Frozen once the table's relfrozenxid is past the row's xmin (a transaction still running can hold it back).
    await eventually(
      async () => {
        await n1.sql.unsafe(`VACUUM FREEZE t`);
        const rows = await n1.sql.unsafe<{ frozen: boolean }[]>(`SELECT age(relfrozenxid) < age($1::xid) AS frozen FROM pg_catalog.pg_class WHERE oid = 't'::regclass`, [xmin]);
        return rows[0]?.frozen === true;
      },
      { what: "n1's row to be frozen" },
    );
    assert.equal(await xminOf(n1), xmin, 'the frozen row keeps its raw xmin');
    assert.equal(await hasCommitTimestamp(n1.sql, xmin), true, 'and its commit timestamp');

    await releaseLinks(cluster, both);
    await barrier(cluster);
    assert.equal(await valueOf(n1), 'newer, from n1');
    assert.equal(await valueOf(n2), 'newer, from n1');
  });
});

test("a version whose commit timestamp a node would truncate is kept until every peer's older changes are in", { timeout: 300_000 }, async () => {
  // A = n1 loses the version, P = n2 sends the older change late, Q = n3 writes the newer version.
  await withCluster({ nodes: 3, schema: SCHEMA }, async (cluster) => {
    const [a, p, q] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    await cluster.startAgents();
    await a.sql.unsafe(`INSERT INTO t VALUES (1, 'base')`);
    await barrier(cluster);
    await horizonSlot(a.sql);

    const held = [
      { from: 'n2', to: 'n1' },
      { from: 'n3', to: 'n2' },
    ];
    await holdLinks(cluster, held);
    await p.sql.unsafe(`UPDATE t SET v = 'older, from n2' WHERE k = 1`);
    await q.sql.unsafe(`UPDATE t SET v = 'newer, from n3' WHERE k = 1`);
    await linkBarrier(cluster, { from: 'n3', to: 'n1' });
    assert.equal(await valueOf(a), 'newer, from n3');
    const xmin = await xminOf(a);

    // n1 moves on: many xids later, its peers' slots (which hold what they have not confirmed) are past them all,
    // and every database is frozen. Without the horizon slot nothing else holds the row's commit timestamp.
    await burnXids(a.sql, XIDS_PAST_TWO_SEGMENTS);
    const after = (await a.sql.unsafe<{ xid: string }[]>(`SELECT pg_catalog.pg_current_xact_id()::xid::text AS xid`))[0]?.xid ?? '';
    await eventually(
      async () => {
        await a.sql.unsafe(`SELECT pg_catalog.pg_log_standby_snapshot()`);
        await flushWal(a.sql);
        return slotsPast(a.sql, after, '^pgmesh_[0-9]+_n');
      },
      { timeoutMs: 90_000, what: "n1's peer slots to confirm past the burnt xids" },
    );
    await freezeAllDatabases(a.sql, a.server.dsn);
    assert.equal(await hasCommitTimestamp(a.sql, xmin), true, "n1 keeps the version's commit timestamp: n2's older change is not in yet");

    await releaseLinks(cluster, held);
    await barrier(cluster);
    const values = { n1: await valueOf(a), n2: await valueOf(p), n3: await valueOf(q) };
    assert.deepEqual(values, { n1: 'newer, from n3', n2: 'newer, from n3', n3: 'newer, from n3' }, 'the newer version wins on every node');
  });
});

test('the version horizon moves on once every peer is heard from, and stays behind a held peer', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, tuning: { tombstoneGcIntervalMs: 200, tombstoneMarginMs: 0 } }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await cluster.startAgents();
    await horizonSlot(n1.sql);
    const written = async () => {
      const rows = await n1.sql.unsafe<{ xmin: string }[]>(`INSERT INTO t VALUES ((SELECT coalesce(max(k), 0) + 1 FROM t), 'x') RETURNING xmin::text AS xmin`);
      return rows[0]?.xmin ?? '';
    };
    const passes = async (xid: string) => {
      // A slot's catalog_xmin moves at running-transaction records (the background writer logs one every 15 s).
      await n1.sql.unsafe(`SELECT pg_catalog.pg_log_standby_snapshot()`);
      return slotsPast(n1.sql, xid, '^pgmesh__versions_');
    };

    const first = await written();
    await barrier(cluster);
    await eventually(() => passes(first), { timeoutMs: 60_000, what: 'the horizon slot to pass a write every peer is past' });

    await holdLinks(cluster, [{ from: 'n2', to: 'n1' }]);
    const second = await written();
    const steps = async () => (await n1.sql.unsafe<{ at: string }[]>(`SELECT updated_at::text AS at FROM pgmesh.version_horizon`))[0]?.at ?? '';
    // Steps with running-transaction records between them: each would let the slot pass the write if S allowed it.
    for (let i = 0; i < 5; i++) {
      await n1.sql.unsafe(`SELECT pg_catalog.pg_log_standby_snapshot()`);
      const before = await steps();
      await eventually(async () => (await steps()) !== before, { what: 'a step of the version horizon' });
    }
    assert.equal(await passes(second), false, 'a write made while n2 is held stays held');
    assert.equal(await hasCommitTimestamp(n1.sql, second), true);

    // Status shows what is kept; a horizon that stays behind for long is a warning line.
    const status = await clusterStatus(cluster.config, silentLogger);
    const horizon = status.nodes.find((n) => n.name === 'n1')?.versionHorizon;
    assert.ok(horizon && horizon.stableTs !== null && horizon.keptSince === horizon.stableTs, `n1's horizon: ${JSON.stringify(horizon)}`);
    assert.ok(horizon.slotStatus !== 'missing' && horizon.slotStatus !== 'lost' && (horizon.retainedBytes ?? 0) > 0);
    assert.doesNotMatch(formatStatus(status), /keeps row versions/);
    const later = { ...status, at: new Date(Date.parse(horizon.stableTs) + 20 * 60_000).toISOString() };
    assert.match(formatStatus(later), /^! node n1 keeps row versions written since \S+ \(.* of WAL, \d+ xids\): some peer has not been heard from since/m);
  });
});

test('a node marked removed drops its version horizon slot, its agent still running', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, tuning: { tombstoneGcIntervalMs: 200 } }, async (cluster) => {
    const n1 = cluster.node('n1');
    await cluster.startAgents();
    await horizonSlot(n1.sql);
    // What "pgmesh node remove" writes on the leaving node (it then drops the slot itself; here the agent must).
    await n1.sql.unsafe(`INSERT INTO pgmesh.membership (state, source, phase) VALUES ('removed', '-', 'removed')`);
    await eventually(async () => (await n1.sql.unsafe(`SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'pgmesh\\_\\_versions\\_%'`)).length === 0, {
      what: "n1's agent to drop its version horizon slot",
    });
  });
});

test('an invalidated version horizon slot is made again, with a warning', { timeout: 120_000 }, async () => {
  // A slot keeps at most 1 MB of WAL here: a few WAL segments invalidate it (its peers' slots too: no agents run).
  await withCluster({ nodes: 2, schema: SCHEMA, settings: { max_slot_wal_keep_size: '1MB' } }, async (cluster) => {
    const n1 = cluster.node('n1');
    const warnings: string[] = [];
    const keeper = new VersionHorizonKeeper({ localNode: 'n1', localDsn: n1.server.dsn, intervalMs: 60_000, marginMs: 0, logger: recordingLogger(warnings) });
    try {
      await keeper.step();
      await horizonSlot(n1.sql);
      const status = async () =>
        (await n1.sql.unsafe<{ wal_status: string }[]>(`SELECT wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'pgmesh\\_\\_versions\\_%'`))[0]?.wal_status;
      await eventually(
        async () => {
          await n1.sql.unsafe(`INSERT INTO t VALUES ((SELECT coalesce(max(k), 0) + 1 FROM t), 'x')`);
          await n1.sql.unsafe(`SELECT pg_catalog.pg_switch_wal()`);
          await n1.sql.unsafe(`CHECKPOINT`);
          return (await status()) === 'lost';
        },
        { what: 'the horizon slot to be invalidated' },
      );
      assert.deepEqual(warnings, []);
      await keeper.step();
      assert.notEqual(await status(), 'lost', 'the slot is made again');
      assert.equal(warnings.length, 1);
      assert.match(warnings[0] ?? '', /version horizon slot pgmesh__versions_\d+ was invalidated \(max_slot_wal_keep_size\) and is created again/);
    } finally {
      await keeper.stop();
    }
  });
});
