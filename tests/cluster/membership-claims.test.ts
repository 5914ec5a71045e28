/**
 * Topology: n1 and n2 (full mesh, agents in this process); n3 joins from n1 (node add), then streams from both.
 * Scenario: n1's clock ran an hour ahead when row 1 took the email g@x and let go of it again (made here by one
 * transaction in an origin session of n1's whose commit carries a timestamp an hour from now, on n1 and on n2 as
 * if replicated): every node keeps a claim on g@x with that version, newer than anything written now. After n3 has
 * joined, n2 inserts row 2 with g@x: an older write than the claim, so it gives way on n1 (and must on n3), recorded
 * as insert_exists, resolution skip, with the claim as the local version. (n2 keeps row 2: a local write is not
 * judged against claims; this test compares the source and the node that joined from it.)
 * Without the code under test: node add copies no claims, so on n3 nothing ever held g@x and row 2 takes it there only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../src/core/logger.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { BARRIER_TABLE, linkBarrier } from '../support/barrier.ts';
import { writtenAnHourAhead } from '../support/clock.ts';
import { withCluster, type TestNode } from '../support/cluster.ts';

const DDL = `CREATE TABLE let_go (id integer PRIMARY KEY, email text UNIQUE); ${BARRIER_TABLE}`;

async function rows(node: TestNode): Promise<string[]> {
  return (await node.sql.unsafe<{ r: string }[]>(`SELECT id || ' ' || email AS r FROM let_go ORDER BY id`)).map((x) => x.r);
}

async function conflicts(node: TestNode): Promise<string[]> {
  const found = await node.sql.unsafe<{ c: string }[]>(
    `SELECT peer || ' ' || pkey || ' ' || conflict_type || ' ' || resolution || ' ' || coalesce(local_node, '-') AS c FROM pgmesh.conflict WHERE relation = 'public.let_go' ORDER BY id`,
  );
  return found.map((x) => x.c);
}

test('node add: the joining node gets the source\'s unique-value claims, and an older row that takes a claimed value gives way there too', { timeout: 300_000 }, async () => {
  await withCluster({ nodes: 2, schema: DDL }, async (cluster) => {
    await cluster.startAgents();
    const [n1, n2] = cluster.nodes;
    assert.ok(n1 && n2);
    for (const node of [n1, n2]) {
      await writtenAnHourAhead(
        node.sql,
        'pgmeshr_n1',
        async (tx) => {
          await tx.unsafe(`INSERT INTO let_go VALUES (1, 'g@x')`);
          await tx.unsafe(`UPDATE let_go SET email = 'h@x' WHERE id = 1`);
        },
        { triggers: true },
      );
      const claims = await node.sql.unsafe<{ node: string }[]>(`SELECT v.node FROM pgmesh.unique_claim c, pgmesh.claim_version(c.xmin, c.ts, c.node, 'x') v`);
      assert.deepEqual(claims.map((c) => c.node), ['n1'], `${node.name} holds a claim on g@x with n1's version`);
    }

    const n3 = await cluster.startServer('n3', DDL);
    await addNode(cluster.config, silentLogger, { name: 'n3', dsn: n3.server.dsn, from: 'n1' });
    cluster.admit(n3);
    await cluster.reloadAgents();
    await cluster.startAgents(['n3']);

    await n2.sql.unsafe(`INSERT INTO let_go VALUES (2, 'g@x')`);
    await linkBarrier(cluster, { from: 'n2', to: 'n1' });
    await linkBarrier(cluster, { from: 'n2', to: 'n3' });
    assert.deepEqual(await rows(n1), ['1 h@x']);
    assert.deepEqual(await rows(n3), await rows(n1));
    assert.deepEqual(await conflicts(n1), ['n2 [2] insert_exists skip n1']);
    assert.deepEqual(await conflicts(n3), await conflicts(n1));
  });
});
