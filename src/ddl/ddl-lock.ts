/**
 * The cluster-wide DDL lock of `pgmesh ddl --lock` (what PGD calls global DDL locking; docs/ddl.md, "Changes that
 * must not race"). In order, each step on every node of the configuration:
 *
 *   1. connect to every node (one session each; a node that cannot be reached ends it here, nothing locked);
 *   2. fence: take the write fence of the tables the statements change (all replicated tables when that cannot be
 *      told), a session advisory lock per table (src/ddl/ddl-lock-sql.ts): it waits for the transactions writing
 *      them, and from then on local writes to them fail (SQLSTATE 55P03) while applied changes go on;
 *   3. catch up: a marker in every node's WAL, and wait until every other node has applied past it, so every
 *      node has everything the others wrote before the fence;
 *   4. run the statements on one node, in the session that holds its fence (DML in them is not fenced);
 *   5. a marker after them on that node, and wait until every other node has applied past it: every node has the
 *      new schema before any node writes again;
 *   6. release, on every node, also when a step failed or timed out (ending the session releases it anyway).
 *
 * Invariant: between 2 and 6 no node writes the fenced tables but through its apply sessions, so no change written
 * with the old schema reaches a node after the new one, and none with the new schema reaches a node before it.
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import { sqlState } from '../core/sqlstate.ts';
import type { ClusterConfig, NodeConfig } from '../config/config.ts';
import { connectionError, openSql, type Sql } from '../pg/connect.ts';
import { quoteIdent } from '../pg/quote.ts';
import { firesDdlTrigger, loadParser, splitStatements, type RawStatement } from './statements.ts';

/** Prefix of the markers the lock writes into each node's WAL (signed like every pgmesh message; nothing to apply). */
const LOCK_MARKER_PREFIX = 'pgmesh.ddl_lock';
const POLL_MS = 100;

/** The tables whose writes the lock stops: some by name, or every replicated table. */
export type LockTargets = { readonly all: true } | { readonly all: false; readonly tables: readonly string[] };

/** Statements that change no existing table, whose effect on writes is known: nothing to fence for them. */
const NO_TARGET = new Set(['CommentStmt', 'CreateSeqStmt', 'CreateEnumStmt', 'CompositeTypeStmt', 'CreateDomainStmt']);

/**
 * Which tables the DDL statements of a query string change, by their names as written (resolved on each node with
 * its search_path). Anything whose tables cannot be told from the statement (ALTER TYPE, DROP SCHEMA ... CASCADE,
 * a function a trigger calls, text that does not parse) fences every replicated table.
 */
export async function lockTargets(query: string): Promise<LockTargets> {
  await loadParser();
  let statements: RawStatement[];
  try {
    statements = splitStatements(query);
  } catch {
    return { all: true };
  }
  const tables = new Set<string>();
  for (const statement of statements) {
    // DML runs under the fence as it is; only DDL decides what is fenced (any server version counts).
    if (!firesDdlTrigger(statement, 180000)) continue;
    const named = tablesOf(statement);
    if (named === 'all') return { all: true };
    for (const table of named) tables.add(table);
  }
  return { all: false, tables: [...tables] };
}

function tablesOf(statement: RawStatement): readonly string[] | 'all' {
  const node = statement.node;
  switch (statement.kind) {
    case 'AlterTableStmt':
      return node.objtype === 'OBJECT_TABLE' ? [rangeVarName(node.relation)] : 'all';
    case 'IndexStmt':
    case 'CreateTrigStmt':
    case 'RuleStmt':
      return [rangeVarName(node.relation)];
    case 'CreatePolicyStmt':
    case 'AlterPolicyStmt':
      return [rangeVarName(node.table)];
    case 'RenameStmt':
      return node.relation !== undefined && (node.renameType === 'OBJECT_TABLE' || node.renameType === 'OBJECT_COLUMN') ? [rangeVarName(node.relation)] : 'all';
    case 'DropStmt':
      return node.removeType === 'OBJECT_TABLE' && Array.isArray(node.objects) ? node.objects.map(listName) : 'all';
    case 'CreateStmt':
      // A new table changes none, unless it is a partition or an heir of one.
      return node.partbound === undefined && node.inhRelations === undefined ? [] : 'all';
    default:
      return NO_TARGET.has(statement.kind) ? [] : 'all';
  }
}

function rangeVarName(value: unknown): string {
  const rv = (typeof value === 'object' && value !== null ? value : {}) as { schemaname?: unknown; relname?: unknown };
  const name = quoteIdent(String(rv.relname ?? ''));
  return typeof rv.schemaname === 'string' ? `${quoteIdent(rv.schemaname)}.${name}` : name;
}

function listName(value: unknown): string {
  const items = ((value as { List?: { items?: unknown[] } }).List?.items ?? []) as { String?: { sval?: string } }[];
  return items.map((i) => quoteIdent(i.String?.sval ?? '')).join('.');
}

export interface DdlLockOptions {
  /** How long each step may take (the fence, the catch-up, the apply of the change) before the lock gives up. */
  readonly timeoutMs: number;
}

/**
 * One node's session. A pool of one connection, not a reserved one: the driver throws where nothing can catch it when
 * a reserved connection's server goes away. A pool reconnects by itself instead, which would lose the session's locks
 * unnoticed: so a closed connection marks the session lost, and every step checks.
 */
class Held {
  lost = false;
  readonly session: Sql;

  constructor(
    readonly node: NodeConfig,
    logger: Logger,
    timeoutMs: number,
  ) {
    this.session = openSql(node.dsn, {
      node: node.name,
      applicationName: 'pgmesh ddl --lock',
      logger,
      max: 1,
      // It runs the operator's statements, whose names resolve as in psql; its own statements are qualified.
      userSearchPath: true,
      connectTimeoutS: Math.max(1, Math.ceil(timeoutMs / 1000)),
      parameters: { lock_timeout: String(timeoutMs) },
      onClose: () => {
        this.lost = true;
      },
    });
  }

  /** Throws when the connection closed since it was opened: the locks it held are gone. */
  check(state: string): void {
    if (this.lost) {
      throw new PgmeshError('CONNECTION_FAILED', `the connection to node ${this.node.name} was lost during the lock; ${state}`, { context: { node: this.node.name } });
    }
  }
}

/** Runs the statements on `origin` under the cluster-wide lock; see the steps above. */
export async function runLockedDdl(config: ClusterConfig, logger: Logger, statements: string, origin: NodeConfig, options: DdlLockOptions): Promise<void> {
  const targets = await lockTargets(statements);
  const held: Held[] = [];
  try {
    // 1. Every node, or none.
    const opened = await Promise.allSettled(config.nodes.map((node) => openSession(node, logger, options.timeoutMs)));
    for (const result of opened) if (result.status === 'fulfilled') held.push(result.value);
    const failed = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw lockError(failed.reason, 'nothing was locked or changed');

    // 2. The fence, on every node at once (writers fail rather than wait, so the order between nodes does not matter).
    await Promise.all(held.map((h) => fence(h, targets, options.timeoutMs)));
    logger.info({ tables: targets.all ? 'all replicated tables' : targets.tables }, 'cluster-wide DDL lock taken on every node');

    // 3. Every node has applied what the others wrote before the fence.
    const markers = await Promise.all(held.map(async (h) => ({ from: h.node.name, lsn: await marker(h, 'fenced') })));
    await waitApplied(held, markers, options.timeoutMs, 'nothing was changed');

    // 4. The change, on one node, while every node still holds its fence.
    for (const h of held) h.check('nothing was changed, and the lock was released');
    const at = held.find((h) => h.node.name === origin.name);
    if (!at) throw new PgmeshError('INTERNAL', `no session on ${origin.name}`);
    await at.session.unsafe(statements).catch((error: unknown) => {
      if (sqlState(error) === undefined) throw connectionError(error, origin.name, origin.dsn);
      const server = error as { hint?: string };
      throw new PgmeshError('APPLY_FAILED', `on ${origin.name}: ${errorMessage(error)}${server.hint ? ` (${server.hint})` : ''}; nothing of it was applied, and the lock was released`, {
        cause: error,
        context: { node: origin.name, sqlstate: sqlState(error) },
      });
    });

    // 5. Every node has it before any writes again.
    const done = await marker(at, 'changed');
    const changed = `the change was made on ${origin.name} and replicates from there`;
    await waitApplied(held, [{ from: origin.name, lsn: done }], options.timeoutMs, changed);
    for (const h of held) h.check(`${changed}, but writes on ${h.node.name} may have raced it`);
  } finally {
    // 6. Released everywhere, whatever happened; a session that cannot be told ends, and its locks with it.
    await Promise.all(
      held.map(async (h) => {
        if (!h.lost) {
          await h.session.unsafe(`SELECT pg_catalog.pg_advisory_unlock_all()`).catch(() => undefined);
          await h.session.unsafe(`DELETE FROM pgmesh.ddl_fence_session WHERE pid = pg_catalog.pg_backend_pid()`).catch(() => undefined);
        }
        await h.session.end({ timeout: 2 }).catch(() => undefined);
      }),
    );
  }
}

async function openSession(node: NodeConfig, logger: Logger, timeoutMs: number): Promise<Held> {
  const held = new Held(node, logger, timeoutMs);
  try {
    await held.session.unsafe(`SELECT 1`);
    // Writers count only fence keys that a recorded session holds (src/ddl/ddl-lock-sql.ts): this one, from now on.
    // Rows of sessions that are gone go first (a pid reused since: its start time differs, and it is replaced here).
    await held.session.unsafe(
      `DELETE FROM pgmesh.ddl_fence_session s
        WHERE s.pid = pg_catalog.pg_backend_pid() OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = s.pid)`,
    );
    await held.session.unsafe(
      `INSERT INTO pgmesh.ddl_fence_session (pid, backend_start)
       SELECT a.pid, a.backend_start FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_catalog.pg_backend_pid()`,
    );
  } catch (error) {
    await held.session.end({ timeout: 1 }).catch(() => undefined);
    throw connectionError(error, node.name, node.dsn);
  }
  return held;
}

async function fence(h: Held, targets: LockTargets, timeoutMs: number): Promise<void> {
  const query = targets.all
    ? `SELECT pg_catalog.pg_advisory_lock(pgmesh.ddl_lock_key(0))`
    : // Only the tables that exist and replicate here (one created by the same statements has nothing to fence yet).
      `SELECT pg_catalog.count(pg_catalog.pg_advisory_lock(pgmesh.ddl_lock_key(pr.prrelid)))
         FROM pg_catalog.jsonb_array_elements_text($1::pg_catalog.text::pg_catalog.jsonb) t(name)
         JOIN pg_catalog.pg_publication_rel pr ON pr.prrelid = pg_catalog.to_regclass(t.name)
         JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid AND p.pubname = 'pgmesh'`;
  await h.session.unsafe(query, targets.all ? [] : [JSON.stringify(targets.tables)]).catch(async (error: unknown) => {
    if (sqlState(error) === '55P03') {
      const others = await otherHolders(h);
      if (others) {
        throw new PgmeshError(
          'BUSY',
          `on ${h.node.name}, ${others} holds an advisory lock on pgmesh's fence keys (it is not a "pgmesh ddl --lock"; local writes go on regardless); end it (SELECT pg_terminate_backend(pid)) and try again; nothing was changed, and the lock was released`,
          { context: { node: h.node.name }, cause: error },
        );
      }
      throw new PgmeshError(
        'BUSY',
        `on ${h.node.name}, a transaction has been writing the tables to lock for more than ${Math.round(timeoutMs / 1000)} s; end it (pg_stat_activity shows it) or give a longer --lock-timeout; nothing was changed, and the lock was released`,
        { context: { node: h.node.name }, cause: error },
      );
    }
    throw lockError(error, 'nothing was changed, and the lock was released', h.node);
  });
}

/** Sessions that are not recorded "pgmesh ddl --lock" sessions and hold a fence key, as "process 123 (role x)". */
async function otherHolders(h: Held): Promise<string | undefined> {
  const rows = await h.session
    .unsafe<{ who: string }[]>(
      `SELECT pg_catalog.string_agg(pg_catalog.format('process %s (role %s)', l.pid, a.usename), ', ') AS who
         FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.classid = (pgmesh.ddl_lock_key(0) >> 32)::pg_catalog.oid AND l.objsubid = 1
          AND l.pid NOT IN (SELECT s.pid FROM pgmesh.ddl_fence_session s)`,
    )
    .catch(() => []);
  return rows[0]?.who ?? undefined;
}

async function marker(h: Held, what: string): Promise<Lsn> {
  const rows = await h.session
    .unsafe<{ lsn: string }[]>(`SELECT pgmesh.emit_message($1, $2)::text AS lsn`, [LOCK_MARKER_PREFIX, what])
    .catch((error: unknown) => {
      throw lockError(error, 'the lock was released', h.node);
    });
  return parseLsn(rows[0]?.lsn ?? '0/0');
}

/** Waits until every node but the marker's own has applied the marker's node past it (pgmesh.progress). */
async function waitApplied(held: readonly Held[], markers: readonly { from: string; lsn: Lsn }[], timeoutMs: number, state: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const behind = new Set(held.flatMap((h) => markers.filter((m) => m.from !== h.node.name).map((m) => `${h.node.name}\u0000${m.from}`)));
  for (;;) {
    for (const h of held) {
      for (const m of markers) {
        const key = `${h.node.name}\u0000${m.from}`;
        if (!behind.has(key)) continue;
        const rows = await h.session.unsafe<{ end_lsn: string }[]>(`SELECT end_lsn::pg_catalog.text FROM pgmesh.progress WHERE peer = $1`, [m.from]).catch((error: unknown) => {
          throw lockError(error, `${state}; the lock was released`, h.node);
        });
        const at = rows[0] ? parseLsn(rows[0].end_lsn) : undefined;
        if (at !== undefined && at > m.lsn) behind.delete(key);
      }
    }
    if (behind.size === 0) return;
    if (Date.now() > deadline) {
      const list = [...behind].map((key) => {
        const [node, from] = key.split('\u0000');
        const lsn = markers.find((m) => m.from === from)?.lsn ?? 0n;
        return `${node} has not applied ${from}'s changes up to ${formatLsn(lsn)}`;
      });
      throw new PgmeshError(
        'APPLY_FAILED',
        `${list.join('; ')} within ${Math.round(timeoutMs / 1000)} s: is every agent running and streaming (pgmesh status)? ${state}; the lock was released`,
      );
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function lockError(error: unknown, state: string, node?: NodeConfig): PgmeshError {
  if (node && sqlState(error) === undefined) {
    const reached = connectionError(error, node.name, node.dsn);
    return new PgmeshError(reached.code, `${reached.message}; ${state}`, { context: reached.context, cause: error });
  }
  if (error instanceof PgmeshError) return new PgmeshError(error.code, `${error.message}; ${state}`, { context: error.context, cause: error.cause });
  return new PgmeshError('APPLY_FAILED', `${node ? `on ${node.name}: ` : ''}${errorMessage(error)}; ${state}`, { cause: error, context: { node: node?.name } });
}
