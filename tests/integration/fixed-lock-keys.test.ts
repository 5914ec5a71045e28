/**
 * One real server with pgmesh installed; a table whose key defaults to pgmesh.snowflake_id().
 * Scenario: `lo`, a role with nothing but LOGIN, holds the advisory locks pgmesh.snowflake_id and the version
 * horizon's step used to take (hashtext('pgmesh.snowflake'), hashtext('pgmesh.version_horizon')), tries to lock the
 * tables that replaced them (refused), and holds the ACCESS SHARE lock any role can take on them by OID
 * (pg_relation_size); meanwhile an application role inserts rows from four sessions at once, and the horizon steps.
 * Every insert must finish, with ids unique and increasing per session; the step must finish.
 * Without the code under test (advisory locks of fixed keys): every insert that takes an id, and the horizon's step,
 * wait for lo (here: cancelled by statement_timeout).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { initNode } from '../../src/cluster/node-admin.ts';
import { withServer, type Sql } from '../support/cluster.ts';

test('a LOGIN-only role cannot make snowflake_id wait', { timeout: 120_000 }, async () => {
  await withServer('n1', async (server, sql) => {
    await sql.unsafe(`
      CREATE ROLE lo LOGIN PASSWORD 'lo-pw';
      CREATE ROLE app LOGIN PASSWORD 'app-pw';
      CREATE SCHEMA app AUTHORIZATION app;
    `);
    await initNode(sql, { nodeName: 'n1', nodeSlot: 3, maxNodes: 4, expectedPeers: 1 });
    await sql.unsafe(`SET pgmesh.ddl_capture = off; CREATE TABLE app.events (id bigint PRIMARY KEY DEFAULT pgmesh.snowflake_id(), s integer, n integer); ALTER TABLE app.events OWNER TO app`);
    const lockOids = await sql.unsafe<{ oid: string }[]>(
      `SELECT to_regclass(t)::oid::text AS oid FROM unnest(ARRAY['pgmesh.snowflake_lock', 'pgmesh.version_horizon_lock']) t`,
    );

    const as = (user: string, max = 1) => {
      const url = new URL(server.dsn);
      url.username = user;
      url.password = `${user}-pw`;
      return postgres(url.toString(), { max, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
    };
    const lo = as('lo');
    const app = as('app', 4);
    try {
      await lo.unsafe(`SELECT pg_advisory_lock(hashtext('pgmesh.snowflake')), pg_advisory_lock(hashtext('pgmesh.version_horizon'))`);
      await assert.rejects(lo.begin((tx) => tx.unsafe(`LOCK TABLE pgmesh.snowflake_lock IN SHARE UPDATE EXCLUSIVE MODE`)), /permission denied/);
      await assert.rejects(lo.begin((tx) => tx.unsafe(`LOCK TABLE pgmesh.version_horizon_lock IN SHARE UPDATE EXCLUSIVE MODE`)), /permission denied/);
      await lo.unsafe(`BEGIN`);
      for (const { oid } of lockOids) await lo.unsafe(`SELECT pg_relation_size(${oid}::regclass)`);

      await Promise.all([1, 2, 3, 4].map((s) => app.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL statement_timeout = '20s'`);
        await tx.unsafe(`INSERT INTO app.events (s, n) SELECT ${s}, g FROM generate_series(1, 300) g`);
      })));
      await sql.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL statement_timeout = '20s'`);
        await tx.unsafe(`SELECT * FROM pgmesh.advance_version_horizon(interval '1 second', 1000)`);
      });
      await lo.unsafe(`COMMIT`);
    } finally {
      await lo.end({ timeout: 1 });
      await app.end({ timeout: 1 });
    }
    const rows = await sql.unsafe<{ rows: string; ids: string; slot: string; out_of_order: string }[]>(
      `SELECT count(*)::text AS rows, count(DISTINCT id)::text AS ids, min((id >> 12) & 1023)::text AS slot,
              (SELECT count(*) FROM (SELECT id < lag(id) OVER (PARTITION BY s ORDER BY n) AS back FROM app.events) z WHERE back)::text AS out_of_order
         FROM app.events`,
    );
    assert.deepEqual(rows[0], { rows: '1200', ids: '1200', slot: '2', out_of_order: '0' });
  });
});
