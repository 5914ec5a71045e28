/**
 * Copies replicated tables (and tombstones and unique-value claims) from the source's exported snapshot into a joining node, each row with
 * the version it has on the source: (commit timestamp, node) of the transaction that wrote it (docs/design.md,
 * "Membership"). A version is a property of the writing transaction (pg_xact_commit_timestamp_origin(xmin)), so rows
 * of one version are written by one transaction on the joining node, inside an origin session of the version's node
 * and with pg_replication_origin_xact_setup(.., timestamp).
 *
 * Two parts per table:
 * - old rows, whose version is older than the horizon (no change that can still reach the joining node is that old):
 *   one streamed COPY from the source straight into the table, one transaction, version (-infinity, source). Every
 *   change still to come beats them there, as it beats their real version on the source.
 * - recent rows: streamed with their version and a group number (one per version) into a temporary table, then
 *   written by one transaction per group, on the joining node, by one DO block (no round trip per group).
 *
 * Sessions: each COPY reads on a connection of its own in the exported snapshot; `target` has
 * session_replication_role = replica (no user triggers, no foreign key checks: tables can be copied in any order)
 * and no origin session of its own.
 */
import type { ReservedSql } from '../pg/connect.ts';
import { copyFromSnapshot, type CopyCounts, type SnapshotSource } from '../pg/copy-stream.ts';
import { quoteIdent, quoteLiteral } from '../pg/quote.ts';
import type { TableShape } from './table-shapes.ts';

export interface CopyContext {
  /** Every COPY reads on a connection of its own, in the exported snapshot. */
  readonly snapshot: SnapshotSource;
  /** Tables (qualified names) with rows in the source's pgmesh.version_override. */
  readonly withOverrides: ReadonlySet<string>;
  readonly target: ReservedSql;
  readonly sourceNode: string;
  /**
   * Rows whose version is older than this (a timestamptz as text) are copied as one old part; undefined copies
   * every row with its exact version.
   */
  readonly horizon: string | undefined;
  /** The origin on the joining node whose commits read as written by this node (row_version's mapping). */
  readonly originFor: (node: string) => string;
  readonly onProgress: (counts: CopyCounts) => void;
  /**
   * Runs the writing of version groups one at a time across sessions that copy in parallel (they use the origins
   * of every node); undefined when this session copies alone.
   */
  readonly exclusive?: (<T>(fn: () => Promise<T>) => Promise<T>) | undefined;
}

const STAGE = 'pg_temp.pgmesh_copy_stage';
/**
 * The rows of group $1, between its first and last row's ctid ($2, $3): the stage is filled in group order (the
 * source sorts by version to number the groups), so each group is a run of pages read by a TID range scan, with no
 * index to build; a group's rows are found whatever their order, only slower.
 */
const GROUP_ROWS = 'ctid BETWEEN $2 AND $3 AND pgmesh_grp = $1';

/** The version of each row of `alias`: its transaction's, or the override that delta columns keep (catalog). */
function versionJoin(ctx: CopyContext, shape: TableShape, alias: string, withOverrides: boolean): { from: string; ts: string; node: string } {
  const from = `ONLY ${shape.qualified} ${alias} CROSS JOIN LATERAL pgmesh.row_version(${alias}.xmin, ${quoteLiteral(ctx.sourceNode)}) v`;
  if (!withOverrides) return { from, ts: 'v.ts', node: 'v.node' };
  // The key as record_deletes and the applier spell it: the jsonb array of the key values (the session is in UTC).
  const keys = `ARRAY[${shape.primaryKey.map(quoteLiteral).join(', ')}]::text[]`;
  const pkey = `(SELECT jsonb_agg(to_jsonb(${alias}) -> k ORDER BY n) FROM unnest(${keys}) WITH ORDINALITY AS a(k, n))::text`;
  return {
    from:
      `${from} LEFT JOIN pgmesh.version_override o ON o.relid = ${quoteLiteral(shape.qualified)}::regclass` +
      ` AND o.row_xmin = ${alias}.xmin AND o.pkey = ${pkey}`,
    ts: 'coalesce(o.ts, v.ts)',
    node: 'coalesce(o.node, v.node)',
  };
}

/** Copies one table; the joining node's table is empty. Returns what passed between the servers. */
export async function copyTable(ctx: CopyContext, shape: TableShape): Promise<CopyCounts> {
  const columns = shape.columns.filter((c) => !c.generated).map((c) => quoteIdent(c.name));
  const list = columns.join(', ');
  const overrides = ctx.withOverrides.has(shape.qualified);
  const version = versionJoin(ctx, shape, 't', overrides);
  // Without overrides a row's version time is its transaction's commit time: the old and the recent part are split
  // on it alone, without looking up every row's version node (most rows of a large table are old, and the recent
  // part's query reads them all again to find none).
  const commitTs = `coalesce(pg_catalog.pg_xact_commit_timestamp(t.xmin), '-infinity')`;
  const splitOn = overrides ? version.ts : commitTs;
  const select = (alias: string) => columns.map((c) => `${alias}.${c}`).join(', ');
  let total: CopyCounts = { rows: 0, bytes: 0 };
  const add = (counts: CopyCounts) => {
    ctx.onProgress({ rows: total.rows + counts.rows, bytes: total.bytes + counts.bytes });
  };

  // The recent rows first: when there are none (a table that has been there a while), every row is old and the old
  // part is a plain COPY of the table, which costs the source no more than PostgreSQL's own.
  const recent = ctx.horizon === undefined ? 'true' : `${splitOn} >= ${quoteLiteral(ctx.horizon)}::timestamptz`;
  const counts = await copyGroups(ctx, {
    select: `SELECT ${select('t')}, ${version.ts}, ${version.node}, dense_rank() OVER (ORDER BY ${version.node} COLLATE "C", ${version.ts}) FROM ${version.from} WHERE ${recent}`,
    stage: `CREATE TEMP TABLE pgmesh_copy_stage AS SELECT ${list} FROM ONLY ${shape.qualified} LIMIT 0;
            ALTER TABLE ${STAGE} ADD COLUMN pgmesh_ts timestamptz, ADD COLUMN pgmesh_node text, ADD COLUMN pgmesh_grp bigint`,
    insert: `INSERT INTO ${shape.qualified} (${list}) OVERRIDING SYSTEM VALUE SELECT ${list} FROM ${STAGE} WHERE ${GROUP_ROWS}`,
    onProgress: add,
  });
  total = { rows: total.rows + counts.rows, bytes: total.bytes + counts.bytes };

  if (ctx.horizon !== undefined) {
    const horizon = `${quoteLiteral(ctx.horizon)}::timestamptz`;
    // Both reads are in the one snapshot and their conditions complement each other. (COPY of a partitioned table
    // itself is refused; ONLY it holds no rows anyway.)
    const copyOut =
      counts.rows === 0 && !shape.partitioned
        ? `COPY ${shape.qualified} (${list}) TO STDOUT`
        : `COPY (SELECT ${select('t')} FROM ${overrides ? version.from : `ONLY ${shape.qualified} t`} WHERE ${splitOn} < ${horizon}) TO STDOUT`;
    await withOrigin(ctx.target, ctx.originFor(ctx.sourceNode), async () => {
      await ctx.target.unsafe(`BEGIN`);
      await ctx.target.unsafe(`SELECT pg_catalog.pg_replication_origin_xact_setup('0/0', '-infinity')`);
      const old = await copyFromSnapshot(ctx.snapshot, copyOut, ctx.target, `COPY ${shape.qualified} (${list}) FROM STDIN`, add);
      await ctx.target.unsafe(`COMMIT`);
      await ctx.target.unsafe(`SELECT pg_catalog.pg_replication_origin_xact_reset()`);
      total = { rows: total.rows + old.rows, bytes: total.bytes + old.bytes };
    });
  }
  return total;
}

/**
 * Copies the tombstones of the replicated tables, each with its version (the tombstone's own xmin, and an evicted
 * row's own version where it has one), every one exact:
 * there are few (they are collected once every peer is past them), and an older change of a deleted row must lose to
 * its tombstone on the joining node as it does on the source.
 */
export async function copyTombstones(ctx: CopyContext): Promise<CopyCounts> {
  return copyGroups(ctx, {
    select:
      `SELECT n.nspname, c.relname, tb.pkey, tb.ts, tb.node, v.ts, v.node, dense_rank() OVER (ORDER BY v.node COLLATE "C", v.ts)
         FROM pgmesh.tombstone tb
         JOIN pg_catalog.pg_class c ON c.oid = tb.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL pgmesh.row_version(tb.xmin, ${quoteLiteral(ctx.sourceNode)}) v
        WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p
                       WHERE p.pubname = 'pgmesh' AND p.schemaname = n.nspname AND p.tablename = c.relname)`,
    // own_ts/own_node: an evicted row's own version, kept apart from the tombstone's xmin (unique keys, docs/conflicts.md).
    stage: `CREATE TEMP TABLE pgmesh_copy_stage (nsp text, rel text, pkey text, own_ts timestamptz, own_node text, pgmesh_ts timestamptz, pgmesh_node text, pgmesh_grp bigint)`,
    insert:
      `INSERT INTO pgmesh.tombstone (relid, pkey, ts, node)
       SELECT format('%I.%I', nsp, rel)::regclass::oid, pkey, own_ts, own_node FROM ${STAGE} WHERE ${GROUP_ROWS}`,
    onProgress: ctx.onProgress,
  });
}

/** The key columns of unique index `i` (a pg_index row), as a jsonb array of their names: how a claim's index is found again. */
const INDEX_COLUMNS = (i: string) =>
  `(SELECT jsonb_agg(a.attname ORDER BY k.pos) FROM unnest(${i}.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
     JOIN pg_catalog.pg_attribute a ON a.attrelid = ${i}.indrelid AND a.attnum = k.attnum WHERE k.pos <= ${i}.indnkeyatts)::text`;

/**
 * Copies the unique-value claims of the replicated tables (docs/conflicts.md): without them the joining node would
 * let an older row take a value that a newer write held and let go of, where the source makes it give way. A claim's
 * version is written out (ts, node), so no origin session is needed; its index is found on the joining node by table
 * and key columns (the index's name may differ).
 */
export async function copyUniqueClaims(ctx: CopyContext): Promise<CopyCounts> {
  await ctx.target.unsafe(`DROP TABLE IF EXISTS ${STAGE}`);
  await ctx.target.unsafe(`CREATE TEMP TABLE pgmesh_copy_stage (nsp text, rel text, cols text, value text, pkey text, ts timestamptz, node text)`);
  const counts = await copyFromSnapshot(
    ctx.snapshot,
    `COPY (SELECT n.nspname, c.relname, ${INDEX_COLUMNS('i')}, uc.value, uc.pkey, cv.ts, cv.node
             FROM pgmesh.unique_claim uc
             JOIN pg_catalog.pg_index i ON i.indexrelid = uc.indexid
             JOIN pg_catalog.pg_class c ON c.oid = uc.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL pgmesh.claim_version(uc.xmin, uc.ts, uc.node, ${quoteLiteral(ctx.sourceNode)}) cv
            WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p
                           WHERE p.pubname = 'pgmesh' AND p.schemaname = n.nspname AND p.tablename = c.relname)) TO STDOUT`,
    ctx.target,
    `COPY ${STAGE} FROM STDIN`,
    ctx.onProgress,
  );
  await ctx.target.unsafe(
    `INSERT INTO pgmesh.unique_claim (relid, indexid, value, pkey, ts, node)
     SELECT r.oid, i.indexrelid, s.value, s.pkey, s.ts, s.node
       FROM ${STAGE} s
       JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp
       JOIN pg_catalog.pg_class r ON r.relnamespace = n.oid AND r.relname = s.rel
       JOIN pg_catalog.pg_index i ON i.indrelid = r.oid AND i.indisunique AND NOT i.indisprimary AND ${INDEX_COLUMNS('i')} = s.cols
     ON CONFLICT DO NOTHING`,
  );
  await ctx.target.unsafe(`DROP TABLE ${STAGE}`);
  return counts;
}

interface GroupCopy {
  /** The source's rows: the target columns, then version timestamp, version node, group number. */
  readonly select: string;
  /** Creates the temporary table pgmesh_copy_stage with the same columns. */
  readonly stage: string;
  /** Writes one group from the stage into its table: the rows of GROUP_ROWS. */
  readonly insert: string;
  readonly onProgress: (counts: CopyCounts) => void;
}

async function copyGroups(ctx: CopyContext, copy: GroupCopy): Promise<CopyCounts> {
  await ctx.target.unsafe(`DROP TABLE IF EXISTS ${STAGE}`);
  await ctx.target.unsafe(copy.stage);
  const counts = await copyFromSnapshot(ctx.snapshot, `COPY (${copy.select}) TO STDOUT`, ctx.target, `COPY ${STAGE} FROM STDIN`, copy.onProgress);
  if (counts.rows > 0) {
    const nodes = await ctx.target.unsafe<{ node: string }[]>(`SELECT DISTINCT pgmesh_node AS node FROM ${STAGE}`);
    const origins = Object.fromEntries(nodes.map((n) => [n.node, ctx.originFor(n.node)]));
    // One transaction per version. COMMIT inside a DO block needs the block to be the only statement of its message.
    const exclusive = ctx.exclusive ?? (<T>(fn: () => Promise<T>) => fn());
    await exclusive(() => ctx.target.unsafe(`DO $pgmesh$
DECLARE
  origins jsonb := ${quoteLiteral(JSON.stringify(origins))};
  g record;
  active text;
  wanted text;
BEGIN
  FOR g IN SELECT pgmesh_grp, min(pgmesh_ts) AS pgmesh_ts, min(pgmesh_node) AS pgmesh_node, min(ctid) AS lo, max(ctid) AS hi
             FROM ${STAGE} GROUP BY pgmesh_grp ORDER BY pgmesh_grp LOOP
    wanted := origins ->> g.pgmesh_node;
    IF active IS DISTINCT FROM wanted THEN
      IF active IS NOT NULL THEN PERFORM pg_catalog.pg_replication_origin_session_reset(); END IF;
      -- A version of a node that is no peer here (one that left, or this node's own before a resync) needs its origin.
      IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = wanted) THEN
        PERFORM pg_catalog.pg_replication_origin_create(wanted);
      END IF;
      PERFORM pg_catalog.pg_replication_origin_session_setup(wanted);
      active := wanted;
    END IF;
    PERFORM pg_catalog.pg_replication_origin_xact_setup('0/0', g.pgmesh_ts);
    EXECUTE ${quoteLiteral(copy.insert)} USING g.pgmesh_grp, g.lo, g.hi;
    COMMIT;
    PERFORM pg_catalog.pg_replication_origin_xact_reset();
  END LOOP;
  IF active IS NOT NULL THEN PERFORM pg_catalog.pg_replication_origin_session_reset(); END IF;
END
$pgmesh$`));
  }
  await ctx.target.unsafe(`DROP TABLE ${STAGE}`);
  return counts;
}

/** Runs `fn` in an origin session of `origin` on the target (not inside a transaction). */
async function withOrigin(target: ReservedSql, origin: string, fn: () => Promise<void>): Promise<void> {
  await target.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup(${quoteLiteral(origin)})`);
  try {
    await fn();
  } finally {
    await target.unsafe(`SELECT pg_catalog.pg_replication_origin_session_reset()`).catch(() => undefined);
  }
}
