/**
 * No silent truncation: a value that does not fit the local column goes to the exception table whole; a cast never
 * cuts it. Topology of every test: 2 nodes, agents in this process; n2's column is narrower than n1's (altered on n2
 * after the cluster was created, as a schema that drifted). Without the code under test the apply statements cast each
 * value to the local column's type, and an explicit cast fits a value to the type's modifier: n2 stored 'abc' for
 * 'abcdef' in a varchar(3), 1.2 for 1.234 in a numeric(10,1), and went on as if nothing happened.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { listExceptions } from '../../src/cluster/repair.ts';
import { BARRIER_TABLE, linkBarrier } from '../support/barrier.ts';
import { eventually, localDdl, withCluster, type TestNode } from '../support/cluster.ts';

const SCHEMA = `CREATE TABLE item (id integer PRIMARY KEY, code varchar(10) NOT NULL, amount numeric(10,3) NOT NULL); ${BARRIER_TABLE}`;

async function items(node: TestNode): Promise<Record<string, unknown>[]> {
  return (await node.sql.unsafe(`SELECT id, code, amount::text AS amount FROM item ORDER BY id`)).map((r) => ({ ...r }));
}

async function waitException(node: TestNode): Promise<{ sqlstate: string | null; error: string; change: Record<string, unknown> }> {
  let found: Awaited<ReturnType<typeof listExceptions>> = [];
  await eventually(async () => (found = await listExceptions(node.sql)).length > 0, { what: `an exception on ${node.name}` });
  assert.equal(found.length, 1, 'one change could not be applied');
  const [e] = found;
  if (!e) throw new Error('no exception');
  return { sqlstate: e.sqlstate, error: e.error, change: e.change };
}

test('a string longer than the local varchar goes to the exception table instead of being cut', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await localDdl(n2, `ALTER TABLE item ALTER COLUMN code TYPE varchar(3)`);
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO item VALUES (1, 'abcdef', 1), (2, 'abc', 2)`);
    await n1.sql.unsafe(`INSERT INTO item VALUES (3, 'xyz', 3)`);
    await linkBarrier(cluster, { from: 'n1', to: 'n2' });
    const e = await waitException(n2);
    assert.equal(e.sqlstate, '22001');
    assert.match(e.error, /does not fit column code \(character varying\(3\)\) of public\.item/);
    assert.deepEqual((e.change.new as Record<string, unknown>).code, 'abcdef', 'the whole change is kept');
    assert.deepEqual(await items(n2), [
      { id: 2, code: 'abc', amount: '2.000' },
      { id: 3, code: 'xyz', amount: '3.000' },
    ], 'the rest of the transaction and the next one are applied; nothing is cut');
  });
});

test('a number with more decimals than the local numeric scale goes to the exception table instead of being rounded', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await localDdl(n2, `ALTER TABLE item ALTER COLUMN amount TYPE numeric(10,1)`);
    await cluster.startAgents();
    await n1.sql.unsafe(`INSERT INTO item VALUES (1, 'a', 1.5)`);
    await linkBarrier(cluster, { from: 'n1', to: 'n2' });
    // An update (the fast path's case: the row exists, written by n1) whose value n2's column cannot hold.
    await n1.sql.unsafe(`UPDATE item SET amount = 1.234 WHERE id = 1`);
    await linkBarrier(cluster, { from: 'n1', to: 'n2' });
    const e = await waitException(n2);
    assert.equal(e.sqlstate, '22003');
    assert.match(e.error, /does not fit column amount \(numeric\(10,1\)\) of public\.item/);
    assert.deepEqual(await items(n2), [{ id: 1, code: 'a', amount: '1.5' }], 'the row keeps its value; nothing is rounded');
  });
});
