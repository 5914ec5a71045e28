/**
 * Claims on unique values (pgmesh.unique_claim): the newest version that held a value of a unique index (other than
 * the primary key) and let it go, or never held it here. SQL pieces shared by the unique-key resolution and the
 * fast path's deletes. See unique-resolution.ts for the rule.
 */
import { quoteLiteral } from '../pg/quote.ts';
import type { UniqueIndex } from './local-relation.ts';

/**
 * The value of a unique index in a row read as jsonb (to_jsonb of the table row), spelled as the apply statements
 * spell it (the jsonb array of the column values), or NULL when a column is NULL (NULLs never collide).
 */
export function indexValueOf(row: string, index: UniqueIndex): string {
  const fields = index.columns.map((c) => `${row} -> ${quoteLiteral(c)}`);
  return `CASE WHEN ${fields.map((f) => `${f} = 'null'::jsonb`).join(' OR ')} THEN NULL ELSE pg_catalog.jsonb_build_array(${fields.join(', ')})::text END`;
}

/** `INSERT ... ON CONFLICT` of claims from `rows` (indexid, value, pkey, ts, node): the newest version of each value wins. */
export function claimsInsert(rel: string, local: string, rows: string): string {
  return (
    `INSERT INTO pgmesh.unique_claim AS c (relid, indexid, value, pkey, ts, node) ` +
    `SELECT DISTINCT ON (z.indexid, z.value) ${rel}, z.indexid, z.value, z.pkey, z.ts, z.node FROM (${rows}) z WHERE z.value IS NOT NULL ` +
    `ORDER BY z.indexid, z.value, z.ts DESC, z.node COLLATE "C" DESC NULLS LAST ` +
    `ON CONFLICT (relid, indexid, value) DO UPDATE SET pkey = EXCLUDED.pkey, ts = EXCLUDED.ts, node = EXCLUDED.node ` +
    `WHERE (SELECT (cv.ts, cv.node COLLATE "C") < (EXCLUDED.ts, EXCLUDED.node COLLATE "C") FROM pgmesh.claim_version(c.xmin, c.ts, c.node, ${local}) cv)`
  );
}
