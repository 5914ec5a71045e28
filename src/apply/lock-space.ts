/**
 * Names that the apply statements and the catalog's SQL share: the key of a TRUNCATE's tombstone and the slots of
 * pgmesh.apply_lock (src/apply/key-lock.ts; the table and its functions: src/cluster/truncate-sql.ts).
 */

/** The key of the tombstone a TRUNCATE leaves for its whole table (src/cluster/truncate-sql.ts). */
export const TRUNCATE_TOMBSTONE_KEY = '*';

/**
 * Rows of pgmesh.apply_lock per kind: slots 0 .. APPLY_LOCK_SLOTS - 1 are tables' (by OID), the next as many are
 * keys' and unique values' (src/apply/key-lock.ts). Every table slot comes before every key slot, so sessions that
 * lock a table's row first and then keys in slot order lock in one global order.
 */
export const APPLY_LOCK_SLOTS = 8192;

/** The slot of pgmesh.apply_lock that stands for a table among apply sessions. */
export function tableLockSlot(oid: number): number {
  return (oid >>> 0) & (APPLY_LOCK_SLOTS - 1);
}
