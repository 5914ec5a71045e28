/**
 * Topology: 2 or 3 real servers, and services on loopback ports that are not PostgreSQL (tests/support/fake-service.ts):
 * an HTTP server that answers "HTTP/1.1 400 Bad Request" and closes, and a service that closes without a word.
 * Scenario: connection strings that point at them. Every command gives up on such a node after one attempt, says
 * what answered, still reports the other nodes, and exits 1; an agent whose peer is such a service backs off
 * between attempts and keeps replicating with its other peers.
 * Without the code under test: postgres.js reconnects at once, without end, when the server closes the connection
 * during the start-up (thousands of connects a second, its connect timeout restarting each time): every command
 * hangs with no output, and the agent's stream from that peer never returns to its backoff.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent } from '../../src/agent/agent.ts';
import type { ClusterConfig } from '../../src/config/config.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { assertNoSecret, pgmesh } from '../support/cli.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';
import { startFakeService } from '../support/fake-service.ts';

const notPostgres = (node: string, port: number, db: string) =>
  `cannot connect to node ${node}: what answers at 127.0.0.1:${port}/${db} is not PostgreSQL (it sent "HTTP/1.1 400 Bad Request"); check the host and port in its connection string`;
const closedAtStartup = (node: string, port: number, db: string) =>
  `cannot connect to node ${node}: the server at 127.0.0.1:${port}/${db} closed the connection without answering; check the host and port ` +
  'in its connection string, and that PostgreSQL (not another service, or a proxy without a backend) listens there';

function dsnAt(node: TestNode, port: number, db: string): string {
  return `postgres://postgres:${encodeURIComponent(node.server.password)}@127.0.0.1:${port}/${db}`;
}

test('every command gives up on a node that is not PostgreSQL after one attempt, and reports the other nodes', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, link: false }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const [http, closing] = await Promise.all([startFakeService('http'), startFakeService('close')]);
    try {
      const path = join(cluster.baseDir, 'not-postgres.json');
      writeFileSync(
        path,
        JSON.stringify({
          nodes: [
            { name: 'n1', dsn: n1.server.dsn },
            { name: 'n2', dsn: n2.server.dsn },
            { name: 'n3', dsn: dsnAt(n1, http.port, 'app') },
            { name: 'n4', dsn: dsnAt(n1, closing.port, 'app') },
          ],
        }),
      );
      const n3 = notPostgres('n3', http.port, 'app');
      const n4 = closedAtStartup('n4', closing.port, 'app');
      const commands = [['check'], ['status'], ['status', '--json'], ['cluster', 'create'], ['tables', 'list'], ['init', '--node', 'n3']];
      const [check, status, json, create, tables, init] = await Promise.all(commands.map((args) => pgmesh(args, { config: path, timeoutMs: 45_000 })));
      for (const [i, result] of [check, status, json, create, tables, init].entries()) {
        const what = `pgmesh ${commands[i]?.join(' ')}`;
        assert.equal(result?.code, 1, `${what}: ${result?.output}`);
        assertNoSecret(result?.output ?? '', [n1.server.password], what);
      }

      assert.equal(check?.stdout, `n1: ok\nn2: ok\nn3: ${n3}\nn4: ${n4}\n`);
      assert.match(status?.stdout ?? '', /^n1\s+\S+\s+not initialized/m);
      assert.match(status?.stdout ?? '', /^n3\s+\S+\s+UNREACHABLE/m);
      assert.ok(status?.stdout.includes(`! ${n3}\n! ${n4}`), status?.stdout);
      const parsed = JSON.parse(json?.stdout ?? '') as { nodes: { name: string; reachable: boolean; error: string | null }[] };
      assert.deepEqual(
        parsed.nodes.map((n) => [n.name, n.reachable, n.error]),
        [['n1', true, null], ['n2', true, null], ['n3', false, n3], ['n4', false, n4]],
      );
      assert.equal(create?.stderr, `pgmesh: ${n3}\n${n4}\n`);
      assert.equal(tables?.stdout, `n1: (none)\nn2: (none)\nn3: ${n3}\nn4: ${n4}\n`);
      assert.equal(init?.stderr, `pgmesh: ${n3}\n`);
      // One connection per command and node: no reconnecting behind the error.
      assert.ok(http.connections <= commands.length, `${http.connections} connections to the HTTP server`);
      assert.ok(closing.connections <= commands.length - 1, `${closing.connections} connections to the closing service`);
    } finally {
      await Promise.all([http.close(), closing.close()]);
    }
  });
});

test('an agent whose peer is not PostgreSQL backs off between attempts and replicates with its other peers', { timeout: 120_000 }, async () => {
  const schema = 'CREATE TABLE kv (k int PRIMARY KEY, v text)';
  await withCluster({ nodes: 3, schema, tuning: { retryBaseMs: 100, retryMaxMs: 800 } }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const http = await startFakeService('http');
    // n3 is linked, but its connection string now points at the HTTP server.
    const config: ClusterConfig = {
      ...cluster.config,
      nodes: cluster.config.nodes.map((n) => (n.name === 'n3' ? { ...n, dsn: dsnAt(n1, http.port, 'postgres') } : n)),
    };
    const agent = await Agent.start(config, 'n1', silentLogger);
    try {
      const peer = (name: string) => {
        const status = agent.status().peers.find((p) => p.peer === name);
        assert.ok(status, `n1 has no status for ${name}`);
        return status;
      };
      await eventually(() => peer('n3').restarts >= 4, { timeoutMs: 30_000, what: () => `n1 to retry n3 several times (${JSON.stringify(peer('n3'))})` });
      const down = peer('n3');
      assert.equal(down.lastError?.code, 'CONNECTION_FAILED');
      assert.equal(down.lastError?.message, notPostgres('n3', http.port, 'postgres'));
      // Each attempt is one connection (and the clock monitor's reading, now and then, another): the backoff is
      // between connections, not around a loop of them.
      const connections = http.connections;
      assert.ok(connections <= 2 * peer('n3').restarts + 4, `${connections} connections for ${peer('n3').restarts} attempts`);
      assertNoSecret(JSON.stringify(agent.status()), [n1.server.password], 'agent status');

      await n2.sql.unsafe(`INSERT INTO kv VALUES (1, 'from n2')`);
      await eventually(async () => (await n1.sql.unsafe('SELECT 1 FROM kv WHERE k = 1')).length === 1, { what: "n2's row to reach n1 while n3 is not PostgreSQL" });
      assert.equal(peer('n2').state, 'streaming');
    } finally {
      await agent.stop();
      await http.close();
    }
  });
});
