/**
 * Slots for tests: invalidating one the way production does, by max_slot_wal_keep_size, while the other slots of the
 * same server keep up.
 */
import { eventually, type Sql, type TestNode } from './cluster.ts';

const SEGMENT_BYTES = 16 * 1024 * 1024;

async function retainedBytes(node: TestNode, slot: string): Promise<number> {
  const rows = await node.sql.unsafe<{ b: string | null }[]>(
    `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text AS b FROM pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  return Number(rows[0]?.b ?? 0);
}

/**
 * Makes `publisher` keep at most `keepMb` of WAL for a slot (max_slot_wal_keep_size, reloaded), writes WAL (segment
 * switches) until `slot`, which nobody reads, is past that, and checkpoints until the server invalidates it
 * (wal_status 'lost'). Between switches it waits for every slot in `keep` (streamed by running agents) to come within
 * one segment, so that only `slot` falls behind. Needs a superuser connection.
 */
export async function invalidateSlot(publisher: TestNode, slot: string, keep: readonly string[], keepMb = 32): Promise<void> {
  await publisher.sql.unsafe(`ALTER SYSTEM SET max_slot_wal_keep_size = '${keepMb}MB'`);
  await publisher.sql.unsafe(`SELECT pg_reload_conf()`);
  while ((await retainedBytes(publisher, slot)) < (keepMb * 1024 * 1024) + 3 * SEGMENT_BYTES) {
    await publisher.sql.unsafe(`SELECT pg_switch_wal()`);
    // A running-transactions record lets each read slot move its restart point past the switch.
    for (const other of keep) {
      await eventually(
        async () => {
          await publisher.sql.unsafe(`SELECT pg_log_standby_snapshot()`);
          return (await retainedBytes(publisher, other)) < SEGMENT_BYTES;
        },
        { timeoutMs: 60_000, what: `slot ${other} on ${publisher.name} to keep up` },
      );
    }
  }
  await eventually(
    async () => {
      await publisher.sql.unsafe(`CHECKPOINT`);
      const rows = await publisher.sql.unsafe<{ wal_status: string | null }[]>(`SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
      return rows[0]?.wal_status === 'lost';
    },
    { timeoutMs: 60_000, what: `slot ${slot} on ${publisher.name} to be invalidated` },
  );
}

/**
 * The names of `subscriber`'s link from `peer`, as recorded with the link (src/cluster/link-names.ts): the slot on
 * the peer and the origins on the subscriber. Tests read them instead of spelling them: they carry database OIDs.
 */
export async function linkNames(subscriber: TestNode | Sql, peer: string): Promise<{ slot: string; origin: string; replayOrigin: string }> {
  const sql = 'server' in subscriber ? subscriber.sql : subscriber;
  const rows = await sql.unsafe<{ slot_name: string | null; origin_name: string; replay_origin_name: string }[]>(
    `SELECT slot_name, origin_name, replay_origin_name FROM pgmesh.peer WHERE node_name = $1`,
    [peer],
  );
  const row = rows[0];
  if (!row?.slot_name) throw new Error(`no link from ${peer} recorded on the subscriber`);
  return { slot: row.slot_name, origin: row.origin_name, replayOrigin: row.replay_origin_name };
}
