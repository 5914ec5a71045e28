/**
 * SQL that applies a batch of row changes of one table and one kind, with conflict detection, resolution and
 * recording done by the server in the same statement (no round trip per row).
 *
 * Values travel as text (arrays of text for many rows, scalars for one row) and are cast to the local column
 * types. Every statement has the same pipeline of CTEs:
 *   s    the rows as sent, with their position (ord)
 *   u    typed values, and `pkey`, the primary key as a jsonb array (the tombstone key)
 *   cur  the local row's version (commit timestamp, node), if the row exists
 *   tomb the tombstone's version, if the row does not exist but was deleted
 *   d    per row: the conflict type (PostgreSQL 18 names), whether the remote version is newer, whether to apply
 *   ...  the write, the tombstone write, the conflict log, and a summary (conflict counts by type)
 * All CTEs read the snapshot from before the statement, so `cur` and the conflict log see the old local row.
 * On tables with unique indexes besides the primary key, the unique-key resolution runs first (unique-resolution.ts)
 * and `u` leaves out the rows it decided.
 *
 * Parameters: the value columns ($1..$n), then $n+1 remote commit timestamp, $n+2 remote commit LSN.
 * The values are text (cast to each column's type where used); the commit timestamp and LSN parameters are typed, so
 * that the server converts them once, when the parameters are bound, not with a cast from text at every use.
 */
import { quoteIdent, quoteLiteral } from '../pg/quote.ts';
import type { ConflictPolicy, DeferredUnique, LocalColumn, RelationBinding } from './local-relation.ts';
import { TRUNCATE_TOMBSTONE_KEY } from './lock-space.ts';
import { claimsInsert, indexValueOf } from './unique-claims.ts';
import { existsProbe, hasRowsOf } from './sql-probes.ts';

export type BatchKind = 'upsert' | 'partial_update' | 'delta_update' | 'delete';

export interface StatementContext {
  readonly peer: string;
  readonly localNode: string;
  /** Local versions written by another node less than this long before a remote change make it a conflict. */
  readonly conflictWindowMs: number;
  /** The local id (roident) of the peer's replication origin: rows it wrote carry it. Without it, no fast path. */
  readonly peerOriginId?: number;
}

export interface StatementShape {
  readonly kind: BatchKind;
  readonly binding: RelationBinding;
  /** Remote column positions whose values are sent (upsert: all; partial update: those not unchanged TOAST). */
  readonly valuePositions: readonly number[];
  readonly multiRow: boolean;
  /**
   * Positions whose values the update left unchanged (out-of-line values, taken from the old row): written only
   * where the local value differs, so that an equal out-of-line value is kept, not stored again.
   */
  readonly unchangedPositions?: readonly number[];
}

/** The number of value parameters of a shape, in the order the applier fills them. */
export function valueParameterCount(shape: StatementShape): number {
  const keys = shape.binding.keyPositions.length;
  switch (shape.kind) {
    case 'upsert':
      return shape.valuePositions.length + 1; // + op ('i' insert, 'u' full-row update)
    case 'partial_update':
      return keys + shape.valuePositions.length;
    case 'delta_update':
      return keys + shape.valuePositions.length + shape.binding.deltaPositions.length;
    case 'delete':
      return keys;
  }
}

interface Gen {
  readonly b: RelationBinding;
  readonly ctx: StatementContext;
  readonly table: string;
  readonly ts: string;
  readonly lsn: string;
  readonly remote: string;
  readonly local: string;
  readonly rel: string;
}

function col(b: RelationBinding, position: number): LocalColumn {
  return b.columns[position] as LocalColumn;
}

/**
 * `expr` (a value as text) as column p's local type. A cast fits a value to the type's modifier without an error (it
 * cuts a string to varchar(n), rounds a number to numeric(p,s)'s scale); where that would change the value, this
 * raises instead (22001 or 22003, data errors), so the change goes to the exception table whole, never stored cut.
 */
export function asColumnType(b: RelationBinding, p: number, expr: string): string {
  const column = col(b, p);
  const cast = `${expr}::${column.type}`;
  const bounded = column.bounded;
  if (!bounded) return cast;
  // STABLE, not volatile (pgmesh.value_cut): a key compared with this expression can still use the table's index.
  // Its message is made when it raises: a statement's text costs on every EXECUTE.
  const cut = `pgmesh.value_cut('${bounded.sqlstate}', ${b.local.oid}, ${quoteLiteral(column.name)}, ${expr}::text)`;
  return `CASE WHEN ${expr}::${bounded.unmodified} IS NOT DISTINCT FROM ${cast} OR ${cut} THEN ${cast} END`;
}

/** The rows of a statement's parameters, as `s` with their position `ord` (text arrays for many rows). */
export function source(aliases: readonly string[], multiRow: boolean): string {
  const params = aliases.map((_, i) => `$${i + 1}::text${multiRow ? '[]' : ''}`);
  return multiRow
    ? `unnest(${params.join(', ')}) WITH ORDINALITY AS s(${[...aliases, 'ord'].join(', ')})`
    : `(VALUES (${[...params, '1::bigint'].join(', ')})) AS s(${[...aliases, 'ord'].join(', ')})`;
}

/** The version of local row x: from its xmin, or for delta tables from the override kept when a change lost. */
function versionOf(g: Gen, alias: string, pkey: string): string {
  return g.b.deltaPositions.length > 0
    ? `pgmesh.row_version_keyed(${g.rel}, ${pkey}, ${alias}.xmin, ${g.local})`
    : `pgmesh.row_version(${alias}.xmin, ${g.local})`;
}

function keyMatch(g: Gen, alias: string): string {
  return g.b.keyPositions.map((p, i) => `${alias}.${quoteIdent(col(g.b, p).name)} = u.k${i}`).join(' AND ');
}

/**
 * The value to set for a column whose value an update left unchanged: the local value where it is the same (in
 * its text form, byte for byte), so the row keeps its out-of-line value instead of storing a copy; the remote
 * value otherwise (the local row is another version). `remoteText` is the remote value as text.
 */
function keepIfSame(local: string, remote: string, remoteText: string): string {
  return `CASE WHEN (${local}::text COLLATE "C") IS NOT DISTINCT FROM ${remoteText} THEN ${local} ELSE ${remote} END`;
}

/**
 * Whether the remote change beats a local version. A version written by the same peer always loses: the peer's
 * changes arrive in its commit order, so its later change is newer whatever its timestamp says (a peer whose clock
 * stepped back must not have its later writes dropped).
 */
function remoteNewer(ts: string, node: string, g: Gen): string {
  return `(${node} IS NOT DISTINCT FROM ${g.remote} OR (${ts}, ${node} COLLATE "C") < (${g.ts}, ${g.remote} COLLATE "C"))`;
}

function concurrent(g: Gen): string {
  return `cur.lnode <> ${g.remote} AND cur.lts > ${g.ts} - interval '${Math.round(g.ctx.conflictWindowMs)} milliseconds'`;
}

/** CTEs common to every kind: typed rows (u), local versions (cur), tombstones (tomb). */
function prelude(g: Gen, aliases: readonly string[], typed: readonly string[], multiRow: boolean): string {
  const keys = g.b.keyPositions.map((_, i) => `u0.k${i}`);
  // On tables with unique indexes, rows that the unique-key resolution before this statement decided (they lost)
  // are left out, and its marks removed (buildUniqueResolution).
  const unique = g.b.local.uniqueIndexes.length > 0;
  const leaveOut = unique ? ` WHERE NOT EXISTS (SELECT 1 FROM pgmesh.resolved_change r WHERE r.relid = ${g.rel} AND r.pkey = pg_catalog.jsonb_build_array(${keys.join(', ')})::text)` : '';
  const unmark = unique ? `rc AS (DELETE FROM pgmesh.resolved_change r WHERE r.relid = ${g.rel}), ` : '';
  return (
    `WITH u0 AS (SELECT s.ord, ${typed.join(', ')} FROM ${source(aliases, multiRow)}), ` +
    `u AS MATERIALIZED (SELECT u0.*, pg_catalog.jsonb_build_array(${keys.join(', ')})::text AS pkey FROM u0${leaveOut}), ${unmark}` +
    `cur AS MATERIALIZED (SELECT u.ord, v.ts AS lts, v.node AS lnode FROM u JOIN ${g.table} x ON ${keyMatch(g, 'x')} ` +
    `CROSS JOIN LATERAL ${versionOf(g, 'x', 'u.pkey')} v), ` +
    // The tombstone probe runs only when the table has tombstones at all (an init plan evaluated once).
    // A TRUNCATE leaves a tombstone for the whole table (key '*', see truncate-sql.ts): with a key's own, the newer counts.
    `tomb AS MATERIALIZED (SELECT DISTINCT ON (u.ord) u.ord, v.ts AS tts, v.node AS tnode FROM u JOIN pgmesh.tombstone t ON t.relid = ${g.rel} ` +
    `AND t.pkey IN (u.pkey, '${TRUNCATE_TOMBSTONE_KEY}') ` +
    `CROSS JOIN LATERAL pgmesh.tombstone_version(t.xmin, t.ts, t.node, ${g.local}) v WHERE ${hasRowsOf('tombstone', g.rel)} ` +
    `AND NOT EXISTS (SELECT 1 FROM cur WHERE cur.ord = u.ord) ` +
    `ORDER BY u.ord, coalesce(v.ts, '-infinity') DESC, v.node COLLATE "C" DESC)`
  );
}

function applyRule(policy: ConflictPolicy): string {
  switch (policy) {
    case 'last_update_wins':
      return 'd.newer';
    case 'apply_remote':
      return 'true';
    case 'keep_local':
    case 'pause':
      return 'd.conflict IS NULL';
  }
}

/** Logs every conflict, returns counts by type; under the pause policy raises instead (the peer is paused). */
function epilogue(g: Gen, policy: ConflictPolicy, remoteRow: string, resolution: string): string {
  // Every summary row names its table: the rows of several statements of one message come back together.
  const rel = quoteLiteral(`${g.b.local.schema}.${g.b.local.name}`);
  const localRow = `(SELECT pg_catalog.to_jsonb(x) FROM ${g.table} x WHERE ${keyMatch(g, 'x')})`;
  const log =
    `l AS (INSERT INTO pgmesh.conflict (peer, relation, pkey, conflict_type, resolution, local_ts, local_node, local_row, ` +
    `remote_ts, remote_node, remote_row, remote_commit_lsn) ` +
    `SELECT ${g.remote}, ${quoteLiteral(`${g.b.local.schema}.${g.b.local.name}`)}, u.pkey, a.conflict, ${resolution}, ` +
    `coalesce(a.lts, a.tts), coalesce(a.lnode, a.tnode), ${localRow}, ${g.ts}, ${g.remote}, ${remoteRow}, ${g.lsn} ` +
    `FROM a JOIN u USING (ord) WHERE a.conflict IS NOT NULL)`;
  const pause =
    policy === 'pause'
      ? `, p AS (SELECT pgmesh.raise_conflict(${g.remote}, ${quoteLiteral(`${g.b.local.schema}.${g.b.local.name}`)}, u.pkey, a.conflict) AS r ` +
        `FROM a JOIN u USING (ord) WHERE a.conflict IS NOT NULL LIMIT 1)`
      : '';
  const summary =
    policy === 'pause'
      ? `SELECT ${rel} AS rel, a.conflict, count(*)::int AS n, (SELECT count(*) FROM p)::int AS paused FROM a WHERE a.conflict IS NOT NULL GROUP BY 2`
      : `SELECT ${rel} AS rel, a.conflict, count(*)::int AS n FROM a WHERE a.conflict IS NOT NULL GROUP BY 2`;
  return `, ${log}${pause} ${summary}`;
}

function remoteRowOf(g: Gen, positions: readonly number[], aliasOf: (i: number) => string): string {
  const pairs = positions.flatMap((p, i) => [quoteLiteral(col(g.b, p).name), `u.${aliasOf(i)}`]);
  // jsonb_build_object takes at most 100 arguments: build wide rows from several objects.
  const chunks: string[] = [];
  for (let i = 0; i < pairs.length; i += 100) chunks.push(`pg_catalog.jsonb_build_object(${pairs.slice(i, i + 100).join(', ')})`);
  return chunks.length === 0 ? `'{}'::jsonb` : chunks.join(' || ');
}

export function buildStatement(shape: StatementShape, ctx: StatementContext, policy: ConflictPolicy): string {
  const b = shape.binding;
  const values = shape.valuePositions.length;
  const n = valueParameterCount(shape);
  const g: Gen = {
    b,
    ctx,
    table: b.local.qualified,
    ts: `$${n + 1}::timestamptz`,
    lsn: `$${n + 2}::pg_lsn`,
    remote: quoteLiteral(ctx.peer),
    local: quoteLiteral(ctx.localNode),
    rel: `${b.local.oid}::oid`,
  };
  const keyTyped = b.keyPositions.map((p, i) => `${asColumnType(b, p, `s.k${i}`)} AS k${i}`);
  const keyAliases = b.keyPositions.map((_, i) => `k${i}`);
  const newerLocal = remoteNewer('cur.lts', 'cur.lnode', g);
  const newerTomb = remoteNewer('tomb.tts', 'tomb.tnode', g);
  const recheck =
    policy === 'last_update_wins' ? ` AND (SELECT ${remoteNewer('rv.ts', 'rv.node', g)} FROM ${versionOf(g, 'x', 'u.pkey')} rv)` : '';
  switch (shape.kind) {
    case 'upsert': {
      const aliases = [...shape.valuePositions.map((_, i) => `v${i}`), 'op'];
      // Key values are taken from the row values (an upsert carries the whole row).
      const keyFromValues = b.keyPositions.map((p, i) => `${asColumnType(b, p, `s.v${shape.valuePositions.indexOf(p)}`)} AS k${i}`);
      const typed = [...shape.valuePositions.map((p, i) => `${asColumnType(b, p, `s.v${i}`)} AS v${i}`), 's.op', ...keyFromValues];
      const names = shape.valuePositions.map((p) => quoteIdent(col(b, p).name));
      const nonKey = names.filter((_, i) => !b.keyPositions.includes(shape.valuePositions[i] as number));
      const unchanged = new Set((shape.unchangedPositions ?? []).map((p) => quoteIdent(col(b, p).name)));
      const set = (nonKey.length > 0 ? nonKey : names).map((c) =>
        unchanged.has(c) ? `${c} = ${keepIfSame(`x.${c}`, `EXCLUDED.${c}`, `EXCLUDED.${c}::text`)}` : `${c} = EXCLUDED.${c}`,
      );
      const conflictTarget = b.local.primaryKey.map(quoteIdent).join(', ');
      const onConflictCheck = policy === 'last_update_wins' ? ` WHERE (SELECT ${remoteNewer('rv.ts', 'rv.node', g)} FROM ${versionOf(g, 'x', `pg_catalog.jsonb_build_array(${b.keyPositions.map((p) => `x.${quoteIdent(col(b, p).name)}`).join(', ')})::text`)} rv)` : '';
      return (
        prelude(g, aliases, typed, shape.multiRow) +
        `, d AS MATERIALIZED (SELECT u.ord, cur.ord IS NOT NULL AS found, cur.lts, cur.lnode, tomb.tts, tomb.tnode, ` +
        `CASE WHEN cur.ord IS NOT NULL THEN CASE WHEN u.op = 'i' THEN 'insert_exists' WHEN ${concurrent(g)} THEN 'update_origin_differs' END ` +
        `WHEN u.op = 'u' THEN 'update_missing' WHEN tomb.ord IS NOT NULL AND NOT ${newerTomb} THEN 'insert_exists' END AS conflict, ` +
        `CASE WHEN cur.ord IS NOT NULL THEN ${newerLocal} WHEN tomb.ord IS NOT NULL THEN ${newerTomb} ELSE true END AS newer ` +
        `FROM u LEFT JOIN cur USING (ord) LEFT JOIN tomb USING (ord)), ` +
        `a AS MATERIALIZED (SELECT d.*, ${applyRule(policy)} AS apply FROM d), ` +
        `w AS (INSERT INTO ${g.table} AS x (${names.join(', ')}) OVERRIDING SYSTEM VALUE SELECT ${shape.valuePositions.map((_, i) => `u.v${i}`).join(', ')} ` +
        `FROM u JOIN a USING (ord) WHERE a.apply ORDER BY u.ord ON CONFLICT (${conflictTarget}) DO UPDATE SET ${set.join(', ')}${onConflictCheck})` +
        epilogue(g, policy, remoteRowOf(g, shape.valuePositions, (i) => `v${i}`), `CASE WHEN a.apply THEN 'apply_remote' WHEN a.found THEN 'keep_local' ELSE 'skip' END`)
      );
    }
    case 'partial_update':
    case 'delta_update': {
      const delta = shape.kind === 'delta_update';
      const valueAliases = shape.valuePositions.map((_, i) => `v${i}`);
      const oldAliases = delta ? b.deltaPositions.map((_, i) => `o${i}`) : [];
      const aliases = [...keyAliases, ...valueAliases, ...oldAliases];
      const typed = [
        ...keyTyped,
        ...shape.valuePositions.map((p, i) => `${asColumnType(b, p, `s.v${i}`)} AS v${i}`),
        ...b.deltaPositions.filter(() => delta).map((p, i) => `${asColumnType(b, p, `s.o${i}`)} AS o${i}`),
      ];
      // GENERATED ALWAYS identity columns are left out: an UPDATE may set them only to DEFAULT (they are key columns).
      const set = shape.valuePositions.flatMap((p, i) => {
        if (col(b, p).identityAlways) return [];
        const name = quoteIdent(col(b, p).name);
        const d = delta ? b.deltaPositions.indexOf(p) : -1;
        if (d >= 0) return `${name} = x.${name} + (u.v${i} - u.o${d})`;
        if (delta && shape.unchangedPositions?.includes(p)) return `${name} = CASE WHEN a.apply THEN ${keepIfSame(`x.${name}`, `u.v${i}`, `u.v${i}::text`)} ELSE x.${name} END`;
        if (delta) return `${name} = CASE WHEN a.apply THEN u.v${i} ELSE x.${name} END`;
        return `${name} = u.v${i}`;
      });
      // Delta columns always add up; the other columns follow the policy. A losing change still rewrites the
      // row, so its winning version is kept in version_override.
      const where = delta ? `a.found` : `a.found AND a.apply`;
      const names = shape.valuePositions.map((p) => quoteIdent(col(b, p).name));
      const write = delta
        ? `w AS (UPDATE ${g.table} AS x SET ${set.join(', ')} FROM u JOIN a USING (ord) WHERE ${keyMatch(g, 'x')} AND ${where} ` +
          `RETURNING u.ord, u.pkey, x.xmin AS new_xmin, a.apply, a.lts, a.lnode), ` +
          `ov AS (INSERT INTO pgmesh.version_override (relid, pkey, row_xmin, ts, node) SELECT ${g.rel}, w.pkey, w.new_xmin, w.lts, w.lnode ` +
          `FROM w WHERE NOT w.apply ON CONFLICT (relid, pkey) DO UPDATE SET row_xmin = EXCLUDED.row_xmin, ts = EXCLUDED.ts, node = EXCLUDED.node), ` +
          // An update whose row has not arrived yet (or was deleted by an older delete) creates it (whole: its values
          // left unchanged come from the old row).
          `ins AS (INSERT INTO ${g.table} (${names.join(', ')}) OVERRIDING SYSTEM VALUE SELECT ${valueAliases.map((a) => `u.${a}`).join(', ')} FROM u JOIN a USING (ord) ` +
          `WHERE NOT a.found AND a.apply ON CONFLICT DO NOTHING)`
        : `w AS (UPDATE ${g.table} AS x SET ${set.join(', ')} FROM u JOIN a USING (ord) WHERE ${keyMatch(g, 'x')} AND ${where}${recheck})`;
      // A delta table sends the old row (REPLICA IDENTITY FULL): when the local delta values are the ones the remote
      // writer changed from, it had seen the local version, and the update is not concurrent whatever the window says.
      const unseen = delta
        ? ` AND ${existsProbe(
            `${g.table} x`,
            `${keyMatch(g, 'x')} AND (${b.deltaPositions.map((p, i) => `x.${quoteIdent(col(b, p).name)} IS DISTINCT FROM u.o${i}`).join(' OR ')})`,
          )}`
        : '';
      return (
        prelude(g, aliases, typed, shape.multiRow) +
        `, d AS MATERIALIZED (SELECT u.ord, cur.ord IS NOT NULL AS found, cur.lts, cur.lnode, tomb.tts, tomb.tnode, ` +
        `CASE WHEN cur.ord IS NOT NULL THEN CASE WHEN ${concurrent(g)}${unseen} THEN 'update_origin_differs' END ` +
        `ELSE 'update_missing' END AS conflict, ` +
        `CASE WHEN cur.ord IS NOT NULL THEN ${newerLocal} WHEN tomb.ord IS NOT NULL THEN ${newerTomb} ELSE true END AS newer ` +
        `FROM u LEFT JOIN cur USING (ord) LEFT JOIN tomb USING (ord)), ` +
        `a AS MATERIALIZED (SELECT d.*, ${applyRule(policy)} AS apply FROM d), ${write}` +
        epilogue(
          g,
          policy,
          remoteRowOf(g, shape.valuePositions, (i) => `v${i}`),
          delta
            ? `CASE WHEN a.apply THEN 'apply_remote' WHEN a.found THEN 'keep_local' ELSE 'skip' END`
            : // Without its unchanged TOAST values the row cannot be created: a missing row is skipped.
              `CASE WHEN NOT a.found THEN 'skip' WHEN a.apply THEN 'apply_remote' ELSE 'keep_local' END`,
        )
      );
    }
    case 'delete': {
      return (
        prelude(g, keyAliases, keyTyped, shape.multiRow) +
        `, d AS MATERIALIZED (SELECT u.ord, cur.ord IS NOT NULL AS found, cur.lts, cur.lnode, tomb.tts, tomb.tnode, ` +
        `CASE WHEN cur.ord IS NULL THEN 'delete_missing' WHEN ${concurrent(g)} THEN 'delete_origin_differs' END AS conflict, ` +
        `CASE WHEN cur.ord IS NOT NULL THEN ${newerLocal} WHEN tomb.ord IS NOT NULL THEN ${newerTomb} ELSE true END AS newer ` +
        `FROM u LEFT JOIN cur USING (ord) LEFT JOIN tomb USING (ord)), ` +
        `a AS MATERIALIZED (SELECT d.*, CASE WHEN NOT d.found THEN d.newer ELSE ${applyRule(policy)} END AS apply FROM d), ` +
        `w AS (DELETE FROM ${g.table} AS x USING u JOIN a USING (ord) WHERE ${keyMatch(g, 'x')} AND a.apply AND a.found${recheck}), ` +
        // The delete's version lives on in a tombstone, so an older insert or update arriving later loses to it.
        `tw AS (INSERT INTO pgmesh.tombstone AS t (relid, pkey) SELECT ${g.rel}, u.pkey FROM u JOIN a USING (ord) WHERE a.apply ` +
        `ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey, ts = NULL, node = NULL WHERE (SELECT ${remoteNewer('tv.ts', 'tv.node', g)} FROM pgmesh.tombstone_version(t.xmin, t.ts, t.node, ${g.local}) tv))` +
        epilogue(g, policy, remoteRowOf(g, b.keyPositions, (i) => `k${i}`), `CASE WHEN NOT a.found THEN 'skip' WHEN a.apply THEN 'apply_remote' ELSE 'keep_local' END`)
      );
    }
  }
}

/**
 * Checks a deferrable unique constraint for the rows a transaction wrote, at its end (where PostgreSQL would have
 * checked it, had its check triggers fired in the replica-mode apply session). Parameters: one text array per
 * primary key column, the keys of the rows written. Raises unique_violation (23505) naming the constraint.
 */
export function buildDeferredUniqueCheck(binding: RelationBinding, index: DeferredUnique): string {
  const local = binding.local;
  const table = local.qualified;
  const keys = local.primaryKey;
  const keyType = (name: string) => local.columns.get(name)?.type ?? 'text';
  const sourceColumns = keys.map((_, i) => `k${i}`);
  const join = keys.map((k, i) => `x.${quoteIdent(k)} = k.k${i}::${keyType(k)}`).join(' AND ');
  const same = index.columns.map((c) => `y.${quoteIdent(c)} = x.${quoteIdent(c)}`).join(' AND ');
  const other = keys.map((k) => `y.${quoteIdent(k)} = x.${quoteIdent(k)}`).join(' AND ');
  const detail = `pg_catalog.format('Key (%s)=(%s) already exists.', ${quoteLiteral(index.columns.map(quoteIdentIfNeeded).join(', '))}, pg_catalog.concat_ws(', ', ${index.columns.map((c) => `x.${quoteIdent(c)}::text`).join(', ')}))`;
  return (
    `SELECT pgmesh.raise_unique_violation(${quoteLiteral(index.name)}, ${quoteLiteral(local.schema)}, ${quoteLiteral(local.name)}, ${detail}) ` +
    `FROM unnest(${keys.map((_, i) => `$${i + 1}::text[]`).join(', ')}) AS k(${sourceColumns.join(', ')}) JOIN ${table} x ON ${join} ` +
    `WHERE ${existsProbe(`${table} y`, `${same} AND NOT (${other})`)} LIMIT 1`
  );
}

function quoteIdentIfNeeded(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : quoteIdent(name);
}

/**
 * The fast path: a statement for the common case only, a change that meets no conflict. It writes the rows and
 * returns nothing (no row description either: the driver's per-result work is a large part of the agent's CPU on
 * small transactions); if any row of the batch is not the common case it raises PM004 (fast path miss), and the
 * applier applies the transaction again with the full statement (buildStatement), which decides and records.
 * The full statement costs about 3x a plain write on the server (conflict detection, conflict log, summary, all
 * planned in one statement); most changes meet no conflict, so they should not pay for it.
 *
 * The common case, where the full statement would apply the change without a conflict:
 *   insert  no local row and no tombstone for its key; a plain INSERT (no ON CONFLICT, whose speculative insertion
 *           writes a second WAL record per row, and no probe of its own): an existing row fails it with a unique
 *           violation, which the applier takes as a miss on the fast path
 *   update  the local row exists and its version was written by this same peer (older whatever its timestamp:
 *   delete  see remoteNewer) or is older than the remote one by more than the conflict window (so no
 *           *_origin_differs); a delete leaves its tombstone
 * Update and delete check, in a CTE, that they wrote every row; the statement around it inserts into
 * pgmesh.fast_path_check only to raise (it never receives a row), so that it returns no rows, or, finishing, raises
 * before its origin set-up.
 * `finishing`: the statement also finishes its transaction (see finishCtes), for a transaction whose only statement
 * it is (one statement instead of two saved the apply backend about 10 us); its finish parameters follow its own.
 * Tables with delta columns take the fast path for inserts only (their versions may live in version_override).
 * Parameters: as buildStatement's value parameters, then (update, delete, any finishing statement) the remote commit
 * timestamp, then (finishing) the previous and this transaction's end LSN.
 * Returns undefined where there is no fast path.
 */
export function buildFastStatement(
  shape: StatementShape,
  ctx: StatementContext,
  op: 'i' | 'u' | undefined,
  finishing = false,
): { text: string; timestamp: boolean } | undefined {
  const b = shape.binding;
  if (ctx.peerOriginId === undefined) return undefined;
  const n = valueParameterCount(shape);
  const rel = `${b.local.oid}::oid`;
  const table = b.local.qualified;
  const count = shape.multiRow ? `cardinality($1::text[])` : '1';
  const raise = `pgmesh.raise_error('PM004', 'pgmesh: fast path miss', ${quoteLiteral(String(b.local.oid))})`;
  // What follows the CTEs of an update or delete (CTE `written` returns a row per row written): alone, an insert
  // into pgmesh.fast_path_check that only raises; finishing, the progress log's insert, whose origin set-up raises
  // instead when a row was not written (before setting anything up), so no third table is written.
  // One row matches its primary key at most once: "it wrote a row" is then the whole check, and EXISTS needs no
  // aggregate (about 2 us less per statement than counting, 9 interleaved rounds).
  const wroteAll = shape.multiRow ? (written: string) => `(SELECT count(*) FROM ${written}) = ${count}` : (written: string) => `EXISTS (SELECT FROM ${written})`;
  const checked = (written: string): string => {
    if (!finishing) return ` INSERT INTO pgmesh.fast_path_check (miss) SELECT ${raise} WHERE NOT ${wroteAll(written)}`;
    const { check, log } = finishCtes(ctx, n + 2, ts, { ok: wroteAll(written), raise });
    return `, ${check} ${log}`;
  };
  const ts = `$${n + 1}::timestamptz`;
  // The local row's version allows the change without a conflict (see above). A row written earlier in this
  // transaction has no commit timestamp yet: oldest, as the full statement treats it. Fields of the function called
  // in the expression (a commit-timestamp lookup each), not a subquery over it: the subquery's plan (a function scan
  // in a subplan) was started and run for every statement, about 8% of a one-row update's backend time (perf).
  const version = `pg_catalog.pg_xact_commit_timestamp_origin(x.xmin)`;
  // A version of the same peer is older whatever its timestamp (see remoteNewer).
  const older =
    `((${version}).roident = ${ctx.peerOriginId} OR ` +
    `coalesce((${version}).timestamp, '-infinity') < ${ts} - interval '${Math.round(ctx.conflictWindowMs)} milliseconds')`;
  const keyTyped = b.keyPositions.map((p, i) => `${asColumnType(b, p, `s.k${i}`)} AS k${i}`);
  const keyAliases = b.keyPositions.map((_, i) => `k${i}`);
  const match = b.keyPositions.map((p, i) => `x.${quoteIdent(col(b, p).name)} = u.k${i}`).join(' AND ');
  const delta = b.deltaPositions.length > 0;
  // One row: its values are the parameters themselves, with no VALUES list joined to the table (a CTE scan, a values
  // scan and a join fewer to start and run per statement). `param(i, p)`: parameter i cast to column p's type.
  const param = (i: number, p: number): string => asColumnType(b, p, `$${i + 1}::text`);
  const keyMatchParams = (firstKey: (i: number) => number): string =>
    b.keyPositions.map((p, i) => `x.${quoteIdent(col(b, p).name)} = ${param(firstKey(i), p)}`).join(' AND ');
  // Tables with unique indexes besides the primary key (unique-resolution.ts): an insert of a value that has a claim,
  // and an update that changes a unique value, take the full statements; a delete claims the values it removes.
  const uniqueColumns = new Set(b.local.uniqueIndexes.flatMap((index) => index.columns));
  const sameUnique = (value: (i: number, p: number) => string): string =>
    shape.valuePositions.flatMap((p, i) => (uniqueColumns.has(col(b, p).name) ? [` AND x.${quoteIdent(col(b, p).name)} IS NOT DISTINCT FROM ${value(i, p)}`] : [])).join('');
  switch (shape.kind) {
    case 'upsert': {
      const aliases = [...shape.valuePositions.map((_, i) => `v${i}`), 'op'];
      const names = shape.valuePositions.map((p) => quoteIdent(col(b, p).name));
      const typed = shape.valuePositions.map((p, i) => asColumnType(b, p, `s.v${i}`));
      const keyTypedFromValues = b.keyPositions.map((p) => asColumnType(b, p, `s.v${shape.valuePositions.indexOf(p)}`));
      if (op === 'i') {
        // One row: its parameters (see `param`); several: unnested arrays, inserted in their order.
        const one = !shape.multiRow;
        const keys = one ? b.keyPositions.map((p) => param(shape.valuePositions.indexOf(p), p)) : keyTypedFromValues;
        const values = one ? shape.valuePositions.map((p, i) => param(i, p)) : typed;
        const claimed = b.local.uniqueIndexes.flatMap((index) => {
          const positions = index.columns.map((c) => shape.valuePositions.findIndex((p) => col(b, p).name === c));
          if (positions.some((i) => i < 0)) return [];
          return [`(c.indexid = ${index.oid}::oid AND c.value = pg_catalog.jsonb_build_array(${positions.map((i) => values[i]).join(', ')})::text)`];
        });
        const tombstone =
          `(${hasRowsOf('tombstone', rel)} AND ` +
          `${existsProbe('pgmesh.tombstone t', `t.relid = ${rel} AND t.pkey IN (pg_catalog.jsonb_build_array(${keys.join(', ')})::text, '${TRUNCATE_TOMBSTONE_KEY}')`)})` +
          (claimed.length > 0
            ? ` OR (${hasRowsOf('unique_claim', rel)} AND ${existsProbe('pgmesh.unique_claim c', `c.relid = ${rel} AND (${claimed.join(' OR ')})`)})`
            : '');
        // A row of the key on this statement's snapshot is a miss too, although the INSERT would fail on it anyway:
        // if a local transaction is deleting that row, the INSERT's unique check waits for it and, once the delete
        // commits, inserts, and the delete's tombstone is not on this snapshot. The full statement locks the row and
        // decides against the delete's version.
        const present = existsProbe(`${table} x`, b.keyPositions.map((p, i) => `x.${quoteIdent(col(b, p).name)} = ${keys[i]}`).join(' AND '));
        const insert =
          `INSERT INTO ${table} (${names.join(', ')}) OVERRIDING SYSTEM VALUE SELECT ${values.join(', ')}${one ? '' : ` FROM ${source(aliases, true)}`} ` +
          `WHERE ${one ? `$${aliases.length}::text` : 's.op'} = 'i' AND CASE WHEN ${tombstone} OR ${present} THEN ${raise}::boolean ELSE true END${one ? '' : ' ORDER BY s.ord'}`;
        if (!finishing) return { text: insert, timestamp: false };
        const { check, log } = finishCtes(ctx, n + 2, ts);
        return { text: `WITH ${check}, pgmesh_f AS (${log}) ${insert}`, timestamp: true };
      }
      if (op !== 'u' || delta) return undefined;
      const nonKey = shape.valuePositions.filter((p) => !b.keyPositions.includes(p));
      const setPositions = nonKey.length > 0 ? nonKey : shape.valuePositions;
      if (setPositions.some((p) => col(b, p).identityAlways)) return undefined;
      const unchanged = shape.unchangedPositions ?? [];
      // `value`: the value of position p as written; an unchanged one only where the local value differs.
      const assign = (p: number, value: string, text: string): string => {
        const name = quoteIdent(col(b, p).name);
        return `${name} = ${unchanged.includes(p) ? keepIfSame(`x.${name}`, value, text) : value}`;
      };
      if (!shape.multiRow) {
        const set = setPositions.map((p) => {
          const i = shape.valuePositions.indexOf(p);
          return assign(p, param(i, p), `$${i + 1}::text`);
        });
        const text =
          `WITH w AS (UPDATE ${table} AS x SET ${set.join(', ')} WHERE ${keyMatchParams((i) => shape.valuePositions.indexOf(b.keyPositions[i] as number))} ` +
          `AND $${aliases.length}::text = 'u' AND ${older}${sameUnique((i, p) => param(i, p))} RETURNING 1)` +
          checked('w');
        return { text, timestamp: true };
      }
      const set = setPositions.map((p) => {
        const i = shape.valuePositions.indexOf(p);
        return assign(p, `u.v${i}`, `u.v${i}::text`);
      });
      const text =
        `WITH u AS (SELECT ${typed.map((t, i) => `${t} AS v${i}`).join(', ')}, ${keyTypedFromValues.map((t, i) => `${t} AS k${i}`).join(', ')} ` +
        `FROM ${source(aliases, shape.multiRow)} WHERE s.op = 'u'), ` +
        `w AS (UPDATE ${table} AS x SET ${set.join(', ')} FROM u WHERE ${match} AND ${older}${sameUnique((i) => `u.v${i}`)} RETURNING 1)` +
        checked('w');
      return { text, timestamp: true };
    }
    case 'partial_update': {
      // An identity column that is GENERATED ALWAYS cannot be set by an UPDATE: the full statement leaves it out.
      if (delta || shape.valuePositions.some((p) => col(b, p).identityAlways)) return undefined;
      if (!shape.multiRow) {
        const keys = b.keyPositions.length;
        const set = shape.valuePositions.map((p, i) => `${quoteIdent(col(b, p).name)} = ${param(keys + i, p)}`);
        const text =
          `WITH w AS (UPDATE ${table} AS x SET ${set.join(', ')} WHERE ${keyMatchParams((i) => i)} AND ${older}${sameUnique((i, p) => param(keys + i, p))} RETURNING 1)` +
          checked('w');
        return { text, timestamp: true };
      }
      const valueAliases = shape.valuePositions.map((_, i) => `v${i}`);
      const typed = [...keyTyped, ...shape.valuePositions.map((p, i) => `${asColumnType(b, p, `s.v${i}`)} AS v${i}`)];
      const set = shape.valuePositions.map((p, i) => `${quoteIdent(col(b, p).name)} = u.v${i}`);
      const text =
        `WITH u AS (SELECT ${typed.join(', ')} FROM ${source([...keyAliases, ...valueAliases], shape.multiRow)}), ` +
        `w AS (UPDATE ${table} AS x SET ${set.join(', ')} FROM u WHERE ${match} AND ${older}${sameUnique((i) => `u.v${i}`)} RETURNING 1)` +
        checked('w');
      return { text, timestamp: true };
    }
    case 'delete': {
      if (delta) return undefined;
      const g = { ts, remote: quoteLiteral(ctx.peer) } as Gen;
      const unique = b.local.uniqueIndexes.length > 0;
      const returning = unique ? `, x.xmin AS row_xmin, pg_catalog.to_jsonb(x) AS row` : '';
      const removed = shape.multiRow
        ? `WITH u AS (SELECT ${keyTyped.join(', ')} FROM ${source(keyAliases, shape.multiRow)}), ` +
          `w AS (DELETE FROM ${table} AS x USING u WHERE ${match} AND ${older} RETURNING pg_catalog.jsonb_build_array(${keyAliases.map((k) => `u.${k}`).join(', ')})::text AS pkey${returning}), `
        : `WITH w AS (DELETE FROM ${table} AS x WHERE ${keyMatchParams((i) => i)} AND ${older} ` +
          `RETURNING pg_catalog.jsonb_build_array(${b.keyPositions.map((p) => `x.${quoteIdent(col(b, p).name)}`).join(', ')})::text AS pkey${returning}), `;
      // The deleted row's unique values are claimed with its version (this transaction's for a row it wrote).
      const local = quoteLiteral(ctx.localNode);
      const mine = `w.row_xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned())`;
      const claims = unique
        ? `, cw AS (${claimsInsert(
            rel,
            local,
            b.local.uniqueIndexes
              .map(
                (index) =>
                  `SELECT ${index.oid}::oid AS indexid, ${indexValueOf('w.row', index)} AS value, w.pkey, CASE WHEN ${mine} THEN ${ts} ELSE v.ts END AS ts, ` +
                  `CASE WHEN ${mine} THEN ${g.remote}::text ELSE v.node END AS node FROM w CROSS JOIN LATERAL pgmesh.row_version(w.row_xmin, ${local}) v`,
              )
              .join(' UNION ALL '),
          )})`
        : '';
      const text =
        removed +
        // The delete's version lives on in a tombstone (as in the full statement).
        `tw AS (INSERT INTO pgmesh.tombstone AS t (relid, pkey) SELECT ${rel}, w.pkey FROM w ` +
        `ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey, ts = NULL, node = NULL WHERE (SELECT ${remoteNewer('tv.ts', 'tv.node', g)} FROM pgmesh.tombstone_version(t.xmin, t.ts, t.node, ${local}) tv))` +
        claims +
        checked('w');
      return { text, timestamp: true };
    }
    case 'delta_update':
      return undefined;
  }
}

/**
 * The finish of an applied transaction, as CTEs whose parameters start at $first (previous end LSN, this end LSN;
 * the remote commit timestamp is `ts`, a parameter of the statement the CTEs are in, and the peer a literal, as in
 * every statement of its apply session): the transaction's row in the progress log (pgmesh.applied_xact), and the origin LSN
 * and timestamp of its commit. It raises PM001 unless the previous transaction committed: the session variable
 * pgmesh.applied_end holds the end LSN of the last transaction committed in the session (set with set_config, so
 * an aborted transaction's value is rolled back with it; the applier sets it when the session opens). No SET
 * CONSTRAINTS ALL IMMEDIATE: in the replica-mode session constraint triggers do not fire (deferrable unique
 * constraints are checked by the applier), and no pg_replication_origin_xact_reset after the commit: every commit
 * of the session sets up its own values.
 */
function finishCtes(
  ctx: StatementContext,
  first: number,
  ts: string,
  gate?: { readonly ok: string; readonly raise: string },
): { check: string; log: string } {
  // Typed parameters (converted once, see the top of this file). The session variable holds an LSN as text and is
  // compared as an LSN (its text form is the server's).
  const [prev, end] = [`$${first}::pg_lsn`, `$${first + 1}::pg_lsn`];
  const peer = quoteLiteral(ctx.peer);
  return {
    check:
      `pgmesh_o AS (SELECT CASE WHEN pg_catalog.current_setting('pgmesh.applied_end', true)::pg_lsn = ${prev} ` +
      `THEN pg_catalog.set_config('pgmesh.applied_end', ${end}::text, false) ` +
      `ELSE pgmesh.raise_error('PM001', pg_catalog.format('pgmesh: progress of peer %s is not at %s; the previous transaction did not commit', ${peer}, ${prev}), NULL) END AS checked, ` +
      (gate
        ? `CASE WHEN ${gate.ok} THEN pg_catalog.pg_replication_origin_xact_setup(${end}, ${ts})::text ELSE ${gate.raise} END AS origin)`
        : `pg_catalog.pg_replication_origin_xact_setup(${end}, ${ts}) AS origin)`),
    log: `INSERT INTO pgmesh.applied_xact (peer, end_lsn, remote_commit_ts) SELECT ${peer}, ${end}, ${ts} FROM pgmesh_o`,
  };
}

/** The finish alone, as one statement returning no rows. Parameters: previous end LSN, end LSN, commit timestamp. */
export function buildFinish(ctx: StatementContext): string {
  const { check, log } = finishCtes(ctx, 1, '$3::timestamptz');
  return `WITH ${check} ${log}`;
}

