/**
 * Topology: two separate 2-node pgmesh clusters, A and B (each with nodes n1 and n2, full mesh), agents in this
 * process.
 * Scenarios:
 * - A's n1 agent runs with a configuration whose n2 entry points at B's n2 (an edited connection string, a swapped
 *   environment variable). B's n2 has a slot named for n1 too, with rows of B in it. The agent must refuse that peer:
 *   nothing of B applied on A's n1, and the link paused with a reason that says what differs (status shows it).
 *   Without the code under test: IDENTIFY_SYSTEM's answer was discarded and A's n1 applied B's rows.
 * - A link made before identities were recorded (its identity columns empty, as after the upgrade) takes the
 *   identity of the first peer the agent reaches, says so in the catalog, and streams.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent } from '../../src/agent/agent.ts';
import type { ClusterConfig } from '../../src/config/config.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { eventually, withCluster } from '../support/cluster.ts';

const SCHEMA = `CREATE TABLE public.items (id integer PRIMARY KEY, v text NOT NULL);`;

test("an agent whose peer's connection string reaches a node of another cluster streams nothing from it and pauses the link", { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (a) => {
    await withCluster({ nodes: 2, schema: SCHEMA }, async (b) => {
      // B's rows, waiting in B's n2 slot for an "n1".
      await b.node('n2').sql.unsafe(`INSERT INTO public.items SELECT g, 'from B' FROM generate_series(1, 5) g`);
      const swapped: ClusterConfig = {
        ...a.config,
        nodes: a.config.nodes.map((n) => (n.name === 'n2' ? { ...n, dsn: b.node('n2').server.dsn } : n)),
      };
      const agent = await Agent.start(swapped, 'n1', silentLogger);
      try {
        let reason = '';
        await eventually(
          async () => {
            const rows = await a.node('n1').sql.unsafe<{ paused_reason: string | null }[]>(
              `SELECT paused_reason FROM pgmesh.apply_progress WHERE peer = 'n2' AND paused_at IS NOT NULL`,
            );
            reason = rows[0]?.paused_reason ?? '';
            return reason !== '';
          },
          { timeoutMs: 60_000, what: 'the link from n2 to be paused' },
        );
        assert.match(reason, /reaches another node than the one n1 was linked with/);
        assert.match(reason, /system identifier/);
        assert.match(reason, /belongs to pgmesh cluster/);
        const applied = await a.node('n1').sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM public.items`);
        assert.equal(applied[0]?.n, 0, "B's rows were applied on A's n1");
      } finally {
        await agent.stop();
      }
    });
  });
});

test('a link made before identities were recorded takes the first identity the agent sees, and streams', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const ids = await cluster.node('n1').sql.unsafe<{ a: string; b: string }[]>(
      `SELECT (SELECT cluster_id::text FROM pgmesh.local_node) AS a, (SELECT cluster_id::text FROM pgmesh.peer WHERE node_name = 'n2') AS b`,
    );
    assert.ok(ids[0]?.a, 'cluster create gave n1 a cluster id');
    assert.equal(ids[0]?.a, ids[0]?.b, "n2's recorded cluster id is the cluster's");
    await cluster.node('n1').sql.unsafe(
      `UPDATE pgmesh.peer SET system_identifier = NULL, database_name = NULL, cluster_id = NULL, identity_recorded_at = NULL, identity_source = NULL`,
    );
    await cluster.startAgents();
    await cluster.node('n2').sql.unsafe(`INSERT INTO public.items VALUES (1, 'one')`);
    await cluster.waitConverged(['public.items']);
    const recorded = await cluster.node('n1').sql.unsafe<{ source: string | null; sysid: string | null; actual: string }[]>(
      `SELECT identity_source AS source, system_identifier AS sysid, (SELECT (pg_control_system()).system_identifier::text) AS actual
         FROM pgmesh.peer WHERE node_name = 'n2'`,
    );
    assert.equal(recorded[0]?.source, 'first connect');
    const n2 = await cluster.node('n2').sql.unsafe<{ id: string }[]>(`SELECT (pg_control_system()).system_identifier::text AS id`);
    assert.equal(recorded[0]?.sysid, n2[0]?.id);
  });
});
