/**
 * Undoing links: what `node add` removes before it starts again, and what `node remove` removes everywhere.
 * A link peer P -> local L is: the slot pgmesh_L on P, and on L the origin pgmesh_P, its catalog rows (peer,
 * apply_progress, applied_xact, peer_horizon, peer_clock).
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Sql } from '../pg/connect.ts';
import { originName, replayOriginName } from '../cluster/catalog-schema.ts';

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

/** Removes, on this node, everything of its link from `peer` (catalog rows and origins). */
export async function unlinkPeer(sql: Sql, peer: string, node: string): Promise<void> {
  await sql.begin(async (tx) => {
    for (const table of ['applied_xact', 'apply_progress', 'peer_horizon', 'peer_clock', 'peer_ack']) {
      await tx.unsafe(`DELETE FROM pgmesh.${table} WHERE peer = $1`, [peer]);
    }
    await tx.unsafe(`DELETE FROM pgmesh.peer WHERE node_name = $1`, [peer]);
  });
  for (const origin of [originName(peer), replayOriginName(peer)]) await retireOrigin(sql, origin, peer, node);
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
