/**
 * Forcing PostgreSQL to forget commit timestamps, for tests of row versions (docs/conflicts.md, "Versions").
 *
 * Commit timestamps live in an SLRU (pg_commit_ts) cut into segments of 32 pages of 819 entries (26,208 xids). At the
 * end of a VACUUM that moves a database's datfrozenxid, PostgreSQL removes every whole segment before the oldest
 * datfrozenxid of ALL databases (template0 included). So: burn enough xids that the row's xid sits two segments back,
 * freeze every database, and the row's xmin has no commit timestamp any more.
 */
import postgres from 'postgres';
import type { Sql } from './cluster.ts';

/** More than two commit_ts segments: the segment holding the row's xid is then wholly behind the freeze horizon. */
export const XIDS_PAST_TWO_SEGMENTS = 60_000;

/** Takes `count` xids, each in its own committed transaction (a procedure commits in its loop). */
export async function burnXids(sql: Sql, count: number): Promise<void> {
  const session = await sql.reserve();
  try {
    await session.unsafe(`SET synchronous_commit = off`);
    await session.unsafe(`CREATE OR REPLACE PROCEDURE pg_temp.pgmesh_test_burn_xids(n integer) LANGUAGE plpgsql AS $$
      BEGIN
        FOR i IN 1..n LOOP
          PERFORM pg_catalog.pg_current_xact_id();
          COMMIT;
        END LOOP;
      END $$`);
    await session.unsafe(`CALL pg_temp.pgmesh_test_burn_xids($1)`, [count]);
    await flushWal(session);
  } finally {
    session.release();
  }
}

/**
 * Flushes the WAL written so far. Commits of transactions that wrote no WAL of their own are asynchronous whatever
 * synchronous_commit says, and an idle WAL writer may leave them unflushed for seconds; a slot is advanced only up to
 * the flushed WAL. A WAL switch record is flushed at once (and costs one segment file).
 */
export async function flushWal(sql: Sql): Promise<void> {
  await sql.unsafe(`SELECT pg_catalog.pg_switch_wal()`);
}

/**
 * VACUUM FREEZE in every database of the server `sql` connects to, template0 included (allowed connections for the
 * time it takes), so that the oldest datfrozenxid of all moves and commit timestamps behind it are truncated.
 */
export async function freezeAllDatabases(sql: Sql, dsn: string): Promise<void> {
  await sql.unsafe(`UPDATE pg_catalog.pg_database SET datallowconn = true WHERE datname = 'template0'`);
  try {
    const databases = await sql.unsafe<{ datname: string }[]>(`SELECT datname FROM pg_catalog.pg_database ORDER BY datname`);
    for (const { datname } of databases) {
      const db = postgres(dsn, { database: datname, max: 1, onnotice: () => undefined, fetch_types: false });
      try {
        await db.unsafe(`VACUUM FREEZE`);
      } finally {
        await db.end({ timeout: 1 });
      }
    }
  } finally {
    await sql.unsafe(`UPDATE pg_catalog.pg_database SET datallowconn = false WHERE datname = 'template0'`);
  }
}

/** Whether `xmin` (a row's raw xmin, as text) still has a commit timestamp on the server. */
export async function hasCommitTimestamp(sql: Sql, xmin: string): Promise<boolean> {
  const rows = await sql.unsafe<{ known: boolean }[]>(`SELECT pg_catalog.pg_xact_commit_timestamp($1::xid) IS NOT NULL AS known`, [xmin]);
  return rows[0]?.known === true;
}

