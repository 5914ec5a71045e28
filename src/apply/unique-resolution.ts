/**
 * Secondary unique keys converge (docs/conflicts.md, "Unique keys other than the primary key").
 *
 * The rule, under last-update-wins: a write that takes a value of a unique index evicts every older row version
 * holding that value (another primary key), wherever and whenever it arrives; a write that finds the value held,
 * or once held, by a newer version is evicted itself. An evicted row is deleted and leaves a tombstone with its own
 * version, so older writes of its key stay dropped and newer ones come back (and are judged again). Because a row
 * can let go of a value before an older rival arrives, every value remembers the newest version that held it and
 * let it go (pgmesh.unique_claim): with the row holding it now, that is the newest write that ever took it, and
 * every node compares against the same thing whatever the order the writes reach it in.
 *
 * This module builds the statement that runs before a batch's apply statement, on tables with such indexes, in
 * the apply session (same parameters as the apply statement):
 *   u, cur, tomb  the rows, the local row of each one's primary key and its tombstone (as the apply statement)
 *   h<i>, hv      the local rows holding a value a row takes on index i (another key), locked, with versions
 *   cl            claims on those values by other keys
 *   e             per row: does it win on its key, does a newer holder or claim beat it, how many rivals
 *   gone, tw      evicted holders deleted, with tombstones of their own versions; a beaten row that wins on its
 *                 key removes the local row of its key (tombstone of its own version)
 *   cw            claims: the row's values at its version, the replaced local row's and the evicted holders'
 *   mk            beaten rows, for the apply statement to leave out (pgmesh.resolved_change)
 *   rec, lg       one conflict record per rival (the local row whole, or the claim's version), and the summary
 * Other policies: keep_local drops a row that collides with any holder; apply_remote evicts every holder;
 * pause pauses the peer on a collision. Claims decide only under last-update-wins.
 * A holder written earlier in the same remote transaction counts with that transaction's version: neither side
 * evicts the other (a batch can reorder a transaction's rows; careful mode applies them one by one).
 * Deletes only record claims for the values of the local row they remove.
 */
import { quoteIdent, quoteLiteral } from '../pg/quote.ts';
import type { ConflictPolicy, LocalColumn, RelationBinding, UniqueIndex } from './local-relation.ts';
import { source, valueParameterCount, type StatementContext, type StatementShape } from './statement-builder.ts';
import { claimsInsert, indexValueOf } from './unique-claims.ts';
import { hasRowsOf } from './sql-probes.ts';
import { TRUNCATE_TOMBSTONE_KEY } from './lock-space.ts';

/** A unique index whose every column a shape sends, with the aliases of those values in the statement. */
interface SentIndex {
  readonly index: UniqueIndex;
  readonly aliases: readonly string[];
}

interface TypedRows {
  readonly aliases: readonly string[];
  readonly typed: readonly string[];
  /** Alias of the value sent for a local column, if the shape sends it. */
  readonly valueAlias: (column: string) => string | undefined;
  /** SQL boolean: the row is an insert (for the conflict type). */
  readonly isInsert: string;
}

function col(b: RelationBinding, position: number): LocalColumn {
  return b.columns[position] as LocalColumn;
}

function typedRows(shape: StatementShape): TypedRows {
  const b = shape.binding;
  const positionOf = (column: string) => b.columns.findIndex((c) => c.name === column);
  const values = shape.valuePositions.map((p, i) => `s.v${i}::${col(b, p).type} AS v${i}`);
  const valueAlias = (column: string) => {
    const i = shape.valuePositions.indexOf(positionOf(column));
    return i >= 0 ? `v${i}` : undefined;
  };
  switch (shape.kind) {
    case 'upsert':
      return {
        aliases: [...shape.valuePositions.map((_, i) => `v${i}`), 'op'],
        typed: [...values, 's.op', ...b.keyPositions.map((p, j) => `s.v${shape.valuePositions.indexOf(p)}::${col(b, p).type} AS k${j}`)],
        valueAlias,
        isInsert: `u.op = 'i'`,
      };
    case 'partial_update':
    case 'delta_update': {
      const keys = b.keyPositions.map((_, j) => `k${j}`);
      const old = shape.kind === 'delta_update' ? b.deltaPositions.map((_, i) => `o${i}`) : [];
      return {
        aliases: [...keys, ...shape.valuePositions.map((_, i) => `v${i}`), ...old],
        typed: [...b.keyPositions.map((p, j) => `s.k${j}::${col(b, p).type} AS k${j}`), ...values],
        valueAlias,
        isInsert: 'false',
      };
    }
    case 'delete':
      return {
        aliases: b.keyPositions.map((_, j) => `k${j}`),
        typed: b.keyPositions.map((p, j) => `s.k${j}::${col(b, p).type} AS k${j}`),
        valueAlias: () => undefined,
        isInsert: 'false',
      };
  }
}

function sentIndexes(shape: StatementShape, rows: TypedRows): SentIndex[] {
  return shape.binding.local.uniqueIndexes.flatMap((index) => {
    const aliases = index.columns.map((c) => rows.valueAlias(c));
    return aliases.every((a): a is string => a !== undefined) ? [{ index, aliases }] : [];
  });
}

/** Whether a batch of this shape needs buildUniqueResolution before its apply statement. */
export function needsUniqueResolution(shape: StatementShape): boolean {
  if (shape.binding.local.uniqueIndexes.length === 0) return false;
  return shape.kind === 'delete' || sentIndexes(shape, typedRows(shape)).length > 0;
}

/**
 * The unique-key resolution of a batch (see the top of this file). Parameters: as the apply statement of the same
 * shape (buildStatement): its value parameters, then the remote commit timestamp and commit LSN. Returns summary
 * rows (rel, conflict, n) as the apply statements do.
 */
export function buildUniqueResolution(shape: StatementShape, ctx: StatementContext, policy: ConflictPolicy): string {
  const b = shape.binding;
  const n = valueParameterCount(shape);
  const rel = `${b.local.oid}::oid`;
  const table = b.local.qualified;
  const ts = `$${n + 1}::timestamptz`;
  const lsn = `$${n + 2}::pg_lsn`;
  const remote = `${quoteLiteral(ctx.peer)}::text`;
  const local = quoteLiteral(ctx.localNode);
  const relName = quoteLiteral(`${b.local.schema}.${b.local.name}`);
  const rows = typedRows(shape);
  const indexes = sentIndexes(shape, rows);
  const keyNames = b.keyPositions.map((p) => quoteIdent(col(b, p).name));
  const keyMatch = (alias: string, other: string) => keyNames.map((k, j) => `${alias}.${k} = ${other}.k${j}`).join(' AND ');
  const pkeyOf = (alias: string) => `pg_catalog.jsonb_build_array(${keyNames.map((k) => `${alias}.${k}`).join(', ')})::text`;
  const mine = (alias: string) => `${alias}.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned())`;
  const versionOf = (xmin: string, pkey: string) =>
    b.deltaPositions.length > 0 ? `pgmesh.row_version_keyed(${rel}, ${pkey}, ${xmin}, ${local})` : `pgmesh.row_version(${xmin}, ${local})`;
  // The remote row's version against a local one: older, newer, or the same transaction's (neither).
  // A version of the same peer is older whatever its timestamp: its changes arrive in its commit order (as remoteNewer).
  const localOlder = (t: string, node: string) => `(${node} IS NOT DISTINCT FROM ${remote} OR (${t}, ${node} COLLATE "C") < (${ts}, ${remote} COLLATE "C"))`;
  const localNewer = (t: string, node: string) => `(${node} IS DISTINCT FROM ${remote} AND (${ts}, ${remote} COLLATE "C") < (${t}, ${node} COLLATE "C"))`;
  // The local row of each row's key, and the version with which its values are claimed (a row written earlier in
  // this transaction: this transaction's).
  const prelude =
    `WITH u0 AS (SELECT s.ord, ${rows.typed.join(', ')} FROM ${source(rows.aliases, shape.multiRow)}), ` +
    `u AS MATERIALIZED (SELECT u0.*, pg_catalog.jsonb_build_array(${b.keyPositions.map((_, j) => `u0.k${j}`).join(', ')})::text AS pkey` +
    indexes
      .map(
        (x, i) =>
          `, CASE WHEN ${x.aliases.map((a) => `u0.${a} IS NULL`).join(' OR ')} THEN NULL ELSE pg_catalog.jsonb_build_array(${x.aliases.map((a) => `u0.${a}`).join(', ')})::text END AS q${i}`,
      )
      .join('') +
    ` FROM u0), ` +
    `cur AS MATERIALIZED (SELECT u.ord, v.ts AS lts, v.node AS lnode, pg_catalog.to_jsonb(y) AS lrow, ` +
    `CASE WHEN ${mine('y')} THEN ${ts} ELSE v.ts END AS cts, CASE WHEN ${mine('y')} THEN ${remote} ELSE v.node END AS cnode ` +
    `FROM u JOIN ${table} y ON ${keyMatch('y', 'u')} CROSS JOIN LATERAL ${versionOf('y.xmin', 'u.pkey')} v)`;
  const curClaims = b.local.uniqueIndexes.map(
    (index) => `SELECT ${index.oid}::oid AS indexid, ${indexValueOf('cur.lrow', index)} AS value, u.pkey, cur.cts AS ts, cur.cnode AS node FROM u JOIN cur USING (ord)`,
  );
  if (shape.kind === 'delete') {
    // The deleted row lets go of its values: claimed with its version (whether or not the delete wins, a claim
    // the row had anyway).
    // Returns no rows; it names the commit LSN only to take the same parameters as the apply statement.
    return `${prelude}, cw AS (${claimsInsert(rel, local, curClaims.join(' UNION ALL '))}) SELECT NULL::text AS rel, ${lsn} AS lsn WHERE false`;
  }

  const lww = policy === 'last_update_wins';
  const rivalHolder = (r: string) => `(${localOlder(`${r}.hts`, `${r}.hnode`)} OR ${localNewer(`${r}.hts`, `${r}.hnode`)})`;
  const evict = (r: string) => (lww ? localOlder(`${r}.hts`, `${r}.hnode`) : policy === 'apply_remote' ? rivalHolder(r) : 'false');
  const lost = lww ? '(e.beaten_h OR e.beaten_c)' : policy === 'keep_local' ? 'e.collides' : 'false';
  const removeOwn = lww ? `(${lost} AND e.wins_key)` : 'false';
  const holderResolution = lww
    ? `CASE WHEN ${localOlder('hv.hts', 'hv.hnode')} THEN 'apply_remote' ELSE 'keep_local' END`
    : policy === 'apply_remote'
      ? `'apply_remote'`
      : `'keep_local'`;
  const holderJoin = (x: SentIndex, i: number) =>
    `FROM u JOIN ${table} y ON ${x.index.columns.map((c, j) => `y.${quoteIdent(c)} = u.${x.aliases[j]}`).join(' AND ')} ` +
    // Rows of this batch are being rewritten by it: not rivals here (careful mode applies them one by one).
    `WHERE u.q${i} IS NOT NULL AND NOT (${keyMatch('y', 'u')}) AND NOT EXISTS (SELECT 1 FROM u u2 WHERE ${keyMatch('y', 'u2')})`;
  const holders = indexes.map(
    (x, i) =>
      `h${i} AS MATERIALIZED (SELECT u.ord, ${i} AS idx, ${keyNames.map((k, j) => `y.${k} AS hk${j}`).join(', ')}, ${pkeyOf('y')} AS hpkey, pg_catalog.to_jsonb(y) AS hrow, ` +
      `y.xmin AS hxmin, ${mine('y')} AS hmine ${holderJoin(x, i)} FOR UPDATE OF y), ` +
      // The same rows as the statement's snapshot has them, without waiting for locks (see "moved").
      `s${i} AS MATERIALIZED (SELECT ${pkeyOf('y')} AS hpkey, y.xmin AS hxmin ${holderJoin(x, i)})`,
  );
  const claims = indexes.map(
    (x, i) =>
      `SELECT u.ord, ${i} AS idx, c.pkey AS cpkey, cv.ts AS cts, cv.node AS cnode FROM u JOIN pgmesh.unique_claim c ON c.relid = ${rel} AND c.indexid = ${x.index.oid}::oid AND c.value = u.q${i} ` +
      `CROSS JOIN LATERAL pgmesh.claim_version(c.xmin, c.ts, c.node, ${local}) cv WHERE c.pkey <> u.pkey`,
  );
  // Under last-update-wins a row is removed only while it is older (a local write may have replaced it since the
  // snapshot: the delete then sees the new version and leaves it).
  const recheck = lww ? ` AND (SELECT ${localOlder('rv.ts', 'rv.node')} FROM ${versionOf('y.xmin', pkeyOf('y'))} rv)` : '';
  const remoteRow = jsonRow(shape.valuePositions.map((p, i) => [col(b, p).name, `u.v${i}`]));
  const type = `CASE WHEN e.rivals > 1 THEN 'multiple_unique_conflicts' WHEN ${rows.isInsert} THEN 'insert_exists' ELSE 'update_exists' END`;
  const sql =
    `${prelude}, ` +
    // A TRUNCATE's tombstone (key '*') counts for every key; with a key's own, the newer.
    `tomb AS MATERIALIZED (SELECT DISTINCT ON (u.ord) u.ord, v.ts AS tts, v.node AS tnode FROM u JOIN pgmesh.tombstone t ON t.relid = ${rel} ` +
    `AND t.pkey IN (u.pkey, '${TRUNCATE_TOMBSTONE_KEY}') ` +
    `CROSS JOIN LATERAL pgmesh.tombstone_version(t.xmin, t.ts, t.node, ${local}) v ` +
    `ORDER BY u.ord, coalesce(v.ts, '-infinity') DESC, v.node COLLATE "C" DESC), ` +
    `${holders.join(', ')}, ` +
    `hv AS MATERIALIZED (SELECT h.ord, h.idx, ${keyNames.map((_, j) => `h.hk${j}`).join(', ')}, h.hpkey, h.hrow, h.hxmin, ` +
    `CASE WHEN h.hmine THEN ${ts} ELSE v.ts END AS hts, CASE WHEN h.hmine THEN ${remote} ELSE v.node END AS hnode ` +
    `FROM (${indexes.map((_, i) => `SELECT * FROM h${i}`).join(' UNION ALL ')}) h CROSS JOIN LATERAL ${versionOf('h.hxmin', 'h.hpkey')} v), ` +
    // A holder that a local transaction changed or deleted while this statement waited for its lock may have let go
    // of the value with a claim this statement's snapshot does not see: the transaction is applied again, with a
    // new snapshot (serialization_failure is retried like a deadlock).
    `moved AS MATERIALIZED (SELECT pgmesh.raise_error('40001', ${quoteLiteral(`pgmesh: a row of ${b.local.schema}.${b.local.name} holding a unique value changed while a change from ${ctx.peer} was applied; it is applied again`)}, NULL) AS r ` +
    `FROM (${indexes.map((_, i) => `SELECT * FROM s${i}`).join(' UNION ALL ')}) s WHERE NOT EXISTS (SELECT 1 FROM hv WHERE hv.hpkey = s.hpkey AND hv.hxmin = s.hxmin) LIMIT 1), ` +
    // Where a row holds the value now, claims on it are older than that row (it would have given way to them).
    `cl AS MATERIALIZED (SELECT c.* FROM (${claims.join(' UNION ALL ')}) c WHERE NOT EXISTS (SELECT 1 FROM hv WHERE hv.ord = c.ord AND hv.idx = c.idx)), ` +
    `e AS MATERIALIZED (SELECT u.ord, ` +
    `CASE WHEN cur.ord IS NOT NULL THEN ${localOlder('cur.lts', 'cur.lnode')} WHEN tomb.ord IS NOT NULL THEN ${localOlder('tomb.tts', 'tomb.tnode')} ELSE true END AS wins_key, ` +
    `EXISTS (SELECT 1 FROM hv WHERE hv.ord = u.ord AND ${localNewer('hv.hts', 'hv.hnode')}) AS beaten_h, ` +
    `EXISTS (SELECT 1 FROM cl WHERE cl.ord = u.ord AND ${localNewer('cl.cts', 'cl.cnode')}) AS beaten_c, ` +
    `EXISTS (SELECT 1 FROM hv WHERE hv.ord = u.ord AND ${rivalHolder('hv')}) AS collides, ` +
    `(SELECT count(DISTINCT hv.hpkey) FROM hv WHERE hv.ord = u.ord AND ${rivalHolder('hv')}) + ` +
    `${lww ? `(SELECT count(DISTINCT cl.cpkey) FROM cl WHERE cl.ord = u.ord AND ${localNewer('cl.cts', 'cl.cnode')})` : '0'} AS rivals ` +
    `FROM u LEFT JOIN cur USING (ord) LEFT JOIN tomb USING (ord) WHERE NOT EXISTS (SELECT 1 FROM moved)), ` +
    // Evicted holders go, and so does the local row of a beaten row's key when the beaten row is newer on its key.
    `gone AS (DELETE FROM ${table} y USING (SELECT ${keyNames.map((_, j) => `hv.hk${j}`).join(', ')} FROM hv JOIN e USING (ord) WHERE ${evict('hv')} ` +
    `UNION SELECT ${keyNames.map((_, j) => `u.k${j}`).join(', ')} FROM u JOIN e USING (ord) JOIN cur USING (ord) WHERE ${removeOwn}) z ` +
    `WHERE ${keyNames.map((k, j) => `y.${k} = z.hk${j}`).join(' AND ')}${recheck}), ` +
    // An evicted holder's tombstone keeps the holder's version; a beaten row's, its own (this transaction's).
    `tw AS (INSERT INTO pgmesh.tombstone AS t (relid, pkey, ts, node) SELECT ${rel}, z.pkey, z.ts, z.node FROM (` +
    `SELECT DISTINCT ON (hv.hpkey) hv.hpkey AS pkey, hv.hts AS ts, hv.hnode AS node FROM hv JOIN e USING (ord) WHERE ${evict('hv')} ` +
    `UNION ALL SELECT u.pkey, NULL::timestamptz, NULL::text FROM u JOIN e USING (ord) WHERE ${removeOwn}) z ` +
    `ON CONFLICT (relid, pkey) DO UPDATE SET ts = EXCLUDED.ts, node = EXCLUDED.node ` +
    `WHERE (SELECT (tv.ts, tv.node COLLATE "C") < (coalesce(EXCLUDED.ts, ${ts}), coalesce(EXCLUDED.node, ${remote}) COLLATE "C") ` +
    `FROM pgmesh.tombstone_version(t.xmin, t.ts, t.node, ${local}) tv)), ` +
    `cw AS (${claimsInsert(
      rel,
      local,
      [
        ...indexes.map((x, i) => `SELECT ${x.index.oid}::oid AS indexid, u.q${i} AS value, u.pkey, ${ts} AS ts, ${remote} AS node FROM u`),
        ...curClaims,
        ...b.local.uniqueIndexes.map(
          (index) =>
            `SELECT ${index.oid}::oid, ${indexValueOf('hv.hrow', index)}, hv.hpkey, hv.hts, hv.hnode FROM hv JOIN e USING (ord) WHERE ${evict('hv')}`,
        ),
      ].join(' UNION ALL '),
    )}), ` +
    `mk AS (INSERT INTO pgmesh.resolved_change (relid, pkey) SELECT ${rel}, u.pkey FROM u JOIN e USING (ord) WHERE ${lost} ON CONFLICT DO NOTHING), ` +
    // One record per rival: a holder (whole), or, under last-update-wins, a newer claim (its version only).
    `rec AS MATERIALIZED (SELECT z.ord, z.lts, z.lnode, z.lrow, z.resolution FROM (` +
    `(SELECT DISTINCT ON (hv.ord, hv.hpkey) hv.ord, hv.hts AS lts, hv.hnode AS lnode, hv.hrow AS lrow, ${holderResolution} AS resolution ` +
    `FROM hv JOIN e USING (ord) WHERE ${rivalHolder('hv')} ORDER BY hv.ord, hv.hpkey)` +
    (lww
      ? ` UNION ALL (SELECT DISTINCT ON (cl.ord, cl.cpkey) cl.ord, cl.cts, cl.cnode, NULL::jsonb, 'skip' FROM cl ` +
        `WHERE ${localNewer('cl.cts', 'cl.cnode')} ORDER BY cl.ord, cl.cpkey, cl.cts DESC)`
      : '') +
    `) z), ` +
    `lg AS (INSERT INTO pgmesh.conflict (peer, relation, pkey, conflict_type, resolution, local_ts, local_node, local_row, ` +
    `remote_ts, remote_node, remote_row, remote_commit_lsn) ` +
    `SELECT ${remote}, ${relName}, u.pkey, ${type}, rec.resolution, rec.lts, rec.lnode, rec.lrow, ${ts}, ${remote}, ${remoteRow}, ${lsn} ` +
    `FROM rec JOIN u USING (ord) JOIN e USING (ord))`;
  if (policy === 'pause') {
    return (
      `${sql}, p AS (SELECT pgmesh.raise_conflict(${remote}, ${relName}, u.pkey, ${type}) AS r FROM rec JOIN u USING (ord) JOIN e USING (ord) LIMIT 1) ` +
      `SELECT ${relName} AS rel, ${type} AS conflict, count(*)::int AS n, (SELECT count(*) FROM p)::int AS paused FROM rec JOIN u USING (ord) JOIN e USING (ord) GROUP BY 2`
    );
  }
  return `${sql} SELECT ${relName} AS rel, ${type} AS conflict, count(*)::int AS n FROM rec JOIN u USING (ord) JOIN e USING (ord) GROUP BY 2`;
}

/** A jsonb object of (column name, SQL value) pairs; jsonb_build_object takes at most 100 arguments. */
function jsonRow(pairs: readonly (readonly [string, string])[]): string {
  const args = pairs.flatMap(([name, value]) => [quoteLiteral(name), value]);
  const chunks: string[] = [];
  for (let i = 0; i < args.length; i += 100) chunks.push(`pg_catalog.jsonb_build_object(${args.slice(i, i + 100).join(', ')})`);
  return chunks.length === 0 ? `'{}'::jsonb` : chunks.join(' || ');
}

/**
 * Runs right after a fast-path batch of inserts into a table with unique indexes: a claim newer than the
 * rows it wrote means a local transaction let go of one of their values while the insert waited for it (the
 * insert's snapshot did not see the claim that transaction wrote; this statement's does). It raises PM004 (a
 * fast-path miss), and the transaction is applied again with the full statements, which judge the rows against it.
 * Parameters: one text array per primary key column (the rows' keys), then the remote commit timestamp.
 */
export function buildUniqueClaimCheck(binding: RelationBinding, ctx: StatementContext): string {
  const local = binding.local;
  const keys = local.primaryKey;
  const keyType = (name: string) => local.columns.get(name)?.type ?? 'text';
  const rel = `${local.oid}::oid`;
  const ts = `$${keys.length + 1}::timestamptz`;
  const values = local.uniqueIndexes
    .map((index) => `(c.indexid = ${index.oid}::oid AND c.value = pg_catalog.jsonb_build_array(${index.columns.map((c) => `x.${quoteIdent(c)}`).join(', ')})::text)`)
    .join(' OR ');
  return (
    `SELECT pgmesh.raise_error('PM004', 'pgmesh: fast path miss', ${quoteLiteral(String(local.oid))}) ` +
    `FROM unnest(${keys.map((_, i) => `$${i + 1}::text[]`).join(', ')}) AS k(${keys.map((_, i) => `k${i}`).join(', ')}) ` +
    `JOIN ${local.qualified} x ON ${keys.map((k, i) => `x.${quoteIdent(k)} = k.k${i}::${keyType(k)}`).join(' AND ')} ` +
    `JOIN pgmesh.unique_claim c ON c.relid = ${rel} AND (${values}) AND c.pkey <> pg_catalog.jsonb_build_array(${keys.map((k) => `x.${quoteIdent(k)}`).join(', ')})::text ` +
    `CROSS JOIN LATERAL pgmesh.claim_version(c.xmin, c.ts, c.node, ${quoteLiteral(ctx.localNode)}) cv ` +
    // Only rows this transaction wrote, and only when the table has claims at all (an init plan, evaluated once).
    `WHERE ${hasRowsOf('unique_claim', rel)} AND x.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()) ` +
    `AND (${ts}, ${quoteLiteral(ctx.peer)} COLLATE "C") < (cv.ts, cv.node COLLATE "C") LIMIT 1`
  );
}
