/**
 * pgmesh's replication slots on one node and whether each still works. A slot is invalidated when it fell behind
 * max_slot_wal_keep_size (wal_status 'lost'; PostgreSQL 17+ also names the reason in invalidation_reason:
 * 'wal_removed', 'idle_timeout' on 18, ...): the node it feeds has lost part of this node's changes for good and
 * needs a resync (node resync).
 */
import { LSN_ZERO, parseLsn, type Lsn } from '../core/lsn.ts';
import type { Queryable, Sql } from '../pg/connect.ts';
import { slotSubscriber } from '../cluster/link-names.ts';

export interface SlotHealth {
  readonly slot: string;
  /** The node the slot streams to (slotSubscriber); null for pgmesh's other slots (the version horizon's). */
  readonly subscriber: string | null;
  readonly active: boolean;
  /** 'reserved' | 'extended' | 'unreserved' | 'lost' */
  readonly walStatus: string | null;
  /** Why the slot was invalidated ('wal_removed', ...), or null while it works. */
  readonly invalidated: string | null;
  readonly confirmedFlush: string | null;
  /** WAL the slot keeps on this node's disk (from its restart point to the current position). */
  readonly retainedBytes: number | null;
}

/**
 * Every pgmesh slot of this node's database, or only its slot for `subscriber`. Slots of other databases of the
 * server are never pgmesh's slots of this node, whatever their names.
 */
export async function readSlotHealth(sql: Sql, subscriber?: string): Promise<SlotHealth[]> {
  // to_jsonb(s): invalidation_reason exists from 17 on and conflicting from 16 on; one statement for every major.
  const rows = await sql.unsafe<
    { slot_name: string; active: boolean; wal_status: string | null; invalidated: string | null; confirmed: string | null; retained: string | null }[]
  >(
    `SELECT s.slot_name, s.active, s.wal_status, s.confirmed_flush_lsn::text AS confirmed,
            coalesce(to_jsonb(s) ->> 'invalidation_reason',
                     CASE WHEN s.wal_status = 'lost' THEN 'wal_removed'
                          WHEN (to_jsonb(s) ->> 'conflicting')::boolean THEN 'conflict with recovery' END) AS invalidated,
            pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint::text AS retained
       FROM pg_catalog.pg_replication_slots s
      WHERE s.slot_name LIKE 'pgmesh\\_%' AND s.database = current_database()
      ORDER BY s.slot_name`,
  );
  const slots = rows.map((r) => ({
    slot: r.slot_name,
    subscriber: slotSubscriber(r.slot_name),
    active: r.active,
    walStatus: r.wal_status,
    invalidated: r.invalidated,
    confirmedFlush: r.confirmed,
    retainedBytes: r.retained === null ? null : Number(r.retained),
  }));
  return subscriber === undefined ? slots : slots.filter((s) => s.subscriber === subscriber);
}

/**
 * The highest position this node may have acknowledged to `peer`: its progress, or the keepalive position it recorded
 * (pgmesh.peer_ack). `known` is false while it has acknowledged nothing (the link's seed row, no record).
 */
export async function ackFloor(catalog: Queryable, peer: string): Promise<{ lsn: Lsn; recorded: Lsn; known: boolean }> {
  const rows = await catalog.unsafe<{ progress: string | null; acked: string | null }[]>(
    `SELECT (SELECT end_lsn::text FROM pgmesh.progress WHERE peer = $1) AS progress,
            (SELECT acked_lsn::text FROM pgmesh.peer_ack WHERE peer = $1) AS acked`,
    [peer],
  );
  const progress = rows[0]?.progress ? parseLsn(rows[0].progress) : LSN_ZERO;
  const recorded = rows[0]?.acked ? parseLsn(rows[0].acked) : LSN_ZERO;
  return { lsn: progress > recorded ? progress : recorded, recorded, known: progress > LSN_ZERO || (rows[0]?.acked ?? null) !== null };
}
