/**
 * One real server with pgmesh installed; a table whose key defaults to pgmesh.snowflake_id().
 * Scenario: `lo`, a role with nothing but LOGIN, holds the advisory lock pgmesh.snowflake_id used to take
 * (hashtext('pgmesh.snowflake')), tries to lock the table that replaced it (refused), and holds the ACCESS SHARE lock
 * any role can take on it by OID (pg_relation_size); meanwhile an application role inserts rows from four sessions
 * at once. Every insert must finish, with ids unique and increasing per session.
 * Without the code under test (the session advisory lock of a fixed key): every insert that takes an id waits for lo
 * (here: cancelled by statement_timeout).
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
    const lockOid = (await sql.unsafe<{ oid: string }[]>(`SELECT 'pgmesh.snowflake_lock'::regclass::oid::text AS oid`))[0]?.oid;

    const as = (user: string, max = 1) => {
      const url = new URL(server.dsn);
      url.username = user;
      url.password = `${user}-pw`;
      return postgres(url.toString(), { max, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
    };
    const lo = as('lo');
    const app = as('app', 4);
    try {
      await lo.unsafe(`SELECT pg_advisory_lock(hashtext('pgmesh.snowflake'))`);
      await assert.rejects(lo.begin((tx) => tx.unsafe(`LOCK TABLE pgmesh.snowflake_lock IN SHARE UPDATE EXCLUSIVE MODE`)), /permission denied/);
      await lo.unsafe(`BEGIN`);
      await lo.unsafe(`SELECT pg_relation_size(${lockOid}::regclass)`);

      await Promise.all([1, 2, 3, 4].map((s) => app.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL statement_timeout = '20s'`);
        await tx.unsafe(`INSERT INTO app.events (s, n) SELECT ${s}, g FROM generate_series(1, 300) g`);
      })));
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
