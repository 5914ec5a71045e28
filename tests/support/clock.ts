/** Writes that carry another clock's commit timestamp: a node whose clock ran ahead, as its peers hold its writes. */
import type { Sql } from './cluster.ts';

/**
 * Runs `body` in one transaction of an origin session of `origin` whose commit carries a timestamp an hour from now:
 * pgmesh reads its rows' version as (now + 1 hour, the node the origin names), and no slot publishes them (they have
 * an origin). With `triggers`, the session is an ordinary one (user triggers and pgmesh's local triggers fire: a
 * unique value let go of leaves a claim); else it is a replica session, as an apply session is.
 */
export async function writtenAnHourAhead(sql: Sql, origin: string, body: (tx: Sql) => Promise<void>, options: { triggers?: boolean } = {}): Promise<void> {
  const session = await sql.reserve();
  try {
    if (!options.triggers) await session.unsafe(`SET session_replication_role = replica`);
    await session.unsafe(`SELECT pg_catalog.pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_origin WHERE roname = $1)`, [origin]);
    // The origin's progress stays where it is (the stream resumes from the progress log anyway).
    const progress = await session.unsafe<{ lsn: string }[]>(`SELECT coalesce(pg_catalog.pg_replication_origin_progress($1, false), '0/0')::text AS lsn`, [origin]);
    await session.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup($1)`, [origin]);
    await session.unsafe('BEGIN');
    await body(session as unknown as Sql);
    await session.unsafe(`SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, now() + interval '1 hour')`, [progress[0]?.lsn ?? '0/0']);
    await session.unsafe('COMMIT');
    await session.unsafe(`SELECT pg_catalog.pg_replication_origin_session_reset()`);
  } finally {
    session.release();
  }
}
