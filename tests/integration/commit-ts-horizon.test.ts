/**
 * Topology: 1 real server (run it under PGMESH_PG_MAJOR=16, 17 and 18).
 * Scenario: what pgmesh's version horizon rests on, checked on the server itself:
 *  - VACUUM FREEZE keeps a row's raw xmin (the `xmin` column still names the writer) and its commit timestamp;
 *  - burning xids and freezing every database truncates the commit timestamp of an old row;
 *  - a logical slot whose catalog_xmin is older than the row's xid keeps it: catalog_xmin holds back the catalogs'
 *    relfrozenxid in every database, hence datfrozenxid, hence commit_ts truncation.
 * Without this behaviour of PostgreSQL the horizon slot (docs/design.md, "Row versions") protects nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withServer, type Sql } from '../support/cluster.ts';
import { burnXids, flushWal, freezeAllDatabases, hasCommitTimestamp, XIDS_PAST_TWO_SEGMENTS } from '../support/commit-ts.ts';

async function writeRow(sql: Sql, k: number): Promise<string> {
  const rows = await sql.unsafe<{ xmin: string }[]>(`INSERT INTO t VALUES ($1) RETURNING xmin::text AS xmin`, [k]);
  const xmin = rows[0]?.xmin;
  if (xmin === undefined) throw new Error('INSERT returned no row');
  return xmin;
}

const xminOf = async (sql: Sql, k: number) =>
  (await sql.unsafe<{ xmin: string }[]>(`SELECT xmin::text AS xmin FROM t WHERE k = $1`, [k]))[0]?.xmin;

test('VACUUM FREEZE keeps the raw xmin and its commit timestamp', { timeout: 120_000 }, async () => {
  await withServer('n1', async (_server, sql) => {
    await sql.unsafe(`CREATE TABLE t (k integer PRIMARY KEY)`);
    const xmin = await writeRow(sql, 1);
    await burnXids(sql, 10);
    await sql.unsafe(`VACUUM FREEZE t`);
    const frozen = await sql.unsafe<{ frozen: boolean }[]>(
      `SELECT age(relfrozenxid) < age($1::xid) AS frozen FROM pg_catalog.pg_class WHERE oid = 't'::regclass`,
      [xmin],
    );
    assert.equal(frozen[0]?.frozen, true, "the table's relfrozenxid moved past the row's xmin: the row is frozen");
    assert.equal(await xminOf(sql, 1), xmin, 'the xmin column still gives the raw xmin');
    assert.equal(await hasCommitTimestamp(sql, xmin), true, 'and its commit timestamp is still there');
  });
});

test('freezing every database after many xids truncates an old commit timestamp', { timeout: 300_000 }, async () => {
  await withServer('n1', async (server, sql) => {
    await sql.unsafe(`CREATE TABLE t (k integer PRIMARY KEY)`);
    const xmin = await writeRow(sql, 1);
    await burnXids(sql, XIDS_PAST_TWO_SEGMENTS);
    await freezeAllDatabases(sql, server.dsn);
    assert.equal(await hasCommitTimestamp(sql, xmin), false, "the row's commit timestamp is gone");
  });
});

test("a logical slot's catalog_xmin keeps commit timestamps newer than it", { timeout: 300_000 }, async () => {
  await withServer('n1', async (server, sql) => {
    await sql.unsafe(`CREATE TABLE t (k integer PRIMARY KEY)`);
    await sql.unsafe(`SELECT pg_catalog.pg_create_logical_replication_slot('horizon', 'pgoutput')`);
    const xmin = await writeRow(sql, 1);
    await burnXids(sql, XIDS_PAST_TWO_SEGMENTS);
    await freezeAllDatabases(sql, server.dsn);
    assert.equal(await hasCommitTimestamp(sql, xmin), true, 'the slot holds the row\'s commit timestamp');

    // Advanced past the row, the slot lets it go: the next freeze truncates it. catalog_xmin moves only to the oldest
    // running xid of a running-transactions record the slot has passed (logged every 15 s by the background writer,
    // here at once), and only within the flushed WAL.
    await sql.unsafe(`SELECT pg_catalog.pg_log_standby_snapshot()`);
    await flushWal(sql);
    await sql.unsafe(`SELECT pg_catalog.pg_replication_slot_advance('horizon', pg_catalog.pg_current_wal_flush_lsn())`);
    const slot = await sql.unsafe<{ past: boolean }[]>(`SELECT age(catalog_xmin) < age($1::xid) AS past FROM pg_catalog.pg_replication_slots`, [xmin]);
    assert.equal(slot[0]?.past, true, "the slot's catalog_xmin moved past the row's xmin");
    await freezeAllDatabases(sql, server.dsn);
    assert.equal(await hasCommitTimestamp(sql, xmin), false, 'once the slot is past it, the timestamp is truncated');
  });
});
