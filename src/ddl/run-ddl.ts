/**
 * `pgmesh ddl "<sql>"`: runs a schema change on one node of the cluster, from where it replicates to every other
 * node like any DDL run there (docs/ddl.md). The statements are sent as one query string (the simple protocol), as a
 * migration tool sends a script. With `lock`, it runs under the cluster-wide DDL lock (src/ddl/ddl-lock.ts).
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { ClusterConfig } from '../config/config.ts';
import { connectionError, openSql } from '../pg/connect.ts';
import { sqlState } from '../core/sqlstate.ts';
import { runLockedDdl } from './ddl-lock.ts';

export interface RunDdlOptions {
  /** Run it under the cluster-wide DDL lock: no node writes the tables it changes until every node has it. */
  readonly lock?: boolean;
  /** How long each step of the lock may take (default 60 s). */
  readonly lockTimeoutMs?: number;
}

const DEFAULT_LOCK_TIMEOUT_MS = 60_000;

export async function runDdl(config: ClusterConfig, logger: Logger, statements: string, nodeName?: string, options: RunDdlOptions = {}): Promise<{ node: string }> {
  if (statements.trim() === '') throw new PgmeshError('CONFIG_INVALID', 'no SQL to run: give the statements as one argument, e.g. pgmesh ddl "ALTER TABLE t ADD COLUMN c int"');
  const node = nodeName === undefined ? config.nodes[0] : config.nodes.find((n) => n.name === nodeName);
  if (!node) {
    throw new PgmeshError('UNKNOWN_NODE', `node ${nodeName ?? ''} is not in the configuration; its nodes are ${config.nodes.map((n) => n.name).join(', ')}`);
  }
  if (options.lock) {
    await runLockedDdl(config, logger, statements, node, { timeoutMs: options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS });
    return { node: node.name };
  }
  const sql = openSql(node.dsn, { node: node.name, applicationName: 'pgmesh ddl', logger, max: 1, userSearchPath: true });
  try {
    // Without pgmesh's catalog nothing captures the change: it would run on this node alone, not replicate. Read
    // from the system catalogs: an application role running its migrations has no USAGE on schema pgmesh.
    const ready = await sql.unsafe<{ initialized: boolean }[]>(`SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'pgmesh' AND c.relname = 'local_node') AS initialized`).catch((error: unknown) => {
      throw connectionError(error, node.name, node.dsn);
    });
    if (ready[0]?.initialized !== true) {
      throw new PgmeshError('NOT_INITIALIZED', `node ${node.name} is not initialized (no pgmesh catalog), so the change would not replicate; nothing was run. Run "pgmesh init --node ${node.name}" or "pgmesh cluster create" first`, {
        context: { node: node.name },
      });
    }
    await sql.unsafe(statements).catch((error: unknown) => {
      if (sqlState(error) === undefined) throw connectionError(error, node.name, node.dsn);
      const server = error as { hint?: string };
      throw new PgmeshError('APPLY_FAILED', `on ${node.name}: ${errorMessage(error)}${server.hint ? ` (${server.hint})` : ''}; nothing of it was applied`, {
        cause: error,
        context: { node: node.name, sqlstate: sqlState(error) },
      });
    });
  } finally {
    await sql.end({ timeout: 2 }).catch(() => undefined);
  }
  return { node: node.name };
}
