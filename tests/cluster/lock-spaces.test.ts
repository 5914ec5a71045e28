/**
 * Topology: 2 nodes, full mesh, agents in this process (as the installing superuser).
 * Scenario: a role with nothing but LOGIN, on both nodes, takes (session-level, exclusively) every advisory lock key
 * pgmesh used: the DDL fence's keys (ddl_lock_key: 'pgm' in the high half, 0 or a table's OID in the low half) and
 * the apply sessions' table locks ('pmsh' in the high half, the table's OID in the low half), and holds them. Local
 * writes on both nodes must go on, and reach the other node; the role cannot lock pgmesh's apply slots either.
 * Without the code under test: every local insert failed with 55P03 ("locked for a cluster-wide schema change"), and
 * the apply sessions waited for the table lock for good (nothing replicated).
 * Then (the squatter's fence keys released: held, they make "pgmesh ddl --lock" wait, and it names the process)
 * "pgmesh ddl --lock" still fences: while it holds its lock, a local write fails with 55P03.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { runDdl } from '../../src/ddl/run-ddl.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { sqlState } from '../../src/core/sqlstate.ts';
import { eventually, withCluster, type Sql } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';

const SCHEMA = `
CREATE TABLE public.items (id integer PRIMARY KEY, v text NOT NULL);
CREATE ROLE app LOGIN PASSWORD 'app-pw';
GRANT SELECT, INSERT, UPDATE, DELETE ON public.items TO app;
CREATE ROLE squatter LOGIN PASSWORD 'squatter-pw';
`;

const FENCE_SPACE = 7366509n;
const APPLY_TABLE_SPACE = 0x706d7368n;

test('a LOGIN-only role holding the advisory keys pgmesh used blocks neither local writes nor the apply', { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    const squatters: Sql[] = [];
    const apps: Sql[] = [];
    try {
      for (const node of cluster.nodes) {
        const oid = await node.sql.unsafe<{ oid: string }[]>(`SELECT 'public.items'::regclass::oid::text AS oid`);
        const rel = BigInt(oid[0]?.oid ?? '0');
        const squatter = postgres(dsnAs(node, 'squatter', 'squatter-pw'), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
        squatters.push(squatter);
        for (const key of [FENCE_SPACE << 32n, (FENCE_SPACE << 32n) | rel, (APPLY_TABLE_SPACE << 32n) | rel]) {
          await squatter.unsafe(`SELECT pg_advisory_lock(${key}::int8)`);
        }
        await assert.rejects(squatter.unsafe(`SELECT 1 FROM pgmesh.apply_lock FOR UPDATE`), /permission denied/);
        apps.push(postgres(dsnAs(node, 'app', 'app-pw'), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql);
      }
      const [app1, app2] = apps as [Sql, Sql];
      await app1.unsafe(`INSERT INTO public.items VALUES (1, 'n1')`);
      await app2.unsafe(`INSERT INTO public.items VALUES (2, 'n2'), (3, 'n2')`);
      await app1.unsafe(`UPDATE public.items SET v = 'n1 again' WHERE id = 1`);
      await cluster.waitConverged(['public.items']);
      const rows = await cluster.node('n2').sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM public.items`);
      assert.equal(rows[0]?.n, 3);

      // The fence still works for pgmesh. The change runs on n1; n2's replay of it waits for the blocker's table
      // lock, so the cluster-wide lock stays taken until the blocker lets go.
      for (const squatter of squatters) await squatter.unsafe(`SELECT pg_advisory_unlock(k) FROM (SELECT (${FENCE_SPACE}::int8 << 32) | l.objid::int8 AS k FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.locktype = 'advisory' AND l.classid = ${FENCE_SPACE}) z`);
      const blocker = await cluster.node('n2').sql.reserve();
      try {
        await blocker.unsafe(`BEGIN`);
        await blocker.unsafe(`LOCK TABLE public.items IN ACCESS SHARE MODE`);
        const locked = runDdl(cluster.config, silentLogger, `ALTER TABLE public.items ADD COLUMN note text`, 'n1', { lock: true, lockTimeoutMs: 60_000 });
        let refused: unknown;
        await eventually(
          async () => {
            try {
              await app2.unsafe(`INSERT INTO public.items VALUES (10, 'during the lock')`);
              await app2.unsafe(`DELETE FROM public.items WHERE id = 10`);
              return false;
            } catch (error) {
              refused = error;
              return true;
            }
          },
          { timeoutMs: 60_000, what: 'a local write on n2 to be refused by the fence' },
        );
        assert.equal(sqlState(refused), '55P03');
        await blocker.unsafe(`ROLLBACK`);
        await locked;
      } finally {
        blocker.release();
      }
    } finally {
      await Promise.all([...squatters, ...apps].map((s) => s.end({ timeout: 1 })));
    }
  });
});
