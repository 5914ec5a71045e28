/**
 * SQL fragments for the existence checks of the apply statements, written so that their cost per batch does not grow
 * with the tables they look into. Every statement built on the apply path that asks "is there a row of this key?"
 * or "does this table have any such rows at all?" goes through here.
 *
 * Why these shapes: PostgreSQL may run a correlated `EXISTS (...)` that sits inside an OR or a CASE as a hashed
 * subplan, and one at the top of a WHERE clause as a hash semi-join; either reads the whole inner table once per
 * statement to build its hash. Which plan it picks depends on row estimates that lag behind a growing table (a
 * prepared statement planned while the table was small keeps the hashed plan), so a batch of a bulk load scanned the
 * whole replicated table. `OFFSET 0` makes the subquery one the planner will not simplify, so it is neither hashed
 * nor turned into a join: it stays a probe of the key's index per outer row. tests/cluster/apply-plans.test.ts
 * fails when a statement pgmesh runs per batch reads a large table whole.
 */

/** `EXISTS` over `from` and `where`, run as one index probe per outer row (see above). */
export function existsProbe(from: string, where: string): string {
  return `EXISTS (SELECT 1 FROM ${from} WHERE ${where} OFFSET 0)`;
}

/**
 * Whether one of pgmesh's per-table catalogs (tombstones, unique claims: primary keys that start with `relid`) holds
 * any row of relation `rel`: evaluated once per statement (an init plan) so that the per-row probes are skipped for a
 * table that has none. A plain `EXISTS (... WHERE relid = rel)` may be planned as a sequential scan that stops at
 * the first match, which reads every row of the other tables when this one has none; asking for the first row in
 * the primary key's order can only be answered cheaply by the index.
 */
export function hasRowsOf(table: 'tombstone' | 'unique_claim', rel: string): string {
  const next = table === 'tombstone' ? 'pkey' : 'indexid';
  return `((SELECT f.relid FROM pgmesh.${table} f WHERE f.relid = ${rel} ORDER BY f.${next} LIMIT 1) IS NOT NULL)`;
}
