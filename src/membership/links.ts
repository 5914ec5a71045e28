/**
 * Undoing links: what `node add` removes before it starts again, and what `node remove` removes everywhere.
 * A link peer P -> local L is: the slot for L on P, and on L the origins that track P's stream (their names are
 * recorded in L's pgmesh.peer row: src/cluster/link-names.ts), its catalog rows (peer, apply_progress,
 * applied_xact, peer_horizon, peer_clock).
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Sql } from '../pg/connect.ts';
import { databaseOid, originNameFor, readLinkNames, replayOriginNameFor } from '../cluster/link-names.ts';
import { readSlotHealth } from './slot-health.ts';

const RELEASE_WAIT_MS = 15_000;

/**
 * Drops a slot on this node if it exists. A slot still in use (a walsender streaming it) is released first by
 * ending that walsender when `terminate` is set; otherwise it is an error that names the process.
 */
export async function dropSlotIfExists(sql: Sql, slot: string, options: { terminate: boolean; node: string }): Promise<boolean> {
  const deadline = Date.now() + RELEASE_WAIT_MS;
  for (;;) {
    const rows = await sql.unsafe<{ active_pid: number | null }[]>(
      `SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = current_database()`,
      [slot],
    );
    const row = rows[0];
    if (!row) return false;
    if (row.active_pid === null) {
      try {
        await sql.unsafe(`SELECT pg_catalog.pg_drop_replication_slot($1)`, [slot]);
        return true;
      } catch (error) {
        // Taken again between the two statements: look again.
        if (Date.now() > deadline) throw error;
        continue;
      }
    }
    if (!options.terminate) {
      throw new PgmeshError(
        'APPLY_FAILED',
        `slot ${slot} on ${options.node} is in use by process ${row.active_pid}; stop the agent that streams it and try again`,
        { context: { node: options.node, slot } },
      );
    }
    if (Date.now() > deadline) {
      throw new PgmeshError('APPLY_FAILED', `slot ${slot} on ${options.node} is still in use by process ${row.active_pid}`, { context: { node: options.node, slot } });
    }
    await sql.unsafe(`SELECT pg_catalog.pg_terminate_backend($1::text::int)`, [String(row.active_pid)]);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Drops this node's slots for `subscriber`: those of its own database whose name says so (either naming); never a
 * slot of another database of the server, though its name may be the same.
 */
export async function dropSlotsFor(sql: Sql, subscriber: string, options: { terminate: boolean; node: string }): Promise<void> {
  for (const slot of await readSlotHealth(sql, subscriber)) await dropSlotIfExists(sql, slot.slot, options);
}

/** Removes, on this node, everything of its link from `peer` (catalog rows and origins). */
export async function unlinkPeer(sql: Sql, peer: string, node: string): Promise<void> {
  // The link's recorded origins, and those a link from it made now would have (a link half made or half undone has
  // them without a row): both names carry this database's OID or were recorded here, so they are this node's own.
  // The old-form names of a link no longer recorded are left alone: another database of the server may use them.
  const recorded = await readLinkNames(sql, peer);
  const oid = await databaseOid(sql);
  const origins = new Set([originNameFor(oid, peer), replayOriginNameFor(oid, peer)]);
  if (recorded) origins.add(recorded.origin).add(recorded.replayOrigin);
  await sql.begin(async (tx) => {
    for (const table of ['applied_xact', 'apply_progress', 'peer_horizon', 'peer_clock', 'peer_ack']) {
      await tx.unsafe(`DELETE FROM pgmesh.${table} WHERE peer = $1`, [peer]);
    }
    await tx.unsafe(`DELETE FROM pgmesh.peer WHERE node_name = $1`, [peer]);
  });
  for (const origin of origins) await retireOrigin(sql, origin, peer, node);
}

/**
 * Drops a replication origin of `peer`, its id kept by a placeholder that still reads as `peer` (rows it wrote keep
 * their version's node: src/cluster/retired-origins-sql.ts); one still used by a session (an apply session ending)
 * is waited for a while.
 */
async function retireOrigin(sql: Sql, origin: string, peer: string, node: string): Promise<void> {
  const deadline = Date.now() + RELEASE_WAIT_MS;
  for (;;) {
    try {
      await sql.unsafe(
        `SELECT pgmesh.retire_origin($1, $2)`,
        [origin, peer],
      );
      return;
    } catch (error) {
      if (Date.now() > deadline) {
        throw new PgmeshError(
          'APPLY_FAILED',
          `replication origin ${origin} on ${node} is still in use (${errorMessage(error)}); stop the agent of ${node} that applies from it and try again`,
          { context: { node, origin }, cause: error },
        );
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
