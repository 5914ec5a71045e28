/**
 * Node-interleaved sequences. PostgreSQL does not replicate sequences: every node hands out values from its own, so
 * two nodes inserting into a `serial` table both take 3, and one of the two rows is lost to last-update-wins. When a
 * table joins replication, every sequence that feeds it (serial and identity columns, and defaults that call
 * nextval) is made to step by the cluster's maxNodes from the node's slot: node s of M hands out only values
 * congruent to s modulo M, so no two nodes ever hand out the same value. It starts above every value already in use
 * on any node (the columns' maximum, the sequences' last values), so none is handed out again.
 *
 * The nodes' sequences are changed together: on every node a transaction locks them (ALTER SEQUENCE blocks nextval
 * until commit) and reads their state; only when every node has read does any node restart its sequences, above
 * the highest value any node had handed out. Without the lock, a node still counting one by one could hand out a
 * value that another node's interleaved sequence also reaches.
 *
 * What is refused, and why, is in docs/sequences.md: CYCLE and UNLOGGED sequences (they hand out values again), a
 * sequence whose range has no value left for the node, one that ascends on some nodes and descends on others, one
 * pgmesh's role does not own, and GENERATED ALWAYS identity columns that pgmesh could not apply updates to.
 */
import { PgmeshError } from '../core/errors.ts';
import { SQLSTATE, sqlState } from '../core/sqlstate.ts';
import type { Sql } from '../pg/connect.ts';
import { qualifiedName, quoteIdent } from '../pg/quote.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { TableRef, TableRefusal } from './table-ref.ts';
import { DDL_CAPTURE_SETTING } from '../ddl/capture-sql.ts';

type Queryable = Pick<Sql, 'unsafe'>;

/** A node's place in the interleaving: it hands out values congruent to `slot` modulo `maxNodes`. */
export interface Member {
  readonly node: string;
  readonly slot: number;
  readonly maxNodes: number;
  /** False for a node that `cluster create` is about to initialize with these values. */
  readonly initialized: boolean;
}

/** What was done to one sequence on one node. */
export interface SequenceResult {
  /** The sequence, schema-qualified and quoted as PostgreSQL prints it. */
  readonly sequence: string;
  /** The columns it feeds, as schema.table.column. */
  readonly feeds: readonly string[];
  /** `interleaved`: restarted now; `unchanged`: it already handed out only this node's values, above all in use. */
  readonly action: 'interleaved' | 'unchanged';
  /** The next value this node hands out, then every `step`-th. */
  readonly nextValue: string;
  readonly step: number;
  /** How many more values this node can hand out before the sequence (or a column's type) runs out. */
  readonly valuesLeft: string;
}

export interface InterleaveResult {
  readonly byNode: ReadonlyMap<string, readonly SequenceResult[]>;
  /** Tables not added, because a sequence that feeds them cannot be interleaved safely. */
  readonly refused: readonly TableRefusal[];
}

/**
 * Everything wrong with the slots and maxNodes of a cluster's nodes, each with what to do. Every node must step by
 * the same maxNodes and have its own slot within it: otherwise two nodes' residue classes overlap.
 */
export function memberProblems(members: readonly Member[], configMaxNodes?: number): string[] {
  const problems: string[] = [];
  const initialized = members.filter((m) => m.initialized);
  const byMax = new Map<number, string[]>();
  for (const m of initialized) byMax.set(m.maxNodes, [...(byMax.get(m.maxNodes) ?? []), m.node]);
  const stored = [...byMax.keys()];
  if (stored.length > 1) {
    const groups = [...byMax].map(([max, nodes]) => `${nodes.join(', ')} with ${max}`).join('; ');
    problems.push(
      `the nodes were initialized with different maxNodes (${groups}): sequences would step differently on them and hand out the same values; ` +
        'a cluster keeps the maxNodes it was created with: re-create the nodes that differ',
    );
    return problems;
  }
  const clusterMax = stored[0] ?? configMaxNodes ?? members[0]?.maxNodes;
  if (clusterMax === undefined) return problems;
  if (stored[0] !== undefined && configMaxNodes !== undefined && configMaxNodes !== stored[0]) {
    problems.push(
      `the configuration says maxNodes ${configMaxNodes}, but ${initialized.map((m) => m.node).join(', ')} were initialized with maxNodes ${stored[0]}: ` +
        `their sequences step by ${stored[0]}, and raising it on a running cluster is not supported; set maxNodes back to ${stored[0]}`,
    );
  }
  for (const m of members) {
    if (m.slot > clusterMax) {
      problems.push(
        `node ${m.node} ${m.initialized ? 'has' : 'would have'} slot ${m.slot}, but the cluster's maxNodes is ${clusterMax}: ` +
          `its sequences hand out values by slot modulo maxNodes, so a cluster of maxNodes ${clusterMax} holds at most ${clusterMax} nodes; ` +
          'a cluster that needs more nodes must be created with a larger maxNodes',
      );
    }
  }
  const bySlot = new Map<number, string[]>();
  for (const m of members) bySlot.set(m.slot, [...(bySlot.get(m.slot) ?? []), m.node]);
  for (const [slot, nodes] of bySlot) {
    if (nodes.length > 1) {
      problems.push(
        `nodes ${nodes.join(' and ')} both have slot ${slot}: their sequences would hand out the same values; ` +
          'a node keeps the slot it was initialized with (its place in the configuration then): restore the order of the nodes in the configuration',
      );
    }
  }
  return problems;
}

/** The members of a cluster of initialized nodes, read from their catalogs. */
export async function readMembers(conns: ReadonlyMap<string, Sql>): Promise<Member[]> {
  const members: Member[] = [];
  for (const [node, sql] of conns) {
    const rows = await sql.unsafe<{ node_slot: number; max_nodes: number }[]>(`SELECT node_slot, max_nodes FROM pgmesh.local_node`);
    const row = rows[0];
    if (!row) throw new PgmeshError('NOT_INITIALIZED', `node ${node} has no pgmesh catalog; run "pgmesh init" for it first`, { context: { node } });
    members.push({ node, slot: row.node_slot, maxNodes: row.max_nodes, initialized: true });
  }
  return members;
}

interface Feed {
  readonly schema: string;
  readonly table: string;
  readonly column: string;
  readonly type: string;
  /** pg_attribute.attidentity: 'a' GENERATED ALWAYS, 'd' BY DEFAULT, '' none. */
  readonly identity: string;
  readonly inKey: boolean;
  /** The table has no column outside its primary key. */
  readonly keyOnly: boolean;
}

interface SequenceFacts {
  readonly key: string;
  readonly cycle: boolean;
  readonly unlogged: boolean;
  readonly owner: string;
  readonly owned: boolean;
  readonly feeds: readonly Feed[];
}

/** Sequences that feed any of `tables` (and every column they feed, in any table), from the catalog only. */
async function readFacts(sql: Queryable, tables: readonly TableRef[]): Promise<SequenceFacts[]> {
  const rows = await sql.unsafe<
    { key: string; cycle: boolean; unlogged: boolean; owner: string; owned: boolean; feeds: Feed[] }[]
  >(
    `WITH wanted AS (
       SELECT DISTINCT f.seqrelid FROM pgmesh.sequence_feed f
        WHERE f.relid IN (SELECT to_regclass(t)::oid FROM unnest($1::text[]) t))
     SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.relname) AS key, q.seqcycle AS cycle,
            s.relpersistence = 'u' AS unlogged, pg_catalog.pg_get_userbyid(s.relowner) AS owner,
            pg_catalog.pg_has_role(s.relowner, 'USAGE') AS owned,
            (SELECT json_agg(json_build_object('schema', rn.nspname, 'table', r.relname, 'column', a.attname,
                     'type', pg_catalog.format_type(a.atttypid, NULL), 'identity', a.attidentity::text,
                     'inKey', coalesce(a.attnum = ANY (i.indkey::int2[]), false),
                     'keyOnly', coalesce((SELECT count(*) FROM pg_catalog.pg_attribute o WHERE o.attrelid = r.oid AND o.attnum > 0
                                            AND NOT o.attisdropped AND NOT o.attnum = ANY (i.indkey::int2[])) = 0, false))
                     ORDER BY rn.nspname, r.relname, a.attnum)
               FROM pgmesh.sequence_feed f
               JOIN pg_catalog.pg_class r ON r.oid = f.relid
               JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
               JOIN pg_catalog.pg_attribute a ON a.attrelid = f.relid AND a.attnum = f.attnum
               LEFT JOIN pg_catalog.pg_index i ON i.indrelid = r.oid AND i.indisprimary
              WHERE f.seqrelid = s.oid AND NOT r.relispartition) AS feeds
       FROM wanted w JOIN pg_catalog.pg_class s ON s.oid = w.seqrelid
       JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
      ORDER BY 1`,
    [textArrayLiteral(tables.map((t) => qualifiedName(t.schema, t.name)))],
  );
  return rows.map((r) => ({ ...r, feeds: r.feeds ?? [] }));
}

function feedName(f: Feed): string {
  return `${f.schema}.${f.table}.${f.column}`;
}

function tableKey(schema: string, name: string): string {
  return JSON.stringify([schema, name]);
}

type StaticProblem = 'cycle' | 'unlogged' | 'not_owned';

/** Why a sequence cannot be interleaved at all, whatever its values (on `nodes`), and what to do. */
function staticReason(problem: StaticProblem, s: SequenceFacts, nodes: readonly string[]): string {
  const on = nodes.join(', ');
  switch (problem) {
    case 'cycle':
      return `sequence ${s.key} is CYCLE on ${on}: when it wraps around it hands out values already used, and on a cluster such a row overwrites another node's row; make it NO CYCLE on every node (ALTER SEQUENCE ${s.key} NO CYCLE)`;
    case 'unlogged':
      return `sequence ${s.key} is UNLOGGED on ${on}: after a crash it starts again and hands out values already used; make it logged on every node (ALTER SEQUENCE ${s.key} SET LOGGED)`;
    case 'not_owned':
      return `on ${on}, pgmesh's role does not own sequence ${s.key} (its owner is ${s.owner}), so it cannot make it hand out node-interleaved values; connect as ${s.owner} or a superuser, or give it to pgmesh's role (ALTER SEQUENCE ${s.key} OWNER TO ...)`;
  }
}

function staticProblem(s: SequenceFacts): StaticProblem | undefined {
  return s.cycle ? 'cycle' : s.unlogged ? 'unlogged' : !s.owned ? 'not_owned' : undefined;
}

/**
 * GENERATED ALWAYS identity columns accept a value only in an INSERT (OVERRIDING SYSTEM VALUE, which pgmesh's apply
 * uses); an UPDATE can set them only to DEFAULT. Part of the primary key they never change in an update, so they
 * replicate; elsewhere, or as the only column of a table (whose updates rewrite the key), they cannot.
 */
function identityProblem(f: Feed): string | undefined {
  if (f.identity !== 'a' || (f.inKey && !f.keyOnly)) return undefined;
  const table = qualifiedName(f.schema, f.table);
  const why = f.inKey ? 'it is the only column of its table' : 'it is not part of the primary key';
  return (
    `column ${feedName(f)} is GENERATED ALWAYS AS IDENTITY and ${why}: PostgreSQL lets an UPDATE set it only to DEFAULT, so pgmesh could not apply ` +
    `other nodes' updates to it; make it GENERATED BY DEFAULT on every node (ALTER TABLE ${table} ALTER COLUMN ${quoteIdent(f.column)} SET GENERATED BY DEFAULT), ` +
    'which hands out the same values'
  );
}

/** One node's sequence as read under its lock. */
interface LockedState {
  readonly key: string;
  readonly oid: string;
  readonly increment: bigint;
  readonly min: bigint;
  readonly max: bigint;
  readonly lastValue: bigint;
  readonly isCalled: boolean;
  /** Highest and lowest values in the integer columns it feeds (null when they are empty or not integers). */
  readonly columnMax: bigint | null;
  readonly columnMin: bigint | null;
  /** The narrowest range of the integer columns it feeds. */
  readonly typeMax: bigint;
  readonly typeMin: bigint;
  readonly feeds: readonly string[];
}

const BIGINT_MIN = -9223372036854775808n;
const BIGINT_MAX = 9223372036854775807n;
const INTEGER_RANGES: Readonly<Record<string, readonly [bigint, bigint]>> = {
  smallint: [-32768n, 32767n],
  integer: [-2147483648n, 2147483647n],
  bigint: [BIGINT_MIN, BIGINT_MAX],
};
/** A whole number as PostgreSQL prints it (a numeric column may also hold NaN or Infinity, which bound nothing). */
const WHOLE = /^-?\d+$/;
const NUMERIC_TYPES = new Set(['smallint', 'integer', 'bigint', 'numeric']);

const LOCK_TIMEOUT = '10s';

async function lockAndRead(tx: Queryable, facts: readonly SequenceFacts[]): Promise<LockedState[]> {
  await tx.unsafe(`SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
  // Each node's sequences get that node's values: these ALTER SEQUENCEs are not DDL to replicate.
  await tx.unsafe(`SELECT pg_catalog.set_config('${DDL_CAPTURE_SETTING}', 'off', true)`);
  const out: LockedState[] = [];
  for (const s of facts) {
    // ALTER SEQUENCE blocks nextval on the sequence until this transaction ends (LOCK does not take sequences). This
    // one changes nothing, it only takes that lock: CYCLE sequences were refused before.
    await tx.unsafe(`ALTER SEQUENCE ${s.key} NO CYCLE`);
    const rows = await tx.unsafe<{ oid: string; increment: string; min: string; max: string; last_value: string; is_called: boolean }[]>(
      `SELECT q.seqrelid::oid::text AS oid, q.seqincrement::text AS increment, q.seqmin::text AS min, q.seqmax::text AS max,
              v.last_value::text AS last_value, v.is_called
         FROM pg_catalog.pg_sequence q, ${s.key} v WHERE q.seqrelid = $1::regclass`,
      [s.key],
    );
    const row = rows[0];
    if (!row) throw new PgmeshError('INTERNAL', `sequence ${s.key} disappeared while it was being interleaved`);
    let columnMax: bigint | null = null;
    let columnMin: bigint | null = null;
    let typeMax = BIGINT_MAX;
    let typeMin = BIGINT_MIN;
    for (const f of s.feeds) {
      const range = INTEGER_RANGES[f.type];
      if (range) {
        if (range[1] < typeMax) typeMax = range[1];
        if (range[0] > typeMin) typeMin = range[0];
      }
      // Values in columns of other types (text built from nextval, say) cannot be read back: the sequences' own
      // last values are what is known of them.
      if (!NUMERIC_TYPES.has(f.type)) continue;
      const column = quoteIdent(f.column);
      const extremes = await tx.unsafe<{ hi: string | null; lo: string | null }[]>(
        `SELECT ceil(max(${column}))::numeric::text AS hi, floor(min(${column}))::numeric::text AS lo FROM ${qualifiedName(f.schema, f.table)}`,
      );
      const hi = extremes[0]?.hi;
      const lo = extremes[0]?.lo;
      if (hi != null && WHOLE.test(hi) && (columnMax === null || BigInt(hi) > columnMax)) columnMax = BigInt(hi);
      if (lo != null && WHOLE.test(lo) && (columnMin === null || BigInt(lo) < columnMin)) columnMin = BigInt(lo);
    }
    out.push({
      key: s.key,
      oid: row.oid,
      increment: BigInt(row.increment),
      min: BigInt(row.min),
      max: BigInt(row.max),
      lastValue: BigInt(row.last_value),
      isCalled: row.is_called,
      columnMax,
      columnMin,
      typeMax,
      typeMin,
      feeds: s.feeds.map(feedName),
    });
  }
  return out;
}

function mod(a: bigint, m: bigint): bigint {
  return ((a % m) + m) % m;
}

/** The last value a node's sequence handed out (or the one before its first). */
function lastUsed(s: LockedState): bigint {
  return s.isCalled ? s.lastValue : s.lastValue - s.increment;
}

interface Change {
  readonly state: LockedState;
  readonly start: bigint;
  readonly step: bigint;
  readonly restart: boolean;
  readonly valuesLeft: bigint;
}

interface Decision {
  readonly changes: ReadonlyMap<string, readonly Change[]>;
  /** Sequence key -> why it is left as it is on every node. */
  readonly refusals: ReadonlyMap<string, string>;
}

/**
 * Where each node's sequence restarts, from every node's locked state. A sequence goes up (or down) on every node
 * alike; each node starts at the first value of its residue class past everything used anywhere: the columns'
 * extremes on every node, the last value of every node whose sequence still counts one by one, and its own.
 */
function decide(states: ReadonlyMap<string, readonly LockedState[]>, memberOf: (node: string) => Member): Decision {
  const byKey = new Map<string, { node: string; state: LockedState }[]>();
  // In slot order, whichever node read first: messages list the nodes the same way every time.
  const bySlot = [...states].sort(([a], [b]) => memberOf(a).slot - memberOf(b).slot);
  for (const [node, list] of bySlot) for (const state of list) byKey.set(state.key, [...(byKey.get(state.key) ?? []), { node, state }]);
  const changes = new Map<string, Change[]>();
  const refusals = new Map<string, string>();
  for (const [key, entries] of byKey) {
    const ascending = entries.filter((e) => e.state.increment > 0n).map((e) => e.node);
    if (ascending.length > 0 && ascending.length < entries.length) {
      const descending = entries.filter((e) => e.state.increment < 0n).map((e) => e.node);
      refusals.set(key, `sequence ${key} ascends on ${ascending.join(', ')} but descends on ${descending.join(', ')}; make it go the same way on every node`);
      continue;
    }
    const up = ascending.length > 0;
    const interleavedOn = (node: string, s: LockedState): boolean => {
      const m = memberOf(node);
      const M = BigInt(m.maxNodes);
      return s.increment === (up ? M : -M) && mod(s.lastValue, M) === mod(BigInt(m.slot), M);
    };
    // Past everything in use anywhere: a value beyond `floor` (below it, going down).
    const beyond = (a: bigint, b: bigint): bigint => (up ? (a > b ? a : b) : a < b ? a : b);
    let floor: bigint | null = null;
    for (const { node, state } of entries) {
      const extreme = up ? state.columnMax : state.columnMin;
      if (extreme !== null) floor = floor === null ? extreme : beyond(floor, extreme);
      if (!interleavedOn(node, state)) floor = floor === null ? lastUsed(state) : beyond(floor, lastUsed(state));
    }
    const planned: { node: string; change: Change }[] = [];
    const noRoom: string[] = [];
    for (const { node, state } of entries) {
      const m = memberOf(node);
      const M = BigInt(m.maxNodes);
      const r = mod(BigInt(m.slot), M);
      const past = floor === null ? lastUsed(state) : beyond(floor, lastUsed(state));
      const start = up ? past + 1n + mod(r - (past + 1n), M) : past - 1n - mod(past - 1n - r, M);
      const next = state.isCalled ? state.lastValue + state.increment : state.lastValue;
      const restart = !(interleavedOn(node, state) && (up ? next >= start : next <= start));
      const first = restart ? start : next;
      const limit = up ? (state.max < state.typeMax ? state.max : state.typeMax) : state.min > state.typeMin ? state.min : state.typeMin;
      const left = up ? (first > limit ? 0n : (limit - first) / M + 1n) : first < limit ? 0n : (first - limit) / M + 1n;
      if (left === 0n) noRoom.push(`on ${node} the first value of slot ${m.slot} past those in use would be ${first}, beyond its ${up ? 'maximum' : 'minimum'} ${limit}`);
      planned.push({ node, change: { state, start: first, step: up ? M : -M, restart, valuesLeft: left } });
    }
    if (noRoom.length > 0) {
      refusals.set(
        key,
        `sequence ${key} has no value left to interleave (${noRoom.join('; ')}); give it, and the columns it feeds, a larger type (ALTER SEQUENCE ${key} AS bigint, and ALTER TABLE ... ALTER COLUMN ... TYPE bigint)`,
      );
      continue;
    }
    for (const { node, change } of planned) changes.set(node, [...(changes.get(node) ?? []), change]);
  }
  return { changes, refusals };
}

async function applyChanges(tx: Queryable, member: Member, changes: readonly Change[]): Promise<SequenceResult[]> {
  const results: SequenceResult[] = [];
  for (const c of changes) {
    if (c.restart) {
      // START too, so that a later ALTER SEQUENCE ... RESTART without a value stays in this node's residue class.
      await tx.unsafe(`ALTER SEQUENCE ${c.state.key} INCREMENT BY ${c.step} START WITH ${c.start} RESTART WITH ${c.start}`);
    }
    await tx.unsafe(
      `INSERT INTO pgmesh.interleaved_sequence AS i (seqrelid, sequence_name, node_slot, step, first_value, feeds, restarted_at, checked_at)
       VALUES ($1::text::oid, $2, $3::text::int, $4::text::bigint, $5::text::bigint, $6::text[], now(), now())
       ON CONFLICT (seqrelid) DO UPDATE SET sequence_name = EXCLUDED.sequence_name, node_slot = EXCLUDED.node_slot, step = EXCLUDED.step,
         feeds = EXCLUDED.feeds, checked_at = now(),
         first_value = CASE WHEN $7::text::boolean THEN EXCLUDED.first_value ELSE i.first_value END,
         restarted_at = CASE WHEN $7::text::boolean THEN now() ELSE i.restarted_at END`,
      [c.state.oid, c.state.key, String(member.slot), String(c.step), String(c.start), textArrayLiteral(c.state.feeds), String(c.restart)],
    );
    results.push({
      sequence: c.state.key,
      feeds: c.state.feeds,
      action: c.restart ? 'interleaved' : 'unchanged',
      nextValue: String(c.start),
      step: Number(c.step),
      valuesLeft: String(c.valuesLeft),
    });
  }
  return results;
}

/**
 * Makes every sequence that feeds one of `tables` hand out node-interleaved values on every node (idempotent: a
 * sequence already interleaved, above every value in use, is left as it is). Tables fed by a sequence that cannot
 * be interleaved safely come back in `refused`, with what to do; the caller must not add them.
 */
export async function interleaveSequences(conns: ReadonlyMap<string, Sql>, tables: readonly TableRef[]): Promise<InterleaveResult> {
  const byNode = new Map<string, SequenceResult[]>([...conns.keys()].map((n) => [n, []]));
  if (tables.length === 0) return { byNode, refused: [] };
  const memberList = await readMembers(conns);
  const problems = memberProblems(memberList);
  if (problems.length > 0) throw new PgmeshError('CONFIG_INVALID', problems.join('\n'));
  const members = new Map(memberList.map((m) => [m.node, m]));
  const memberOf = (node: string): Member => {
    const member = members.get(node);
    if (!member) throw new PgmeshError('INTERNAL', `node ${node} has no slot`);
    return member;
  };
  const wanted = new Set(tables.map((t) => tableKey(t.schema, t.name)));

  const facts = new Map<string, SequenceFacts[]>();
  const reasons = new Map<string, string[]>(); // table key -> reasons
  const refusedKeys = new Set<string>();
  const refuse = (s: { key: string; feeds: readonly Feed[] }, reason: string) => {
    refusedKeys.add(s.key);
    for (const f of s.feeds) {
      const t = tableKey(f.schema, f.table);
      if (wanted.has(t) && !(reasons.get(t) ?? []).includes(reason)) reasons.set(t, [...(reasons.get(t) ?? []), reason]);
    }
  };
  const flagged = new Map<string, { facts: SequenceFacts; problem: StaticProblem; nodes: string[] }>();
  for (const [node, sql] of conns) {
    const list = await readFacts(sql, tables);
    facts.set(node, list);
    for (const s of list) {
      const problem = staticProblem(s);
      const flag = `${s.key} ${problem}`;
      if (problem) flagged.set(flag, { facts: s, problem, nodes: [...(flagged.get(flag)?.nodes ?? []), node] });
      for (const f of s.feeds) {
        const identity = identityProblem(f);
        if (identity) refuse({ key: s.key, feeds: [f] }, identity);
      }
    }
  }

  for (const { facts: s, problem, nodes } of flagged.values()) refuse(s, staticReason(problem, s, nodes));

  const toChange = (node: string) => (facts.get(node) ?? []).filter((s) => !refusedKeys.has(s.key));
  if ([...conns.keys()].every((node) => toChange(node).length === 0)) return { byNode, refused: refusals(tables, reasons) };

  // Lock and read on every node, decide once every node has read, then restart; each node in one transaction.
  const arrived = new Map<string, LockedState[]>();
  let release: (d: Decision) => void = () => undefined;
  let abort: (e: unknown) => void = () => undefined;
  const decided = new Promise<Decision>((resolve, reject) => {
    release = resolve;
    abort = reject;
  });
  decided.catch(() => undefined);
  const tasks = [...conns].map(([node, sql]) =>
    sql
      .begin(async (tx) => {
        arrived.set(node, await lockAndRead(tx, toChange(node)));
        if (arrived.size === conns.size) {
          try {
            release(decide(arrived, memberOf));
          } catch (error) {
            abort(error);
          }
        }
        const decision = await decided;
        byNode.set(node, await applyChanges(tx, memberOf(node), decision.changes.get(node) ?? []));
        return decision;
      })
      .catch((error: unknown) => {
        abort(error);
        throw busyError(error, node);
      }),
  );
  const settled = await Promise.allSettled(tasks);
  const failed = settled.find((s) => s.status === 'rejected');
  if (failed) throw failed.reason;
  const decision = await decided;
  for (const [key, reason] of decision.refusals) {
    const feeds = [...facts.values()].flat().find((s) => s.key === key)?.feeds ?? [];
    refuse({ key, feeds }, reason);
  }
  return { byNode, refused: refusals(tables, reasons) };
}

function refusals(tables: readonly TableRef[], reasons: ReadonlyMap<string, readonly string[]>): TableRefusal[] {
  const refused: TableRefusal[] = [];
  for (const t of tables) {
    const why = reasons.get(tableKey(t.schema, t.name));
    if (why) refused.push({ ...t, problem: 'sequence', reason: `table ${t.schema}.${t.name}: ${why.join('; ')}` });
  }
  return refused;
}

function busyError(error: unknown, node: string): unknown {
  if (sqlState(error) !== SQLSTATE.lockNotAvailable) return error;
  return new PgmeshError(
    'BUSY',
    `node ${node}: a sequence to interleave stayed in use by a transaction that has not ended (it took a value from it) for ${LOCK_TIMEOUT}; try again when it has ended`,
    { context: { node }, cause: error },
  );
}

/** One sequence that feeds a replicated table, as this node's catalog shows it (pgmesh.sequence_status). */
export interface SequenceStatus {
  readonly sequence: string;
  readonly feeds: readonly string[];
  readonly increment: string;
  readonly lastValue: string | null;
  readonly interleaved: boolean;
  readonly firstValue: string | null;
  readonly valuesLeft: string | null;
}

export async function readSequenceStatus(sql: Queryable): Promise<SequenceStatus[]> {
  // A node without the catalog (not initialized yet) replicates nothing: no sequences to show.
  const catalog = await sql.unsafe<{ present: boolean }[]>(`SELECT to_regclass('pgmesh.sequence_status') IS NOT NULL AS present`);
  if (catalog[0]?.present !== true) return [];
  const rows = await sql.unsafe<
    { sequence_name: string; feeds: string[]; increment: string; last_value: string | null; interleaved: boolean; first_value: string | null; values_left: string | null }[]
  >(
    `SELECT sequence_name, to_json(feeds) AS feeds, increment::text, last_value::text, interleaved, first_value::text, values_left::text
       FROM pgmesh.sequence_status ORDER BY sequence_name`,
  );
  return rows.map((r) => ({
    sequence: r.sequence_name,
    feeds: r.feeds,
    increment: r.increment,
    lastValue: r.last_value,
    interleaved: r.interleaved,
    firstValue: r.first_value,
    valuesLeft: r.values_left,
  }));
}
