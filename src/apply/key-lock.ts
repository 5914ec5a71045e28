/**
 * Apply sessions of different peers serialise on the keys they write (docs/conflicts.md, "Two peers' changes of one
 * key at the same time").
 *
 * Every apply statement decides on its own snapshot (READ COMMITTED): whether the row exists, whether a tombstone or
 * a claim on a unique value beats the change. Where the row exists, row locks order two sessions. Where it does not,
 * nothing did: one session writing a delete's tombstone for a missing row (or a TRUNCATE's, or a claim) and another
 * inserting that key each ran on a snapshot without the other's uncommitted write, both committed, and the node kept
 * a row that every node which saw the two in one order or the other had decided differently.
 *
 * So before a batch reads anything, a statement of its own locks rows of pgmesh.apply_lock: its table's row shared
 * (FOR KEY SHARE), then one row per key (the slot that the table's OID and the key as tombstones spell it hash to)
 * and one per value of a unique index the batch sends (the index's OID and the value as claims spell it)
 * exclusively, in slot order. The apply statement that follows takes a new snapshot, so it sees whatever a session
 * holding one of these rows committed before it. A peer's TRUNCATE locks its tables' rows exclusively
 * (pgmesh.apply_truncate). Two keys that hash to one slot only wait for each other.
 *
 * Why rows of a pgmesh table and not advisory locks (as before): an advisory lock needs no privilege, so any role
 * could hold a key's or a table's lock and stop the apply of that table for good (docs/security.md). Locking a row
 * of pgmesh.apply_lock needs UPDATE on it, which only the installing role and the agent roles have; a role without
 * USAGE on schema pgmesh cannot even name it. A row lock is a write of the row's header (no new row version): the
 * slots never bloat, and one transaction's locks cost a few page writes.
 *
 * A transaction that has written more than KEY_LOCKS_PER_TRANSACTION rows locks its table's row exclusively for its
 * further batches instead of a row per key (the bulk transactions of one peer then wait for each other's tables).
 */
import { quoteIdent } from '../pg/quote.ts';
import { APPLY_LOCK_SLOTS, tableLockSlot } from './lock-space.ts';
import type { LocalColumn, RelationBinding } from './local-relation.ts';
import { asColumnType, source, type StatementShape } from './statement-builder.ts';

/** Rows of one transaction locked key by key; past this, its batches lock their whole table. */
export const KEY_LOCKS_PER_TRANSACTION = 256;

export type KeyLockMode = 'keys' | 'table';

export interface KeyLock {
  readonly text: string;
  /** Positions, among the batch's value parameters, of this statement's parameters (in order). */
  readonly parameters: readonly number[];
}

/** The mode for a batch of a transaction that has written `rows` rows, this batch's included. */
export function keyLockMode(rows: number): KeyLockMode {
  return rows > KEY_LOCKS_PER_TRANSACTION ? 'table' : 'keys';
}

function col(b: RelationBinding, position: number): LocalColumn {
  return b.columns[position] as LocalColumn;
}

/** The slot of pgmesh.apply_lock of a key or unique value (`text`, as tombstones or claims spell it) of relation `oid`. */
function keySlot(oid: number, text: string): string {
  return `(${APPLY_LOCK_SLOTS} + (pg_catalog.hashtextextended(${text}, ${oid >>> 0}) & ${APPLY_LOCK_SLOTS - 1}))::int4`;
}

/** Locks rows of pgmesh.apply_lock: the slots of `where` (a condition on l.slot), in slot order. */
function lockSlots(where: string, mode: 'FOR KEY SHARE' | 'FOR UPDATE'): string {
  return `SELECT 1 FROM pgmesh.apply_lock l WHERE ${where} ORDER BY l.slot ${mode}`;
}

/** A value among a shape's value parameters: its parameter index and its column's remote position. */
interface SentValue {
  readonly param: number;
  readonly position: number;
}

/** Where a shape's key values and the values of each sent unique index are among its value parameters. */
function parameterLayout(shape: StatementShape): { keys: number[]; indexes: { oid: number; values: SentValue[] }[] } {
  const b = shape.binding;
  // upsert: the whole row (valuePositions); the other kinds: the key first, then the values sent.
  const offset = shape.kind === 'upsert' ? 0 : b.keyPositions.length;
  const keys = shape.kind === 'upsert' ? b.keyPositions.map((p) => shape.valuePositions.indexOf(p)) : b.keyPositions.map((_, i) => i);
  const sent = (column: string): SentValue | undefined => {
    if (shape.kind === 'delete') return undefined;
    const i = shape.valuePositions.findIndex((p) => col(b, p).name === column);
    return i < 0 ? undefined : { param: offset + i, position: shape.valuePositions[i] as number };
  };
  const indexes = b.local.uniqueIndexes.flatMap((index) => {
    const values = index.columns.map(sent);
    return values.every((v): v is SentValue => v !== undefined) ? [{ oid: index.oid, values }] : [];
  });
  return { keys, indexes };
}

/**
 * The statement that locks a batch's keys (and its unique values) before its apply statements. With `rowLocks`
 * (upserts of the full path) it then locks the local rows of those keys: the apply statement decides on its snapshot,
 * and a row of that snapshot can be deleted by a transaction that commits before the write reaches it (a local
 * DELETE, which takes no advisory lock); the upsert's INSERT ... ON CONFLICT would then find no conflict and create
 * the row again even when the delete is newer. With the rows locked first, such a delete has either committed
 * before the apply statement's snapshot (which then sees its tombstone) or waits for this transaction.
 * Parameters: `parameters` of the batch's value parameters (text arrays for many rows).
 */
export function buildKeyLock(shape: StatementShape, mode: KeyLockMode, rowLocks: boolean): KeyLock {
  const b = shape.binding;
  const layout = parameterLayout(shape);
  const tableSlot = tableLockSlot(b.local.oid);
  const keyAliases = b.keyPositions.map((_, i) => `k${i}`);
  const keyTyped = b.keyPositions.map((p, i) => `${asColumnType(b, p, `s.k${i}`)} AS k${i}`);
  const byKey = b.keyPositions.map((p, i) => `x.${quoteIdent(col(b, p).name)} = u.k${i}`).join(' AND ');
  // Rows after the slots (`after`, an init plan evaluated before the first row is locked), in key order, as
  // local transactions that lock several rows usually do: fewer deadlocks with them.
  const rowLock = (after: string): string =>
    `SELECT 1 FROM ${b.local.qualified} x JOIN u ON ${byKey} WHERE (SELECT count(*) FROM ${after}) >= 0 ` +
    `ORDER BY ${keyAliases.map((a) => `u.${a}`).join(', ')} FOR UPDATE OF x`;

  if (mode === 'table') {
    const table = lockSlots(`l.slot = ${tableSlot}`, 'FOR UPDATE');
    if (!rowLocks) return { text: `WITH t AS MATERIALIZED (${table}) SELECT (SELECT count(*) FROM t)::int AS tables`, parameters: [] };
    const text =
      `WITH u AS MATERIALIZED (SELECT ${keyTyped.join(', ')} FROM ${source(keyAliases, shape.multiRow)}), ` +
      `t AS MATERIALIZED (${table}), ` +
      `l AS MATERIALIZED (${rowLock('t')}) ` +
      // In this order (a target list is evaluated in order), whatever the plan does with the gating filter above.
      `SELECT (SELECT count(*) FROM t)::int AS tables, (SELECT count(*) FROM l)::int AS locked`;
    return { text, parameters: layout.keys };
  }

  const valueAliases = layout.indexes.flatMap((x, i) => x.values.map((_, j) => `q${i}_${j}`));
  const valueTyped = layout.indexes.flatMap((x, i) => x.values.map((v, j) => `${asColumnType(b, v.position, `s.q${i}_${j}`)} AS q${i}_${j}`));
  const parameters = [...layout.keys, ...layout.indexes.flatMap((x) => x.values.map((v) => v.param))];
  const table = `t AS MATERIALIZED (${lockSlots(`l.slot = ${tableSlot}`, 'FOR KEY SHARE')})`;
  // Each key's slot, after the table's (the gate: an init plan, evaluated before the first slot is locked).
  const keys = (slots: string): string => `k AS MATERIALIZED (${lockSlots(`l.slot = ANY (${slots}) AND (SELECT count(*) FROM t) = 1`, 'FOR UPDATE')})`;
  if (!shape.multiRow && !rowLocks) {
    // One row, the fast path's insert (most one-row transactions): its slots as one array.
    let next = 0;
    const param = (position: number): string => asColumnType(b, position, `$${++next}::text`);
    const keyValues = b.keyPositions.map(param);
    const slots = [
      keySlot(b.local.oid, `pg_catalog.jsonb_build_array(${keyValues.join(', ')})::text`),
      ...layout.indexes.map((x) => {
        const values = x.values.map((v) => param(v.position));
        // NULLs never collide: no slot (a NULL element matches no row).
        return `CASE WHEN ${values.map((v) => `${v} IS NULL`).join(' OR ')} THEN NULL ELSE ${keySlot(x.oid, `pg_catalog.jsonb_build_array(${values.join(', ')})::text`)} END`;
      }),
    ];
    const text = `WITH ${table}, ${keys(`ARRAY[${slots.join(', ')}]`)} SELECT (SELECT count(*) FROM t)::int AS tables, (SELECT count(*) FROM k)::int AS keys`;
    return { text, parameters };
  }
  // The slots: of the key as tombstones spell it, of each unique value as claims spell it (NULLs never collide).
  const hashes = [
    `SELECT ${keySlot(b.local.oid, `pg_catalog.jsonb_build_array(${keyAliases.map((k) => `u.${k}`).join(', ')})::text`)} AS slot FROM u`,
    ...layout.indexes.map((x, i) => {
      const values = x.values.map((_, j) => `u.q${i}_${j}`);
      return `SELECT ${keySlot(x.oid, `pg_catalog.jsonb_build_array(${values.join(', ')})::text`)} FROM u WHERE ${values.map((v) => `${v} IS NOT NULL`).join(' AND ')}`;
    }),
  ];
  const text =
    `WITH u AS MATERIALIZED (SELECT ${[...keyTyped, ...valueTyped].join(', ')} FROM ${source([...keyAliases, ...valueAliases], shape.multiRow)}), ` +
    `${table}, ` +
    `${keys(`ARRAY(${hashes.join(' UNION ALL ')})`)}` +
    (rowLocks ? `, l AS MATERIALIZED (${rowLock('k')}) ` : ' ') +
    // In this order (a target list is evaluated in order), whatever the plan does with the gating filters above.
    `SELECT (SELECT count(*) FROM t)::int AS tables, (SELECT count(*) FROM k)::int AS keys${rowLocks ? ', (SELECT count(*) FROM l)::int AS locked' : ''}`;
  return { text, parameters };
}
