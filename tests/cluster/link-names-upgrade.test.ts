/**
 * Topology: 2 nodes (n1, n2) whose link was made before slot and origin names carried the database OID (as a catalog
 * upgrade leaves them: slots pgmesh_n2 on n1 and pgmesh_n1 on n2, origins pgmesh_<peer> and pgmeshr_<peer>, recorded
 * in pgmesh.peer); then n3 joins with node add, then n2 is removed. Agents in this process.
 * Scenario: the old links stream; `cluster create` run again keeps their names; n3's links get the new names; every
 * write reaches every node and status shows every link streaming; node remove n2 drops the old-named slots and
 * origins of n2's links as it does new ones.
 * Without the code under test: an upgraded node would look for its link under the new names (no such slot, no such
 * origin) and stream nothing; status would count no slot of the old name as a link's; node remove would leave the
 * old-named slot for n2 on n1 holding WAL.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterStatus, createCluster } from '../../src/cluster/cluster-ops.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { removeNode } from '../../src/membership/node-remove.ts';
import { eventually, withCluster, type TestCluster, type TestNode } from '../support/cluster.ts';
import { linkNames } from '../support/slots.ts';

const DDL = `CREATE TABLE item (id integer PRIMARY KEY, written_on text NOT NULL)`;

/** Gives n1 <-> n2's links (made by cluster create, nothing streamed yet) the names of earlier releases. */
async function renameToOldNames(publisher: TestNode, subscriber: TestNode): Promise<void> {
  const names = await linkNames(subscriber, publisher.name);
  await publisher.sql.unsafe(`SELECT pg_drop_replication_slot($1)`, [names.slot]);
  await publisher.sql.unsafe(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [`pgmesh_${subscriber.name}`]);
  for (const origin of [names.origin, names.replayOrigin]) await subscriber.sql.unsafe(`SELECT pg_replication_origin_drop($1)`, [origin]);
  await subscriber.sql.unsafe(`SELECT pg_replication_origin_create($1), pg_replication_origin_create($2)`, [`pgmesh_${publisher.name}`, `pgmeshr_${publisher.name}`]);
  await subscriber.sql.unsafe(`UPDATE pgmesh.peer SET slot_name = $2, origin_name = $3, replay_origin_name = $4 WHERE node_name = $1`, [
    publisher.name,
    `pgmesh_${subscriber.name}`,
    `pgmesh_${publisher.name}`,
    `pgmeshr_${publisher.name}`,
  ]);
}

async function allStreaming(cluster: TestCluster): Promise<void> {
  let links = '';
  await eventually(
    async () => {
      const status = await clusterStatus(cluster.config, silentLogger);
      links = status.links.map((l) => `${l.from}->${l.to} ${l.streaming ? 'streaming' : l.slotStatus}`).join(', ');
      const n = cluster.nodes.length;
      return status.links.length === n * (n - 1) && status.links.every((l) => l.streaming) && status.leftoverSlots.length === 0;
    },
    { timeoutMs: 60_000, what: () => `every link streaming in status (${links})` },
  );
}

async function rowsEverywhere(cluster: TestCluster, expected: readonly string[]): Promise<void> {
  for (const node of cluster.nodes) {
    let seen: string[] = [];
    await eventually(
      async () => {
        seen = (await node.sql.unsafe<{ r: string }[]>(`SELECT id || ' ' || written_on AS r FROM item ORDER BY id`)).map((r) => r.r);
        return JSON.stringify(seen) === JSON.stringify(expected);
      },
      { timeoutMs: 60_000, what: () => `every row on ${node.name} (has ${JSON.stringify(seen)})` },
    );
  }
}

test('links made with the old names keep them and stream; node add gives new links new names; node remove drops both', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 2, schema: DDL }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await renameToOldNames(n1, n2);
    await renameToOldNames(n2, n1);
    // Run again (as after an upgrade): the links keep their names.
    await createCluster(cluster.config, silentLogger);
    assert.deepEqual(await linkNames(n2, 'n1'), { slot: 'pgmesh_n2', origin: 'pgmesh_n1', replayOrigin: 'pgmeshr_n1' });
    assert.deepEqual(await linkNames(n1, 'n2'), { slot: 'pgmesh_n1', origin: 'pgmesh_n2', replayOrigin: 'pgmeshr_n2' });

    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO item VALUES (1, 'n1')`);
    await n2.sql.unsafe(`INSERT INTO item VALUES (2, 'n2')`);
    await rowsEverywhere(cluster, ['1 n1', '2 n2']);
    await allStreaming(cluster);

    const n3 = await cluster.startServer('n3', DDL);
    await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    cluster.admit(n3);
    await cluster.reloadAgents();
    await cluster.startAgents(['n3']);
    for (const [subscriber, publisher] of [[n3, 'n1'], [n3, 'n2'], [n1, 'n3'], [n2, 'n3']] as const) {
      const names = await linkNames(subscriber, publisher);
      assert.match(names.slot, /^pgmesh_[0-9]+_[a-z0-9_]+$/, `the new link ${publisher} -> ${subscriber.name}: ${JSON.stringify(names)}`);
      assert.match(names.origin, new RegExp(`^pgmesh_[0-9]+_${publisher}$`));
    }
    assert.equal((await linkNames(n2, 'n1')).slot, 'pgmesh_n2', 'the old link keeps its name');
    await n3.sql.unsafe(`INSERT INTO item VALUES (3, 'n3')`);
    await n2.sql.unsafe(`INSERT INTO item VALUES (4, 'n2')`);
    await rowsEverywhere(cluster, ['1 n1', '2 n2', '3 n3', '4 n2']);
    await allStreaming(cluster);

    await cluster.stopAgent('n2');
    await removeNode(cluster.config, silentLogger, { name: 'n2' });
    const left = await n1.sql.unsafe<{ t: string }[]>(
      `SELECT 'slot ' || slot_name AS t FROM pg_replication_slots WHERE slot_name ~ '^pgmesh_([0-9]+_)?n2$'
       UNION ALL SELECT 'origin ' || roname FROM pg_replication_origin WHERE roname ~ '^pgmeshr?_([0-9]+_)?n2$'`,
    );
    assert.deepEqual(left.map((r) => r.t), [], "nothing of n2's links is left on n1");
  });
});
