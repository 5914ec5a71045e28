/**
 * Topology: 2 nodes, full mesh, agents in this process (as the installing superuser), the version horizon stepping
 * every half second.
 * Scenario: `lo`, a role with nothing but LOGIN, emits one forged pgmesh.ddl message on n1. n2 refuses it into
 * pgmesh.exception (kind message, open). Rows keep replicating; n2's version horizon must move past the refused
 * message's commit time (a refused message is never replayed and needs no versions).
 * Without the code under test (every open exception held the horizon): n2's horizon stays behind the message until an
 * operator discards it, and the horizon's slot keeps n2's WAL from then on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { eventually, withCluster, type Sql } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';

const SCHEMA = `
CREATE ROLE lo LOGIN PASSWORD 'lo-pw';
CREATE TABLE public.t (id integer PRIMARY KEY);
`;

test('a refused message does not hold the version horizon', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, tuning: { tombstoneGcIntervalMs: 500, tombstoneMarginMs: 100 } }, async (cluster) => {
    await cluster.startAgents();
    const lo = postgres(dsnAs(cluster.node('n1'), 'lo', 'lo-pw'), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
    try {
      await lo.unsafe(`SELECT pg_logical_emit_message(true, 'pgmesh.ddl', '{"version":1}')`);
    } finally {
      await lo.end({ timeout: 1 });
    }
    const n2 = cluster.node('n2').sql;
    let refusedAt = '';
    await eventually(async () => {
      const rows = await n2.unsafe<{ ts: string }[]>(`SELECT remote_ts::text AS ts FROM pgmesh.exception WHERE change_kind = 'message' AND state = 'open'`);
      refusedAt = rows[0]?.ts ?? '';
      return rows.length === 1;
    }, { what: 'n2 to refuse the message' });

    let id = 1;
    let last = '';
    await eventually(async () => {
      await cluster.node('n1').sql.unsafe(`INSERT INTO public.t VALUES (${id++})`);
      const rows = await n2.unsafe<{ past: boolean; ts: string | null }[]>(
        `SELECT stable_ts > $1::timestamptz AS past, stable_ts::text AS ts FROM pgmesh.version_horizon`, [refusedAt],
      );
      last = rows[0]?.ts ?? 'none';
      return rows[0]?.past === true;
    }, { what: () => `n2's horizon (${last}) to pass the refused message (${refusedAt})`, timeoutMs: 60_000, intervalMs: 500 });
    const open = await n2.unsafe(`SELECT 1 FROM pgmesh.exception WHERE change_kind = 'message' AND state = 'open'`);
    assert.equal(open.length, 1, 'the refused message is still listed for the operator');
  });
});
