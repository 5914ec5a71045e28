/**
 * Topology: 3 nodes (n1, n2, n3), full mesh, agents in this process; one cluster shared by the scenarios below,
 * which run one after the other, each on its own rows or its own table.
 * Scenario: every conflict type (PostgreSQL 18 names) is provoked by "holding the streams": the agents of the
 * writers that must not see each other's write are stopped while they write, and n3's agent runs, so n3 receives
 * the two writes in a known order (it waits for the first before the second is made). Then the held agents start
 * and apply the other side's write. Each scenario asserts the rows on every node, the conflict records on every
 * node (type, resolution, both versions and both rows; the local node of a conflict is the one applying the
 * remote change), the agents' per-peer conflict counters (agents restart per scenario, so they start at zero),
 * and where they apply tombstones, exceptions, replay and discard, pauses and resume.
 * Without the code under test: concurrent writes leave nodes different (each keeps what arrived last), a
 * delete is undone by an older update that arrives after it (no tombstone), a change that fails on its data stops
 * replication for good or is lost, a duplicate of a deferrable unique constraint is committed, conflicts are
 * neither recorded nor counted, table policies and delta columns have no effect, and a paused peer cannot be
 * resumed. (Secondary unique keys taken on two nodes converge: tests/cluster/unique-keys.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { discardException, replayException, resumePeer, setDeltaColumns, setTablePolicy, type ExceptionRecord } from '../../src/cluster/repair.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { eventually, localDdl, withCluster, type TestNode } from '../support/cluster.ts';
import {
  baseline,
  commit,
  conflictsSince,
  counters,
  countersOf,
  exceptionsSince,
  expectConflicts,
  expectCounters,
  peerStatus,
  restartAgents,
  rowOf,
  rowsOn,
  rowVersion,
  tombstoneVersion,
  waitExceptions,
  waitRow,
  type Conflict,
  type Node,
  type PerNode,
} from '../support/conflicts.ts';

const SCHEMA = `
CREATE TABLE item (id integer PRIMARY KEY, v text);
CREATE TABLE ck (id integer PRIMARY KEY, v text);
CREATE TABLE dq (id integer PRIMARY KEY, code text UNIQUE DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE kl (id integer PRIMARY KEY, v text);
CREATE TABLE ar (id integer PRIMARY KEY, v text);
CREATE TABLE pz (id integer PRIMARY KEY, v text);
CREATE TABLE st (id integer PRIMARY KEY, code text);
CREATE TABLE ep (id integer PRIMARY KEY, v text);
CREATE TABLE acct (id integer PRIMARY KEY, balance numeric(12, 2) NOT NULL, note text);
`;

const conflict = (c: Omit<Conflict, 'relation'> & { relation?: string }): Conflict => ({ ...c, relation: c.relation ?? 'public.item' });
const NO_LOCAL = { ts: null, node: null, row: null };

// ---- the scenarios ----

test('every conflict type is detected, resolved by the table policy, recorded and counted on the right node', { timeout: 300_000 }, async (t) => {
  await withCluster(
    { nodes: 3, schema: SCHEMA, tuning: { retryBaseMs: 100, retryMaxMs: 1_000, progressPollMs: 100 } },
    async (cluster) => {
      const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
      let failed = false;
      const step = async (name: string, body: () => Promise<void>) =>
        t.test(name, async () => {
          try {
            await body();
          } catch (error) {
            if (!failed) process.stderr.write(`\n${cluster.diagnostics()}\n`);
            failed = true;
            throw error;
          }
        });

      // Rows that scenarios later change concurrently. Each is written by the node that writes it first in its
      // scenario, so no scenario compares these seed versions with another node's change (conflicts come only
      // from the scenario, whatever the time since seeding and the conflict window).
      await cluster.startAgents();
      await commit(n1, `INSERT INTO item VALUES (2, 'seed'), (4, 'seed'), (6, 'seed')`, `INSERT INTO kl VALUES (1, 'seed')`, `INSERT INTO ar VALUES (1, 'seed')`);
      await commit(n1, `INSERT INTO pz VALUES (1, 'seed')`, `INSERT INTO acct VALUES (1, 100, 'seed')`, `INSERT INTO dq VALUES (5, 'X'), (6, 'Y')`);
      await commit(n2, `INSERT INTO item VALUES (3, 'seed')`);
      await cluster.waitConverged(['item', 'kl', 'ar', 'pz', 'acct', 'dq']);
      // Policies are read when an agent starts streaming: set them on every node before the scenarios.
      for (const node of cluster.nodes) {
        await setTablePolicy(node.sql, { schema: 'public', name: 'kl' }, { conflictPolicy: 'keep_local' });
        await setTablePolicy(node.sql, { schema: 'public', name: 'ar' }, { conflictPolicy: 'apply_remote' });
        await setTablePolicy(node.sql, { schema: 'public', name: 'pz' }, { conflictPolicy: 'pause' });
        await setTablePolicy(node.sql, { schema: 'public', name: 'st' }, { exceptionPolicy: 'skip_transaction' });
        await setTablePolicy(node.sql, { schema: 'public', name: 'ep' }, { exceptionPolicy: 'pause' });
        await setDeltaColumns(node.sql, { schema: 'public', name: 'acct' }, ['balance']);
      }

      await step('insert_exists: the same key inserted on n1 and n2; the later insert wins on every node', async () => {
        const since = await baseline(cluster);
        await restartAgents(cluster, ['n1', 'n3']);
        const ts1 = await commit(n1, `INSERT INTO item VALUES (1, 'from n1')`);
        const row1 = { id: 1, v: 'from n1' };
        await waitRow(n3, 'item', 1, row1);
        const ts2 = await commit(n2, `INSERT INTO item VALUES (1, 'from n2')`);
        const row2 = { id: 1, v: 'from n2' };
        assert.ok(ts2 > ts1);
        await waitRow(n1, 'item', 1, row2);
        await waitRow(n3, 'item', 1, row2);
        await cluster.startAgents(['n2']);
        await cluster.waitConverged(['item']);
        assert.deepEqual(await rowsOn(cluster, 'item', 1), { n1: row2, n2: row2, n3: row2 });
        // On n1 and n3 the local row is n1's (on n3 it was applied from n1, so its version names n1).
        const lost = { ts: ts1, node: 'n1', row: row1 };
        const won = { ts: ts2, node: 'n2', row: row2 };
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ peer: 'n2', key: '[1]', type: 'insert_exists', resolution: 'apply_remote', local: lost, remote: won })],
          n2: [conflict({ peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'keep_local', local: won, remote: lost })],
          n3: [conflict({ peer: 'n2', key: '[1]', type: 'insert_exists', resolution: 'apply_remote', local: lost, remote: won })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        for (const node of cluster.nodes) assert.deepEqual(await rowVersion(node, 'item', 1), { ts: ts2, node: 'n2' }, node.name);
      });

      await step('update_origin_differs: one row updated on n1 and on n2; the later update wins on every node', async () => {
        const since = await baseline(cluster);
        await restartAgents(cluster, ['n1', 'n3']);
        const ts1 = await commit(n1, `UPDATE item SET v = 'n1 was here' WHERE id = 2`);
        const row1 = { id: 2, v: 'n1 was here' };
        await waitRow(n3, 'item', 2, row1);
        const ts2 = await commit(n2, `UPDATE item SET v = 'n2 was here' WHERE id = 2`);
        const row2 = { id: 2, v: 'n2 was here' };
        await waitRow(n1, 'item', 2, row2);
        await cluster.startAgents(['n2']);
        await cluster.waitConverged(['item']);
        assert.deepEqual(await rowsOn(cluster, 'item', 2), { n1: row2, n2: row2, n3: row2 });
        const older = { ts: ts1, node: 'n1', row: row1 };
        const newer = { ts: ts2, node: 'n2', row: row2 };
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ peer: 'n2', key: '[2]', type: 'update_origin_differs', resolution: 'apply_remote', local: older, remote: newer })],
          n2: [conflict({ peer: 'n1', key: '[2]', type: 'update_origin_differs', resolution: 'keep_local', local: newer, remote: older })],
          // n3 applied n1's update without a conflict (the row was n1's), then n2's against it.
          n3: [conflict({ peer: 'n2', key: '[2]', type: 'update_origin_differs', resolution: 'apply_remote', local: older, remote: newer })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
      });

      await step('update_missing: n2 updates a row that n1 deletes later; the delete wins and the row stays deleted everywhere', async () => {
        const since = await baseline(cluster);
        await restartAgents(cluster, ['n3']);
        const tsUpdate = await commit(n2, `UPDATE item SET v = 'updated on n2' WHERE id = 3`);
        const updated = { id: 3, v: 'updated on n2' };
        await waitRow(n3, 'item', 3, updated);
        const tsDelete = await commit(n1, `DELETE FROM item WHERE id = 3`);
        await waitRow(n3, 'item', 3, null);
        await cluster.startAgents(['n1', 'n2']);
        const update = { ts: tsUpdate, node: 'n2', row: updated };
        const del = { ts: tsDelete, node: 'n1', row: { id: 3 } };
        const expected: PerNode<Conflict[]> = {
          // n1 meets the update after its own delete: the tombstone is newer, the update is dropped.
          n1: [conflict({ peer: 'n2', key: '[3]', type: 'update_missing', resolution: 'skip', local: { ts: tsDelete, node: 'n1', row: null }, remote: update })],
          n2: [conflict({ peer: 'n1', key: '[3]', type: 'delete_origin_differs', resolution: 'apply_remote', local: update, remote: del })],
          n3: [conflict({ peer: 'n1', key: '[3]', type: 'delete_origin_differs', resolution: 'apply_remote', local: update, remote: del })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        await cluster.waitConverged(['item']);
        assert.deepEqual(await rowsOn(cluster, 'item', 3), { n1: null, n2: null, n3: null });
        for (const node of cluster.nodes) assert.deepEqual(await tombstoneVersion(node, 'item', 3), { ts: tsDelete, node: 'n1' }, node.name);
      });

      await step('update_missing: n1 deletes a row that n2 updates later; the update wins and the row comes back everywhere', async () => {
        const since = await baseline(cluster);
        await restartAgents(cluster, ['n3']);
        const tsDelete = await commit(n1, `DELETE FROM item WHERE id = 4`);
        await waitRow(n3, 'item', 4, null);
        const tsUpdate = await commit(n2, `UPDATE item SET v = 'updated on n2' WHERE id = 4`);
        const updated = { id: 4, v: 'updated on n2' };
        await waitRow(n3, 'item', 4, updated);
        await cluster.startAgents(['n1', 'n2']);
        await cluster.waitConverged(['item']);
        assert.deepEqual(await rowsOn(cluster, 'item', 4), { n1: updated, n2: updated, n3: updated });
        const tomb = { ts: tsDelete, node: 'n1', row: null };
        const update = { ts: tsUpdate, node: 'n2', row: updated };
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ peer: 'n2', key: '[4]', type: 'update_missing', resolution: 'apply_remote', local: tomb, remote: update })],
          n2: [conflict({ peer: 'n1', key: '[4]', type: 'delete_origin_differs', resolution: 'keep_local', local: update, remote: { ts: tsDelete, node: 'n1', row: { id: 4 } } })],
          n3: [conflict({ peer: 'n2', key: '[4]', type: 'update_missing', resolution: 'apply_remote', local: tomb, remote: update })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        for (const node of cluster.nodes) assert.deepEqual(await rowVersion(node, 'item', 4), { ts: tsUpdate, node: 'n2' }, node.name);
      });

      await step('delete_origin_differs: n1 deletes a row that n2 wrote moments before; deleted everywhere', async () => {
        await restartAgents(cluster, ['n1', 'n2', 'n3']);
        const tsInsert = await commit(n2, `INSERT INTO item VALUES (5, 'from n2')`);
        await cluster.waitConverged(['item']);
        const since = await baseline(cluster);
        // Not concurrent, but within the conflict window (10 s): PostgreSQL 18 reports it as well.
        const tsDelete = await commit(n1, `DELETE FROM item WHERE id = 5`);
        await cluster.waitConverged(['item']);
        assert.deepEqual(await rowsOn(cluster, 'item', 5), { n1: null, n2: null, n3: null });
        const local = { ts: tsInsert, node: 'n2', row: { id: 5, v: 'from n2' } };
        const remote = { ts: tsDelete, node: 'n1', row: { id: 5 } };
        const expected: PerNode<Conflict[]> = {
          n1: [],
          n2: [conflict({ peer: 'n1', key: '[5]', type: 'delete_origin_differs', resolution: 'apply_remote', local, remote })],
          n3: [conflict({ peer: 'n1', key: '[5]', type: 'delete_origin_differs', resolution: 'apply_remote', local, remote })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
      });

      await step('delete_missing: the same row deleted on n1 and on n2; every tombstone ends with the later delete', async () => {
        const since = await baseline(cluster);
        await restartAgents(cluster, ['n3']);
        const ts1 = await commit(n1, `DELETE FROM item WHERE id = 6`);
        await waitRow(n3, 'item', 6, null);
        const ts2 = await commit(n2, `DELETE FROM item WHERE id = 6`);
        await eventually(async () => (await tombstoneVersion(n3, 'item', 6))?.node === 'n2', { what: `n2's delete applied on n3` });
        await cluster.startAgents(['n1', 'n2']);
        const first = { ts: ts1, node: 'n1' };
        const second = { ts: ts2, node: 'n2' };
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ peer: 'n2', key: '[6]', type: 'delete_missing', resolution: 'skip', local: { ...first, row: null }, remote: { ...second, row: { id: 6 } } })],
          n2: [conflict({ peer: 'n1', key: '[6]', type: 'delete_missing', resolution: 'skip', local: { ...second, row: null }, remote: { ...first, row: { id: 6 } } })],
          n3: [conflict({ peer: 'n2', key: '[6]', type: 'delete_missing', resolution: 'skip', local: { ...first, row: null }, remote: { ...second, row: { id: 6 } } })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        await cluster.waitConverged(['item']);
        for (const node of cluster.nodes) assert.deepEqual(await tombstoneVersion(node, 'item', 6), second, node.name);
      });

      await step('a change that fails on its data (a check constraint only n1 has) is kept as an exception; replayed after the fix, or discarded', async () => {
        const since = await baseline(cluster);
        // Schema drift: only n1 limits ck.v to 5 characters.
        await localDdl(n1, `ALTER TABLE ck ADD CONSTRAINT ck_v_short CHECK (length(v) <= 5)`);
        await restartAgents(cluster, ['n1', 'n2', 'n3']);
        const ts2 = await commit(n2, `INSERT INTO ck VALUES (2, 'too long')`);
        await commit(n2, `INSERT INTO ck VALUES (3, 'ok')`);
        const ts4 = await commit(n2, `INSERT INTO ck VALUES (4, 'also long')`);
        // Replication goes on behind the exceptions.
        await waitRow(n1, 'ck', 3, { id: 3, v: 'ok' });
        const found = await waitExceptions(n1, since, 2);
        const pick = (e: ExceptionRecord) => ({ peer: e.peer, relation: e.relation, kind: e.kind, key: e.key, change: e.change, remoteTs: e.remoteTs, sqlstate: e.sqlstate, conflictType: e.conflictType, state: e.state });
        const insert = (id: string, v: string, ts: string) => ({
          peer: 'n2',
          relation: 'public.ck',
          kind: 'insert',
          key: { id },
          change: { kind: 'insert', relation: 'public.ck', key: { id }, new: { id, v }, old: null },
          remoteTs: ts,
          sqlstate: '23514',
          conflictType: null,
          state: 'open',
        });
        assert.deepEqual(found.map(pick), [insert('2', 'too long', ts2), insert('4', 'also long', ts4)]);
        for (const e of found) assert.match(e.error, /violates check constraint "ck_v_short"/);
        const status = peerStatus(cluster, 'n1', 'n2');
        assert.equal(status.state, 'streaming');
        assert.equal(status.exceptions, 2);
        for (const node of [n2, n3]) assert.deepEqual(await exceptionsSince(node, since), [], node.name);

        // Replaying before the cause is fixed fails and keeps the exception open.
        const [first, second] = found.map((e) => e.id);
        await assert.rejects(replayException(n1.server.dsn, 'n1', first ?? 0, silentLogger), /replaying exception \d+ failed again/);
        assert.equal((await exceptionsSince(n1, since))[0]?.state, 'open');
        // The operator drops the drifted constraint and replays row 2; row 4 is deleted where it was written, and
        // its exception discarded.
        await localDdl(n1, `ALTER TABLE ck DROP CONSTRAINT ck_v_short`);
        await replayException(n1.server.dsn, 'n1', first ?? 0, silentLogger);
        const tsDelete = await commit(n2, `DELETE FROM ck WHERE id = 4`);
        await discardException(n1.sql, second ?? 0, 'row 4 deleted on n2');
        await cluster.waitConverged(['ck']);
        for (const node of cluster.nodes) {
          const rows = await node.sql.unsafe<{ id: number; v: string }[]>(`SELECT id, v FROM ck ORDER BY id`);
          assert.deepEqual(rows.map((r) => [r.id, r.v]), [[2, 'too long'], [3, 'ok']], node.name);
        }
        // The replayed row carries n2's version, as if it had been applied from the stream.
        assert.deepEqual(await rowVersion(n1, 'ck', 2), { ts: ts2, node: 'n2' });
        assert.deepEqual((await exceptionsSince(n1, since)).map((e) => [e.state, e.note]), [['replayed', null], ['discarded', 'row 4 deleted on n2']]);
        // A change that fails on its data is no conflict; the delete of a row n1 never had is one.
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ relation: 'public.ck', peer: 'n2', key: '[4]', type: 'delete_missing', resolution: 'skip', local: NO_LOCAL, remote: { ts: tsDelete, node: 'n2', row: { id: 4 } } })],
          n2: [],
          n3: [],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
      });

      await step('a deferrable unique constraint taken on both sides: not resolved (it is checked at commit); the change goes to the exception table', async () => {
        const since = await baseline(cluster);
        await restartAgents(cluster, ['n1', 'n3']);
        const ts1 = await commit(n1, `INSERT INTO dq VALUES (1, 'A')`);
        await waitRow(n3, 'dq', 1, { id: 1, code: 'A' });
        const ts2 = await commit(n2, `INSERT INTO dq VALUES (2, 'A')`, `INSERT INTO dq VALUES (3, 'C')`);
        await cluster.startAgents(['n2']);
        const pick = (e: ExceptionRecord) => [e.peer, e.key, e.conflictType, e.sqlstate, e.remoteTs];
        for (const node of [n1, n3]) {
          assert.deepEqual((await waitExceptions(node, since, 1)).map(pick), [['n2', { id: '2' }, 'insert_exists', '23505', ts2]], node.name);
          // The rest of the transaction is applied (skip_change).
          await waitRow(node, 'dq', 3, { id: 3, code: 'C' });
        }
        assert.deepEqual((await waitExceptions(n2, since, 1)).map(pick), [['n1', { id: '1' }, 'insert_exists', '23505', ts1]]);
        const a1 = { ts: ts1, node: 'n1', row: { id: 1, code: 'A' } };
        const a2 = { ts: ts2, node: 'n2', row: { id: 2, code: 'A' } };
        const onN1 = [conflict({ relation: 'public.dq', peer: 'n2', key: '[2]', type: 'insert_exists', resolution: 'exception', local: a1, remote: a2 })];
        const expected: PerNode<Conflict[]> = {
          n1: onN1,
          n2: [conflict({ relation: 'public.dq', peer: 'n1', key: '[1]', type: 'insert_exists', resolution: 'exception', local: a2, remote: a1 })],
          n3: onN1,
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        for (const [node, peer] of [['n1', 'n2'], ['n3', 'n2'], ['n2', 'n1']] as const) assert.equal(peerStatus(cluster, node, peer).state, 'streaming');
        // Deferred means checked at commit: a transaction that swaps two values (a duplicate in between) applies.
        await commit(n1, `UPDATE dq SET code = 'Y' WHERE id = 5`, `UPDATE dq SET code = 'X' WHERE id = 6`);
        for (const node of [n2, n3]) await waitRow(node, 'dq', 6, { id: 6, code: 'X' });
        assert.deepEqual(await rowsOn(cluster, 'dq', 5), { n1: { id: 5, code: 'Y' }, n2: { id: 5, code: 'Y' }, n3: { id: 5, code: 'Y' } });
        for (const node of cluster.nodes) {
          assert.equal((await exceptionsSince(node, since)).length, 1, node.name);
          const dups = await node.sql.unsafe(`SELECT code FROM dq GROUP BY code HAVING count(*) > 1`);
          assert.equal(dups.length, 0, `no duplicate code on ${node.name}`);
        }
        await expectConflicts(cluster, since, expected);
      });

      const concurrentUpdates = async (table: string) => {
        await restartAgents(cluster, ['n1', 'n3']);
        const ts1 = await commit(n1, `UPDATE ${table} SET v = 'n1' WHERE id = 1`);
        await waitRow(n3, table, 1, { id: 1, v: 'n1' });
        const ts2 = await commit(n2, `UPDATE ${table} SET v = 'n2' WHERE id = 1`);
        return { n1: { ts: ts1, node: 'n1', row: { id: 1, v: 'n1' } }, n2: { ts: ts2, node: 'n2', row: { id: 1, v: 'n2' } } };
      };

      await step('keep_local: concurrent updates on n1 and n2; every node keeps what it had (no convergence by design)', async () => {
        const since = await baseline(cluster);
        const v = await concurrentUpdates('kl');
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ relation: 'public.kl', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'keep_local', local: v.n1, remote: v.n2 })],
          n2: [conflict({ relation: 'public.kl', peer: 'n1', key: '[1]', type: 'update_origin_differs', resolution: 'keep_local', local: v.n2, remote: v.n1 })],
          n3: [conflict({ relation: 'public.kl', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'keep_local', local: v.n1, remote: v.n2 })],
        };
        await cluster.startAgents(['n2']);
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        assert.deepEqual(await rowsOn(cluster, 'kl', 1), { n1: v.n1.row, n2: v.n2.row, n3: v.n1.row });
      });

      await step('apply_remote: concurrent updates on n1 and n2; every node applies what arrives (no convergence by design)', async () => {
        const since = await baseline(cluster);
        const v = await concurrentUpdates('ar');
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ relation: 'public.ar', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'apply_remote', local: v.n1, remote: v.n2 })],
          // Under last-update-wins n2 would keep its newer row; apply_remote takes n1's older one.
          n2: [conflict({ relation: 'public.ar', peer: 'n1', key: '[1]', type: 'update_origin_differs', resolution: 'apply_remote', local: v.n2, remote: v.n1 })],
          n3: [conflict({ relation: 'public.ar', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'apply_remote', local: v.n1, remote: v.n2 })],
        };
        await cluster.startAgents(['n2']);
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        assert.deepEqual(await rowsOn(cluster, 'ar', 1), { n1: v.n2.row, n2: v.n1.row, n3: v.n2.row });
      });

      await step('pause: a conflict pauses the peer on every node that meets it; after the row is repaired, resume lets the streams go on', async () => {
        const since = await baseline(cluster);
        const v = await concurrentUpdates('pz');
        const paused = async (node: Node, peer: Node) =>
          eventually(() => peerStatus(cluster, node, peer).state === 'paused', { timeoutMs: 20_000, what: `${peer} paused on ${node}` });
        await paused('n1', 'n2');
        await paused('n3', 'n2');
        // What n2 writes after the conflicting update waits behind the pause.
        await commit(n2, `INSERT INTO item VALUES (7, 'behind the pause')`);
        await cluster.startAgents(['n2']);
        await paused('n2', 'n1');
        for (const [node, peer] of [['n1', 'n2'], ['n3', 'n2'], ['n2', 'n1']] as const) {
          const status = peerStatus(cluster, node, peer);
          assert.match(status.pausedReason ?? '', /update_origin_differs on public\.pz key \[1\] from peer/);
          const rows = await cluster.node(node).sql.unsafe<{ paused: boolean }[]>(`SELECT paused_at IS NOT NULL AS paused FROM pgmesh.progress WHERE peer = $1`, [peer]);
          assert.equal(rows[0]?.paused, true, `the pause of ${peer} on ${node} is in the catalog`);
        }
        assert.deepEqual(await rowsOn(cluster, 'pz', 1), { n1: v.n1.row, n2: v.n2.row, n3: v.n1.row });
        assert.deepEqual(await rowsOn(cluster, 'item', 7), { n1: null, n2: { id: 7, v: 'behind the pause' }, n3: null });
        assert.deepEqual(counters(cluster), {});
        assert.deepEqual(await conflictsSince(cluster, since), { n1: [], n2: [], n3: [] });

        // Repair, as an operator would: decide the row's value (on any node; here n2, a write newer than both
        // conflicting updates), then resume. Each resumed stream applies its paused transaction once by
        // last-update-wins, so the decided row wins everywhere; the table keeps its pause policy.
        const tsDecided = await commit(n2, `UPDATE pz SET v = 'decided' WHERE id = 1`);
        const decided = { ts: tsDecided, node: 'n2', row: { id: 1, v: 'decided' } };
        assert.equal(await resumePeer(n1.sql, 'n2'), true);
        assert.equal(await resumePeer(n3.sql, 'n2'), true);
        assert.equal(await resumePeer(n2.sql, 'n1'), true);
        assert.equal(await resumePeer(n2.sql, 'n3'), false);
        await cluster.waitConverged(['pz', 'item']);
        assert.deepEqual(await rowsOn(cluster, 'pz', 1), { n1: decided.row, n2: decided.row, n3: decided.row });
        assert.deepEqual((await rowsOn(cluster, 'item', 7)).n1, { id: 7, v: 'behind the pause' });
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ relation: 'public.pz', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'apply_remote', local: v.n1, remote: v.n2 })],
          n2: [conflict({ relation: 'public.pz', peer: 'n1', key: '[1]', type: 'update_origin_differs', resolution: 'keep_local', local: decided, remote: v.n1 })],
          n3: [conflict({ relation: 'public.pz', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'apply_remote', local: v.n1, remote: v.n2 })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        for (const [node, peer] of [['n1', 'n2'], ['n3', 'n2'], ['n2', 'n1']] as const) {
          await eventually(() => peerStatus(cluster, node, peer).state === 'streaming', { what: `${peer} streaming again on ${node}` });
          assert.equal(peerStatus(cluster, node, peer).pausedReason, null);
        }
        // The resolution was for the paused transaction only: it is cleared, and the table's policy is still pause.
        for (const node of cluster.nodes) {
          const rows = await node.sql.unsafe<{ policy: string; pending: string }[]>(
            `SELECT (SELECT conflict_policy FROM pgmesh.table_policy WHERE relation_name = 'pz') AS policy,
                    (SELECT count(*) FROM pgmesh.apply_progress WHERE resume_resolution IS NOT NULL)::text AS pending`,
          );
          assert.deepEqual({ policy: rows[0]?.policy, pending: rows[0]?.pending }, { policy: 'pause', pending: '0' }, node.name);
        }
      });

      await step('exception policy pause: a change that fails on n1 pauses n2 there; after the cause is repaired, resume applies it', async () => {
        const since = await baseline(cluster);
        // Schema drift: only n1 limits ep.v to 5 characters.
        await localDdl(n1, `ALTER TABLE ep ADD CONSTRAINT ep_v_short CHECK (length(v) <= 5)`);
        await restartAgents(cluster, ['n1', 'n2', 'n3']);
        await commit(n2, `INSERT INTO ep VALUES (1, 'too long')`);
        await commit(n2, `INSERT INTO ep VALUES (2, 'ok')`);
        await waitRow(n3, 'ep', 2, { id: 2, v: 'ok' });
        await eventually(() => peerStatus(cluster, 'n1', 'n2').state === 'paused', { timeoutMs: 20_000, what: 'n2 paused on n1' });
        assert.match(peerStatus(cluster, 'n1', 'n2').pausedReason ?? '', /exception policy is pause: .*check constraint "ep_v_short"/);
        // Only that stream waits: n1 still applies n3's changes; nothing of n2's is applied or stored as an exception.
        await commit(n3, `INSERT INTO item VALUES (10, 'from n3 meanwhile')`);
        await waitRow(n1, 'item', 10, { id: 10, v: 'from n3 meanwhile' });
        assert.equal(peerStatus(cluster, 'n1', 'n3').state, 'streaming');
        assert.deepEqual(await exceptionsSince(n1, since), []);
        assert.deepEqual(await rowsOn(cluster, 'ep', 1), { n1: null, n2: { id: 1, v: 'too long' }, n3: { id: 1, v: 'too long' } });
        assert.equal(await rowOf(n1, 'ep', 2), null);

        await localDdl(n1, `ALTER TABLE ep DROP CONSTRAINT ep_v_short`);
        assert.equal(await resumePeer(n1.sql, 'n2'), true);
        await cluster.waitConverged(['ep', 'item']);
        await eventually(() => peerStatus(cluster, 'n1', 'n2').state === 'streaming', { what: 'n2 streaming again on n1' });
        assert.equal(peerStatus(cluster, 'n1', 'n2').pausedReason, null);
        assert.deepEqual(await exceptionsSince(n1, since), []);
        await expectConflicts(cluster, since, { n1: [], n2: [], n3: [] });
        await expectCounters(cluster, {});
      });

      await step('skip_transaction: a remote transaction with a failing change lands whole in the exception table; progress goes on', async () => {
        const since = await baseline(cluster);
        // Schema drift: n1 and n3 refuse code X.
        for (const node of [n1, n3]) await localDdl(node, `ALTER TABLE st ADD CONSTRAINT st_code_not_x CHECK (code <> 'X')`);
        await restartAgents(cluster, ['n1', 'n2', 'n3']);
        // One transaction on n2 over two tables; its second row has code X.
        const ts2 = await commit(n2, `INSERT INTO st VALUES (2, 'B')`, `INSERT INTO st VALUES (3, 'X')`, `INSERT INTO item VALUES (8, 'with st 2 and 3')`);
        await commit(n2, `INSERT INTO item VALUES (9, 'after')`);
        await waitRow(n1, 'item', 9, { id: 9, v: 'after' });
        await waitRow(n3, 'item', 9, { id: 9, v: 'after' });
        const pick = (e: ExceptionRecord) => [e.peer, e.relation, e.kind, e.key, e.remoteTs, e.sqlstate, e.conflictType, e.state];
        const whole = [
          ['n2', 'public.st', 'insert', { id: '2' }, ts2, null, null, 'open'],
          ['n2', 'public.st', 'insert', { id: '3' }, ts2, '23514', null, 'open'],
          ['n2', 'public.item', 'insert', { id: '8' }, ts2, null, null, 'open'],
        ];
        for (const node of [n1, n3]) {
          const found = await waitExceptions(node, since, 3);
          assert.deepEqual(found.map(pick), whole, node.name);
          assert.match(found[0]?.error ?? '', /another change of its transaction failed \(exception policy skip_transaction\)/);
          assert.match(found[1]?.error ?? '', /violates check constraint "st_code_not_x"/);
          assert.equal(new Set(found.map((e) => e.remoteCommitLsn)).size, 1, 'one remote transaction');
          assert.deepEqual((await rowsOn(cluster, 'st', 2))[node.name as Node], null);
          assert.deepEqual((await rowsOn(cluster, 'item', 8))[node.name as Node], null);
          const status = peerStatus(cluster, node.name as Node, 'n2');
          assert.equal(status.state, 'streaming');
          assert.equal(status.exceptions, 3);
        }
        assert.deepEqual(await exceptionsSince(n2, since), []);

        // Repair: the drifted constraints go, and n2's transaction is replayed whole on n1 and n3.
        for (const node of [n1, n3]) {
          await localDdl(node, `ALTER TABLE st DROP CONSTRAINT st_code_not_x`);
          for (const e of await exceptionsSince(node, since)) await replayException(node.server.dsn, node.name, e.id, silentLogger);
        }
        await cluster.waitConverged(['st', 'item']);
        for (const node of cluster.nodes) {
          const rows = await node.sql.unsafe<{ id: number; code: string }[]>(`SELECT id, code FROM st ORDER BY id`);
          assert.deepEqual(rows.map((r) => [r.id, r.code]), [[2, 'B'], [3, 'X']], node.name);
          assert.deepEqual(await rowVersion(node, 'st', 3), { ts: ts2, node: 'n2' }, node.name);
          assert.deepEqual(await rowOf(node, 'item', 8), { id: 8, v: 'with st 2 and 3' }, node.name);
        }
        // A change that fails on its data is no conflict.
        await expectConflicts(cluster, since, { n1: [], n2: [], n3: [] });
        await expectCounters(cluster, {});
      });

      await step('delta columns: concurrent increments on n1 and n2 both count; the other columns follow last-update-wins', async () => {
        const since = await baseline(cluster);
        await restartAgents(cluster, ['n1', 'n3']);
        const ts1 = await commit(n1, `UPDATE acct SET balance = balance + 10, note = 'n1' WHERE id = 1`);
        const row1 = { id: 1, balance: 110, note: 'n1' };
        await waitRow(n3, 'acct', 1, row1);
        const ts2 = await commit(n2, `UPDATE acct SET balance = balance + 5, note = 'n2' WHERE id = 1`);
        const row2 = { id: 1, balance: 105, note: 'n2' };
        const merged = { id: 1, balance: 115, note: 'n2' };
        await waitRow(n1, 'acct', 1, merged);
        await waitRow(n3, 'acct', 1, merged);
        await cluster.startAgents(['n2']);
        await cluster.waitConverged(['acct']);
        assert.deepEqual(await rowsOn(cluster, 'acct', 1), { n1: merged, n2: merged, n3: merged });
        const older = { ts: ts1, node: 'n1' };
        const newer = { ts: ts2, node: 'n2' };
        const expected: PerNode<Conflict[]> = {
          n1: [conflict({ relation: 'public.acct', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'apply_remote', local: { ...older, row: row1 }, remote: { ...newer, row: row2 } })],
          n2: [conflict({ relation: 'public.acct', peer: 'n1', key: '[1]', type: 'update_origin_differs', resolution: 'keep_local', local: { ...newer, row: row2 }, remote: { ...older, row: row1 } })],
          n3: [conflict({ relation: 'public.acct', peer: 'n2', key: '[1]', type: 'update_origin_differs', resolution: 'apply_remote', local: { ...older, row: row1 }, remote: { ...newer, row: row2 } })],
        };
        await expectConflicts(cluster, since, expected);
        await expectCounters(cluster, countersOf(expected));
        // Every node holds the winning version, also n2, where n1's losing change still added its increment.
        for (const node of cluster.nodes) assert.deepEqual(await rowVersion(node, 'acct', 1), newer, node.name);
      });

      await step("delta columns: an update made after the other node's version arrived is not a conflict", async () => {
        // Within the conflict window and from another node, but the old values the writer sent are the local ones:
        // it had seen them. Without the old-row check both updates would be logged as update_origin_differs.
        const since = await baseline(cluster);
        await commit(n1, `UPDATE acct SET balance = balance + 1 WHERE id = 1`);
        for (const node of cluster.nodes) await waitRow(node, 'acct', 1, { id: 1, balance: 116, note: 'n2' });
        await commit(n2, `UPDATE acct SET balance = balance + 2 WHERE id = 1`);
        for (const node of cluster.nodes) await waitRow(node, 'acct', 1, { id: 1, balance: 118, note: 'n2' });
        await expectConflicts(cluster, since, { n1: [], n2: [], n3: [] });
      });
    },
  );
});
