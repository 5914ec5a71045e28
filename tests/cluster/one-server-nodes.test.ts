/**
 * Topology: ONE PostgreSQL server holding three pgmesh nodes, each a database of its own (n1 in app1, n2 in app2, n3
 * in app3); n1 and n2 linked by `cluster create`, then n3 added by `node add` from n1; agents in this process.
 * Scenario: rows written on each node before and after the add; every row reaches every node, `status` shows all six
 * links streaming with no slot left over, and every slot and origin name pgmesh made is its own on the server.
 * Without the code under test: slot and origin names were made of node names only (`pgmesh_<node>`), but slots and
 * origins belong to the server, not the database. Adding n3 failed with "slot pgmesh_n1 exists but is not a pgoutput
 * slot of database app3; drop it (SELECT pg_drop_replication_slot(...))": that slot was the live n2 -> n1 link, and
 * dropping it as advised breaks the cluster. Had the slot names not collided, n3's origin for n1 would have been
 * n2's (pgmesh_n1), shared progress of two streams; and status counted another database's slot as a node's own.
 * (Run against the code before: node add failed with exactly that message.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import postgres from 'postgres';
import { Agent } from '../../src/agent/agent.ts';
import { clusterStatus, createCluster } from '../../src/cluster/cluster-ops.ts';
import { loadConfig, type ClusterConfig } from '../../src/config/config.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { EmbeddedServer } from '../../src/embedded/embedded-server.ts';
import { makeServerTempDir } from '../../src/embedded/server-user.ts';
import { addNode } from '../../src/membership/node-add.ts';
import { eventually, PG_MAJOR, type Sql } from '../support/cluster.ts';

const DDL = `CREATE TABLE item (id integer PRIMARY KEY, written_on text NOT NULL)`;

/** A connection string to another database of the same server. */
function databaseDsn(server: EmbeddedServer, database: string): string {
  const url = new URL(server.dsn);
  url.pathname = `/${database}`;
  return url.toString();
}

function writeConfig(path: string, nodes: readonly { name: string; dsn: string }[]): ClusterConfig {
  writeFileSync(path, JSON.stringify({ maxNodes: 8, nodes }, null, 2), { mode: 0o600 });
  return loadConfig({ file: path });
}

test('three nodes in three databases of one server: node add n3, every write reaches every node, every link streams', { timeout: 300_000 }, async () => {
  const baseDir = makeServerTempDir('pgmesh-test-');
  // Nine slots (two links and the version horizon's per node) and their walsenders on one server.
  const server = await EmbeddedServer.create({ name: 'one', baseDir, major: PG_MAJOR, password: 'pw', settings: { max_replication_slots: 32, max_wal_senders: 32 } });
  const pools: Sql[] = [];
  const agents = new Map<string, Agent>();
  const open = (dsn: string) => {
    const sql = postgres(dsn, { max: 2, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
    pools.push(sql);
    return sql;
  };
  try {
    await server.start();
    const admin = open(server.dsn);
    const nodes = ['n1', 'n2', 'n3'].map((name, i) => ({ name, dsn: databaseDsn(server, `app${i + 1}`) }));
    const sql = new Map<string, Sql>();
    for (const [i, node] of nodes.entries()) {
      await admin.unsafe(`CREATE DATABASE app${i + 1}`);
      sql.set(node.name, open(node.dsn));
      await (sql.get(node.name) as Sql).unsafe(DDL);
    }
    const write = async (node: string, id: number) => (sql.get(node) as Sql).unsafe(`INSERT INTO item VALUES ($1::text::int, $2)`, [String(id), node]);
    const configPath = join(baseDir, 'cluster.json');
    const two = writeConfig(configPath, nodes.slice(0, 2));
    await createCluster(two, silentLogger);
    for (const name of ['n1', 'n2']) agents.set(name, await Agent.start(two, name, silentLogger));
    await write('n1', 1);
    await write('n2', 2);

    const added = await addNode(two, silentLogger, { name: 'n3', dsn: (nodes[2] as { dsn: string }).dsn, from: 'n1' });
    assert.equal(added.alreadyMember, false);
    const three = writeConfig(configPath, nodes);
    for (const agent of agents.values()) await agent.reload(three);
    agents.set('n3', await Agent.start(three, 'n3', silentLogger));
    for (const [i, node] of nodes.entries()) await write(node.name, 10 + i);

    const expected = ['1 n1', '2 n2', '10 n1', '11 n2', '12 n3'];
    for (const node of nodes) {
      let seen: string[] = [];
      await eventually(
        async () => {
          seen = (await (sql.get(node.name) as Sql).unsafe<{ r: string }[]>(`SELECT id || ' ' || written_on AS r FROM item ORDER BY id`)).map((r) => r.r);
          return JSON.stringify(seen) === JSON.stringify(expected);
        },
        { timeoutMs: 120_000, what: () => `every row on ${node.name} (has ${JSON.stringify(seen)})` },
      );
    }

    let links = '';
    await eventually(
      async () => {
        const status = await clusterStatus(three, silentLogger);
        links = status.links.map((l) => `${l.from}->${l.to} ${l.streaming ? 'streaming' : l.slotStatus}`).join(', ');
        return status.links.length === 6 && status.links.every((l) => l.streaming && l.slotStatus !== 'missing') && status.leftoverSlots.length === 0;
      },
      { timeoutMs: 60_000, what: () => `every link streaming in status (${links})` },
    );

    // Every name is one database's own: no slot or origin of the server serves two links.
    const slots: string[] = [];
    const origins: string[] = [];
    for (const node of nodes) {
      for (const row of await (sql.get(node.name) as Sql).unsafe<{ slot_name: string; origin_name: string }[]>(`SELECT slot_name, origin_name FROM pgmesh.peer`)) {
        slots.push(row.slot_name);
        origins.push(row.origin_name);
      }
    }
    assert.equal(new Set(slots).size, 6, `six links, each with a slot of its own: ${slots.join(', ')}`);
    assert.equal(new Set(origins).size, 6, `six links, each with an origin of its own: ${origins.join(', ')}`);
    const onServer = await admin.unsafe<{ name: string }[]>(`SELECT slot_name::text AS name FROM pg_replication_slots UNION ALL SELECT 'origin ' || roname FROM pg_replication_origin`);
    for (const slot of slots) assert.ok(onServer.some((n) => n.name === slot), `slot ${slot} exists on the server`);
    for (const origin of origins) assert.ok(onServer.some((n) => n.name === `origin ${origin}`), `origin ${origin} exists on the server`);
  } finally {
    for (const agent of agents.values()) await agent.stop().catch(() => undefined);
    await Promise.all(pools.map((p) => p.end({ timeout: 1 }).catch(() => undefined)));
    await server.stop().catch(() => server.kill());
    if (!process.env.PGMESH_KEEP_TEST_DIRS) rmSync(baseDir, { recursive: true, force: true });
  }
});
