/**
 * Where a peer's stream resumes, and how far its apply is durable here (what may be acknowledged to the peer).
 */
import { PgmeshError } from '../core/errors.ts';
import { parseLsn, type Lsn } from '../core/lsn.ts';
import type { Sql } from '../pg/connect.ts';
import { quoteLiteral } from '../pg/quote.ts';
import type { ApplierOptions } from './apply-types.ts';
import type { ConflictPolicy } from './local-relation.ts';

export interface Progress {
  readonly start: Lsn;
  readonly resumeResolution: ConflictPolicy | undefined;
}

/**
 * How far this node has durably applied a peer's stream: what may be acknowledged to the peer (its slot then lets
 * that WAL go). The newest row of the progress log, committed with the transaction it counts, and on disk: the
 * origin progress call flushes WAL up to the origin's last local transaction, which covers that row's commit.
 * Not the origin progress itself: PostgreSQL also moves it when a transaction that has an xid aborts after
 * pg_replication_origin_xact_setup (or with a value left from an earlier setup in the session), so it can name a
 * transaction that never committed here; acknowledging that would make the peer skip it for good.
 */
export async function durableProgress(sql: Sql, peer: string, origin: string): Promise<Lsn | undefined> {
  const rows = await sql.unsafe<{ lsn: string | null }[]>(
    // No origin progress yet: nothing was flushed by it either, so nothing is known durable.
    `SELECT CASE WHEN o.lsn IS NULL THEN NULL ELSE LEAST(o.lsn, p.end_lsn) END::text AS lsn
       FROM (SELECT pg_catalog.pg_replication_origin_progress($1, true) AS lsn) o,
            (SELECT p.end_lsn FROM pgmesh.progress p WHERE p.peer = $2) p`,
    [origin, peer],
  );
  const lsn = rows[0]?.lsn;
  return lsn ? parseLsn(lsn) : undefined;
}

export async function readProgress(session: Sql, options: ApplierOptions): Promise<Progress> {
  const rows = await session.unsafe<{ end_lsn: string; origin_lsn: string | null; resume_resolution: ConflictPolicy | null }[]>(
    `SELECT p.end_lsn::text AS end_lsn, pg_catalog.pg_replication_origin_progress(${quoteLiteral(options.origin)}, false)::text AS origin_lsn,
            p.resume_resolution
       FROM pgmesh.progress p WHERE p.peer = ${quoteLiteral(options.peer)}`,
  );
  const row = rows[0];
  if (!row) {
    throw new PgmeshError('NOT_INITIALIZED', `node ${options.localNode} has no progress row for peer ${options.peer}; run "pgmesh cluster create" to link them`);
  }
  if (row.origin_lsn !== null && row.origin_lsn !== row.end_lsn) {
    options.logger.warn({ peer: options.peer, progress: row.end_lsn, origin: row.origin_lsn }, 'origin progress differs from the progress row; resuming from the progress row');
  }
  return { start: parseLsn(row.end_lsn), resumeResolution: row.resume_resolution ?? undefined };
}
