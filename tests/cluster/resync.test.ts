/**
 * Topology: 3 nodes (n1, n2, n3, full mesh, agents in this process), bank transfers on a delta balance and writes of
 * shared keys on the nodes that are up.
 * Scenarios, one per test:
 * - n3 is down while n1 keeps writing; n1 keeps only 32 MB of WAL for a slot (max_slot_wal_keep_size), so its slot
 *   for n3 is invalidated. `status` says n3 needs a resync and why; once n3 is back, `node resync n3` copies it anew
 *   from n2 under load, and every node ends hash-equal with exact balances while n3 writes again. Without the code
 *   under test: nothing can bring n3 back (its stream from n1 fails for ever), and status says nothing.
 * - n3 is removed under load and comes back by `node resync n3`, its rows replaced by n1's (rows that n3 itself
 *   wrote before it left among them). Without the code under test: the copy of n3's own rows fails (no origin that
 *   reads as n3 on n3), and n1 and n2 never stream from n3 again (their streams stopped when n3 was unlinked).
 * - n3 has written something that n2 never received (n2's agent is down): the resync is refused without --force,
 *   and with it says what is lost.
 * - a node add that failed (the source's agent is down, so it cannot catch up) leaves n3 'joining' and slots for it:
 *   status shows both, with what to run. Without the code under test: status says nothing of them.
 * - n3 is restored from a file-level backup after writing rows that reached n1 and n2: status says it was restored
 *   (n1 and n2 applied its WAL past where its WAL now is), the resync needs --force (what it wrote since the restore
 *   cannot reach the others), and its rows written before the restore come back from the copy. Without the code
 *   under test: the restored n3 goes on streaming and misses those rows for good, and status says nothing.
 */
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterStatus } from '../../src/cluster/cluster-ops.ts';
import { formatStatus } from '../../src/cli/status.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { removeNode } from '../../src/membership/node-remove.ts';
import { resyncNode } from '../../src/membership/node-resync.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { MIXED_DDL, MIXED_SCHEMA, assertMixedConverged, declareDeltaBalances, startMixedLoad, type MixedLoad } from '../support/mixed-load.ts';
import { pgmesh } from '../support/cli.ts';
import { invalidateSlot, linkNames } from '../support/slots.ts';

async function membershipState(node: TestNode): Promise<string | undefined> {
  const rows = await node.sql.unsafe<{ state: string }[]>(`SELECT state FROM pgmesh.membership`);
  return rows[0]?.state;
}

/** After a resync: the others stream from n3 again (reload), n3's agent starts and n3 writes; everything is checked. */
async function finishResync(cluster: TestCluster, n3: TestNode, load: MixedLoad): Promise<void> {
  await cluster.reloadAgents();
  await cluster.startAgents(['n3']);
  await load.progress(30);
  load.addWriter(n3);
  await load.progress(50);
  await load.stop();
  await assertMixedConverged(cluster, load);
}

test('node resync: a slot invalidated by max_slot_wal_keep_size while n3 is down is reported by status and healed', { timeout: 600_000 }, async (t) => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    await declareDeltaBalances(cluster);
    await cluster.startAgents();
    const [n1, n2, n3] = ['n1', 'n2', 'n3'].map((name) => cluster.node(name));
    assert.ok(n1 && n2 && n3);
    const load = startMixedLoad([n1, n2]);
    await load.progress(30);
    // n3's machine goes down; n1 and n2 go on writing.
    const toN3 = (await linkNames(n3, 'n1')).slot;
    await cluster.stopAgent('n3');
    await n3.server.stop();
    await invalidateSlot(n1, toN3, [(await linkNames(n2, 'n1')).slot]);
    await load.progress(30);

    const down = await clusterStatus(cluster.config, silentLogger);
    const reasons = down.nodes.find((n) => n.name === 'n3')?.needsResync ?? [];
    assert.deepEqual(reasons.map((r) => `${r.kind} ${r.peer}`), ['slot_invalidated n1'], `status while n3 is down: ${formatStatus(down)}`);
    assert.match(formatStatus(down), new RegExp(`^! node n3 needs a resync: slot ${toN3} on n1 was invalidated \\(wal_removed: .*"pgmesh node resync n3"$`, 'm'));

    await n3.server.start();
    await eventually(async () => (await n3.sql.unsafe(`SELECT 1`)).length === 1, { timeoutMs: 60_000, what: 'n3 to answer again' });
    const back = await pgmesh(['status', '--json'], { config: cluster.configPath });
    assert.equal(back.code, 1, `status fails while a node needs a resync: ${back.output}`);
    const json = JSON.parse(back.stdout) as { nodes: { name: string; needsResync: { kind: string; peer: string }[] }[] };
    assert.deepEqual(json.nodes.find((n) => n.name === 'n3')?.needsResync.map((r) => `${r.kind} ${r.peer}`), ['slot_invalidated n1'], 'still needed once n3 is back');

    const result = await resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n2' });
    t.diagnostic(`resync copied ${result.rows} rows in ${result.copySeconds} s`);
    assert.equal(result.drained, true);
    assert.equal(await membershipState(n3), 'member');
    const healed = await clusterStatus(cluster.config, silentLogger);
    assert.deepEqual(healed.nodes.map((n) => n.needsResync.length), [0, 0, 0], `no node needs a resync: ${formatStatus(healed)}`);
    await finishResync(cluster, n3, load);
  });
});

test('node resync: a node removed under load comes back by resync', { timeout: 600_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    await declareDeltaBalances(cluster);
    await cluster.startAgents();
    const n3 = cluster.node('n3');
    const load = startMixedLoad(cluster.nodes);
    await load.progress(50);
    await load.stopWriter(n3);
    assert.equal((await removeNode(cluster.config, silentLogger, { name: 'n3' })).drained, true);
    await cluster.stopAgent('n3');
    await load.progress(30);
    const result = await resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    assert.deepEqual(result.warnings, []);
    assert.equal(result.nodeSlot, 3, 'n3 keeps its slot number');
    assert.equal(await membershipState(n3), 'member');
    await finishResync(cluster, n3, load);
  });
});

test('node resync: changes of n3 that a peer never received make the resync need --force, which says they are lost', { timeout: 600_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    // n2's agent is down: nothing of n3's reaches n2.
    await cluster.startAgents(['n1', 'n3']);
    const n3 = cluster.node('n3');
    await n3.sql.unsafe(`INSERT INTO items (id, val) VALUES (1001, 'written on n3 only')`);
    await cluster.stopAgent('n3');
    await assert.rejects(
      resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1', drainTimeoutMs: 3000 }),
      /n2 did not receive n3's changes .* would be lost .* --force/,
    );
    const unknown = await pgmesh(['node', 'resync', 'n9'], { config: cluster.configPath });
    assert.equal(unknown.code, 2, `a node that is not in the configuration, without --dsn, is bad input: ${unknown.output}`);
    assert.match(unknown.stderr, /node n9 is not in the configuration: give its connection string with --dsn/);
    assert.equal(await membershipState(n3).catch(() => undefined), undefined, 'a refused resync changes nothing');
    const result = await resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1', force: true, drainTimeoutMs: 3000 });
    assert.equal(result.drained, false);
    assert.match(result.warnings.join('\n'), /would be lost.*--force/);
  });
});

/** A file-level copy of a stopped server's data folder (ownership kept: the server runs as another user). */
function copyFolder(from: string, to: string): void {
  const done = spawnSync('cp', ['-a', from, to]);
  assert.equal(done.status, 0, `cp -a ${from} ${to}: ${done.stderr.toString()}`);
}

test('node resync: a node restored from an older backup is reported and copied anew', { timeout: 600_000 }, async () => {
  await withCluster({ nodes: 3, schema: MIXED_SCHEMA }, async (cluster) => {
    await declareDeltaBalances(cluster);
    await cluster.startAgents();
    const [n1, n2, n3] = ['n1', 'n2', 'n3'].map((name) => cluster.node(name));
    assert.ok(n1 && n2 && n3);
    // The backup holds a change of n1's that n3 applied.
    await n1.sql.unsafe(`INSERT INTO items (id, val) VALUES (3000, 'from n1 before the backup')`);
    await eventually(async () => (await n3.sql.unsafe(`SELECT 1 FROM items WHERE id = 3000`)).length === 1, { timeoutMs: 60_000, what: 'n1\'s row on n3' });
    await cluster.stopAgent('n3');
    await n3.server.stop();
    const backup = `${n3.server.dataDir}.backup`;
    copyFolder(n3.server.dataDir, backup);
    await n3.server.start();
    await cluster.startAgents(['n3']);
    // Written on n3 after the backup; they reach n1 and n2.
    await n3.sql.unsafe(`INSERT INTO items (id, val) SELECT g, 'after the backup' FROM generate_series(2001, 2050) g`);
    for (const node of [n1, n2]) {
      await eventually(async () => (await node.sql.unsafe(`SELECT 1 FROM items WHERE id BETWEEN 2001 AND 2050`)).length === 50, { timeoutMs: 60_000, what: `n3's rows on ${node.name}` });
    }
    // And n3 applies (and acknowledges) a change of n1's after the backup.
    await n1.sql.unsafe(`INSERT INTO items (id, val) VALUES (3001, 'from n1 after the backup')`);
    const written = (await n1.sql.unsafe<{ lsn: string }[]>(`SELECT pg_current_wal_lsn()::text AS lsn`))[0]?.lsn ?? '0/0';
    await eventually(
      async () => (await n1.sql.unsafe(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $2 AND confirmed_flush_lsn >= $1::pg_lsn`, [written, (await linkNames(n3, 'n1')).slot])).length === 1,
      { timeoutMs: 60_000, what: 'n3 to acknowledge n1\'s change' },
    );
    await cluster.stopAgent('n3');
    await n3.server.stop();
    spawnSync('rm', ['-rf', n3.server.dataDir]);
    copyFolder(backup, n3.server.dataDir);
    await n3.server.start();
    await eventually(async () => (await n3.sql.unsafe(`SELECT 1`)).length === 1, { timeoutMs: 60_000, what: 'n3 to answer again' });
    assert.equal((await n3.sql.unsafe(`SELECT 1 FROM items WHERE id BETWEEN 2001 AND 2050`)).length, 0, 'the restored n3 lacks them');

    const status = await clusterStatus(cluster.config, silentLogger);
    const reasons = status.nodes.find((n) => n.name === 'n3')?.needsResync ?? [];
    assert.ok(reasons.some((r) => r.kind === 'restored' && r.peer === 'n1'), formatStatus(status));
    // n3's agent refuses n1's stream: n1's slot says n3 acknowledged more than n3 holds.
    await cluster.startAgents(['n3']);
    const refusal = () => cluster.agents.get('n3')?.status().peers.find((p) => p.peer === 'n1')?.lastError?.message ?? '';
    await eventually(() => /restored from a backup/.test(refusal()), { what: () => `n3's agent to refuse n1's stream (last error: ${refusal()})` });
    await cluster.stopAgent('n3');
    assert.deepEqual(status.nodes.filter((n) => n.name !== 'n3').map((n) => n.needsResync.length), [0, 0], formatStatus(status));

    await assert.rejects(resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn }), /n3 was restored from a backup .* --force/);
    const result = await resyncNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, force: true });
    assert.match(result.warnings.join('\n'), /restored/);
    assert.equal((await n3.sql.unsafe(`SELECT 1 FROM items WHERE id BETWEEN 2001 AND 2050`)).length, 50, 'what n3 wrote and the others received is back on n3');
    await cluster.reloadAgents();
    await cluster.startAgents(['n3']);
    const load = startMixedLoad(cluster.nodes);
    await load.progress(50);
    await load.stop();
    await assertMixedConverged(cluster, load);
  });
});

test('status: a failed node add leaves n3 joining and slots holding WAL for it, and says so', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 2, schema: MIXED_SCHEMA }, async (cluster) => {
    // n1's agent is down: n1 cannot catch up with n2's marker, so the add stops after making its slots.
    await cluster.startAgents(['n2']);
    const n3 = await cluster.startServer('n3', MIXED_DDL);
    await assert.rejects(addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1', catchUpTimeoutMs: 2000 }), /has not applied the changes of n2/);
    // Not in the configuration (node add lists a node only once it joined): a slot for a node nobody knows.
    const unlisted = await clusterStatus(cluster.config, silentLogger);
    const toN3 = (await linkNames(n3, 'n2')).slot;
    assert.match(toN3, /^pgmesh_[0-9]+_n3$/, "a slot made now carries its database's OID");
    assert.deepEqual(unlisted.leftoverSlots.map((l) => `${l.node} ${l.slot}`), [`n2 ${toN3}`], formatStatus(unlisted));
    assert.match(formatStatus(unlisted), new RegExp(`^! slot ${toN3} on n2 holds .* of WAL for n3, which is not in the configuration .*"pgmesh node add n3" again`, 'm'));
    // Listed: its state and the slot, with what to run.
    const listed = await clusterStatus({ ...cluster.config, nodes: [...cluster.config.nodes, { name: 'n3', dsn: n3.server.dsn }] }, silentLogger);
    assert.equal(listed.nodes.find((n) => n.name === 'n3')?.membership?.state, 'joining');
    assert.deepEqual(listed.leftoverSlots.map((l) => `${l.node} ${l.slot}`), [`n2 ${toN3}`], formatStatus(listed));
    assert.match(formatStatus(listed), /^! node n3 is joining from n1: waiting for the source to catch up.*"pgmesh node add n3"/m);
    assert.match(formatStatus(listed), /^n3 .* joining /m);
  });
});
