/**
 * Opening connections. This folder is the only one that imports the driver (postgres.js: it pipelines queries on one
 * connection, prepares statements once, and exposes COPY BOTH as a stream, which a replication client needs).
 */
import postgres from 'postgres';
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { SQLSTATE, sqlState } from '../core/sqlstate.ts';
import { describeEndpoint, dsnPassword, dsnProblem, dsnTarget, scrubSecrets, splitQueryPassword } from './dsn.ts';
import { StartupError, startupSocket } from './startup-socket.ts';

export type Sql = postgres.Sql<Record<string, never>>;
export type ReservedSql = postgres.ReservedSql<Record<string, never>>;
export type Row = postgres.Row;
/** A pool, a reserved connection or a transaction: whatever runs queries. */
export type Queryable = Pick<Sql, 'unsafe'>;

export interface OpenOptions {
  /** Name used in messages: the node this connection goes to ("n2"). */
  readonly node: string;
  readonly applicationName: string;
  readonly logger: Logger;
  readonly max?: number;
  /** Run-time parameters sent in the startup packet, so a reconnect gets them too. */
  readonly parameters?: Readonly<Record<string, string>>;
  readonly replication?: boolean;
  readonly connectTimeoutS?: number;
  /**
   * For a session that pipelines many statements: TCP_NODELAY (the driver leaves Nagle's algorithm on, which holds
   * small pipelined writes back) and a deeper pipeline before the driver waits for replies.
   */
  readonly pipelined?: boolean;
  /**
   * Called when a connection of the pool closes (server restart, network). The driver reconnects by itself, which a
   * session with state (an apply session: its origin, its prepared statements) must not rely on.
   */
  readonly onClose?: () => void;
  /**
   * Leave search_path as the server sets it (the role's, the database's): only for a session that runs the
   * operator's own statements (`pgmesh ddl`), whose names resolve as in psql. pgmesh's own statements there are
   * qualified. Every other session pins it (below).
   */
  readonly userSearchPath?: boolean;
}

export function openSql(dsn: string, options: OpenOptions): Sql {
  // The driver throws a TypeError whose `input` is the whole string, password included: never let it out.
  const problem = dsnProblem(dsn);
  if (problem) {
    throw new PgmeshError('CONFIG_INVALID', `the connection string of node ${options.node} ${problem}`, { context: { node: options.node } });
  }
  const log = options.logger;
  const { dsn: url, password } = splitQueryPassword(dsn);
  return postgres(url, {
    ...(password === undefined ? {} : { password }),
    max: options.max ?? 1,
    connect_timeout: options.connectTimeoutS ?? 10,
    idle_timeout: 0,
    max_lifetime: null,
    fetch_types: false,
    prepare: true,
    // Values come back as the server prints them; pgmesh compares and forwards text, never JS conversions.
    types: {},
    transform: { undefined: null },
    connection: {
      application_name: options.applicationName,
      standard_conforming_strings: 'on',
      DateStyle: 'ISO',
      IntervalStyle: 'postgres',
      extra_float_digits: '3',
      TimeZone: 'UTC',
      // From the first statement, and again after a reconnect: nothing a role can create (a function or operator in
      // public, in its own schema) stands in for a built-in that pgmesh's statements call unqualified.
      ...(options.userSearchPath ? {} : { search_path: 'pg_catalog, pg_temp' }),
      ...(options.replication ? { replication: 'database' } : {}),
      ...options.parameters,
    },
    // "server", not "node": the logger may be bound to the node of the agent, which is another one for a peer.
    onnotice: (notice) => log.debug({ server: options.node, notice: notice.message }, 'server notice'),
    debug: false,
    ...(options.onClose ? { onclose: options.onClose } : {}),
    // Our socket (an option postgres.js's types leave out): it connects to the host as written (postgres.js cuts an
    // IPv6 address at its first colon) and ends an attempt whose answer is not PostgreSQL (see startup-socket.ts).
    ...{ socket: startupSocket(dsnTarget(dsn), { noDelay: options.pipelined === true }) },
    ...(options.pipelined ? { max_pipeline: 10_000 } : {}),
  }) as unknown as Sql;
}

/** Turns a driver or server error from connecting into one that says what to do. */
export function connectionError(error: unknown, node: string, dsn: string, secrets: readonly string[] = []): PgmeshError {
  if (error instanceof PgmeshError) return error;
  const endpoint = describeEndpoint(dsn);
  const code = sqlState(error);
  const password = dsnPassword(dsn);
  const raw = scrubSecrets(error instanceof Error ? error.message : String(error), password ? [...secrets, password] : secrets);
  const errno = (error as { code?: unknown }).code;
  const context = { node, endpoint };
  if (code === SQLSTATE.invalidPassword || code === SQLSTATE.invalidAuthorization || /SASL|password/i.test(raw)) {
    return new PgmeshError(
      'AUTH_FAILED',
      `cannot log in to node ${node} (${endpoint}): ${raw}; check the user and password in its connection string (or in PGMESH_DSN_${node.toUpperCase()}, or PGPASSWORD)`,
      { context, cause: error },
    );
  }
  if (code === SQLSTATE.invalidCatalogName) {
    return new PgmeshError('CONNECTION_FAILED', `node ${node} (${endpoint}): ${raw}; create the database or fix the database name`, {
      context,
      cause: error,
    });
  }
  if (error instanceof StartupError) {
    return new PgmeshError(
      'CONNECTION_FAILED',
      error.code === 'NOT_POSTGRES'
        ? `cannot connect to node ${node}: what answers at ${endpoint} is not PostgreSQL (it sent ${JSON.stringify(error.answer)}); check the host and port in its connection string`
        : `cannot connect to node ${node}: the server at ${endpoint} closed the connection without answering; check the host and port in its connection string, and that PostgreSQL (not another service, or a proxy without a backend) listens there`,
      { context, cause: error },
    );
  }
  if (code === SQLSTATE.insufficientPrivilege) {
    const detail = (error as { detail?: unknown }).detail;
    return new PgmeshError(
      'INSUFFICIENT_PRIVILEGE',
      `node ${node} (${endpoint}): ${raw}${typeof detail === 'string' ? ` (${detail})` : ''}; the role in its connection string lacks a privilege pgmesh needs: "pgmesh check" lists each one with the GRANT that fixes it`,
      { context, cause: error },
    );
  }
  if (errno === 'ECONNREFUSED') {
    return new PgmeshError(
      'CONNECTION_FAILED',
      `cannot reach node ${node} at ${endpoint}: connection refused; is the server running, and does listen_addresses/port match?`,
      { context, cause: error },
    );
  }
  if (errno === 'CONNECT_TIMEOUT' || errno === 'ETIMEDOUT' || errno === 'EHOSTUNREACH' || errno === 'ENOTFOUND') {
    return new PgmeshError(
      'CONNECTION_FAILED',
      `cannot reach node ${node} at ${endpoint} (${String(errno)}); check the host name, the network and firewalls`,
      { context, cause: error },
    );
  }
  return new PgmeshError('CONNECTION_FAILED', `node ${node} (${endpoint}): ${raw}`, { context, cause: error });
}
