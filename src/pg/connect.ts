/**
 * Opening connections. This folder is the only one that imports the driver (postgres.js: it pipelines queries on one
 * connection, prepares statements once, and exposes COPY BOTH as a stream, which a replication client needs).
 */
import postgres from 'postgres';
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { SQLSTATE, sqlState } from '../core/sqlstate.ts';
import { ConninfoProblem } from './conninfo.ts';
import { describeEndpoint, dsnPassword, dsnTarget, resolveConnection, scrubSecrets, type ConnectionParameters, type Env } from './dsn.ts';
import { passwordFromFile } from './pgpass.ts';
import { StartupError, startupSocket } from './startup-socket.ts';
import { tlsChoice, type TlsChoice } from './tls.ts';

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
  /** The environment the PG* variables and PGMESH_ALLOW_CLEARTEXT_PASSWORD are read from (tests); process.env. */
  readonly env?: Env;
  /**
   * Leave search_path as the server sets it (the role's, the database's): only for a session that runs the
   * operator's own statements (`pgmesh ddl`), whose names resolve as in psql. pgmesh's own statements there are
   * qualified. Every other session pins it (below).
   */
  readonly userSearchPath?: boolean;
}

/**
 * The operator's permission to send a password in clear (the server asks for it with the "password" method) over a
 * connection without TLS, where anyone on the path can read it: off unless PGMESH_ALLOW_CLEARTEXT_PASSWORD is 1.
 */
export function cleartextPasswordAllowed(env: Env): boolean {
  return /^(1|on|true|yes)$/i.test(env.PGMESH_ALLOW_CLEARTEXT_PASSWORD ?? '');
}

/** The connection's parameters, or the error that says what is wrong with its connection string. */
export function connectionParameters(dsn: string, node: string, env: Env = process.env): ConnectionParameters {
  try {
    return resolveConnection(dsn, env);
  } catch (error) {
    // The driver's own parser would throw a TypeError whose `input` is the whole string, password included.
    if (error instanceof ConninfoProblem) throw new PgmeshError('CONFIG_INVALID', `the connection string of node ${node} ${error.message}`, { context: { node } });
    throw error;
  }
}

export function openSql(dsn: string, options: OpenOptions): Sql {
  const env = options.env ?? process.env;
  const params = connectionParameters(dsn, options.node, env);
  let tls: TlsChoice;
  try {
    tls = tlsChoice(params, env);
  } catch (error) {
    if (error instanceof ConninfoProblem) throw new PgmeshError('CONFIG_INVALID', `the connection string of node ${options.node} ${error.message}`, { context: { node: options.node } });
    throw error;
  }
  const log = options.logger;
  return postgres({
    host: params.host,
    port: params.port,
    database: params.dbname,
    user: params.user,
    // Asked for only when the server wants a password: the given one, else the password file's (as libpq).
    pass: () => passwordFor(params, options.node, log),
    ssl: tls.ssl,
    sslnegotiation: params.sslnegotiation === 'direct' ? 'direct' : null,
    max: options.max ?? 1,
    connect_timeout: params.connectTimeoutS ?? options.connectTimeoutS ?? 10,
    idle_timeout: 0,
    max_lifetime: null,
    fetch_types: false,
    prepare: true,
    // Values come back as the server prints them; pgmesh compares and forwards text, never JS conversions.
    types: {},
    transform: { undefined: null },
    // pgmesh's own run-time parameters, sent in the startup packet of every session (and of every reconnect). They
    // win over the same settings in the connection string's options (the server applies options first).
    connection: {
      ...(params.options ? { options: params.options } : {}),
      application_name: options.applicationName,
      standard_conforming_strings: 'on',
      DateStyle: 'ISO',
      IntervalStyle: 'postgres',
      extra_float_digits: '3',
      TimeZone: 'UTC',
      // From the first statement, and again after a reconnect: nothing a role can create (a function or operator in
      // public, in its own schema) stands in for a built-in that pgmesh's statements call unqualified.
      ...(options.userSearchPath ? {} : { search_path: 'pg_catalog, pg_temp' }),
      // Row-level security policies are a table owner's code too, run with the rights of whoever reads or writes the
      // table: a policy calling the owner's function would run it as the agent (docs/security.md, "Whose rights
      // code runs with"). Off, a statement that a policy would apply to fails instead (42501); roles that bypass
      // RLS (superusers, BYPASSRLS) are not affected.
      row_security: 'off',
      ...(options.replication ? { replication: 'database' } : {}),
      ...options.parameters,
    },
    // "server", not "node": the logger may be bound to the node of the agent, which is another one for a peer.
    onnotice: (notice) => log.debug({ server: options.node, notice: notice.message }, 'server notice'),
    debug: false,
    ...(options.onClose ? { onclose: options.onClose } : {}),
    // Our socket (an option postgres.js's types leave out): it connects to the host as written (postgres.js cuts an
    // IPv6 address at its first colon), ends an attempt whose answer is not PostgreSQL, and keeps sslmode's and the
    // cleartext password's promises (see startup-socket.ts).
    ...{
      socket: startupSocket(dsnTarget(params), {
        noDelay: options.pipelined === true,
        tlsRequired: tls.required,
        allowCleartextPassword: cleartextPasswordAllowed(env),
      }),
    },
    ...(options.pipelined ? { max_pipeline: 10_000 } : {}),
  } as postgres.Options<Record<string, never>>) as unknown as Sql;
}

/** The password for a connection that the server asked for one: given (string, service, PGPASSWORD), or .pgpass's. */
async function passwordFor(params: ConnectionParameters, node: string, log: Logger): Promise<string> {
  if (params.password !== undefined) return params.password;
  const found = await passwordFromFile(params);
  if (found.kind === 'found') return found.password;
  if (found.kind === 'ignored') log.warn({ server: node }, `${found.why}; it was not read`);
  // The driver sends it and the server refuses the login: connectionError says where a password can come from.
  return '';
}

/** Turns a driver or server error from connecting into one that says what to do. */
export function connectionError(error: unknown, node: string, dsn: string, secrets: readonly string[] = []): PgmeshError {
  if (error instanceof PgmeshError) return error;
  const endpoint = describeEndpoint(dsn);
  const code = sqlState(error);
  const known = [dsnPassword(dsn), resolvedPassword(dsn)].filter((p): p is string => p !== undefined);
  const raw = scrubSecrets(error instanceof Error ? error.message : String(error), [...secrets, ...known]);
  const errno = (error as { code?: unknown }).code;
  const context = { node, endpoint };
  if (error instanceof StartupError) {
    if (error.code === 'CLEARTEXT_PASSWORD') {
      return new PgmeshError(
        'AUTH_FAILED',
        `cannot log in to node ${node} (${endpoint}): the server asked for the password in clear (its pg_hba.conf says "password") on a connection without TLS, and pgmesh does not send it there; enable TLS on the server (ssl=on) and use sslmode=require or verify-full, or use scram-sha-256 in pg_hba.conf, or, on a network you trust, set PGMESH_ALLOW_CLEARTEXT_PASSWORD=1`,
        { context, cause: error },
      );
    }
    if (error.code === 'NO_TLS') {
      return new PgmeshError(
        'CONNECTION_FAILED',
        `cannot connect to node ${node} (${endpoint}): the server does not offer TLS, and its connection string asks for it (sslmode=require or stronger); enable ssl on the server, or use sslmode=prefer`,
        { context, cause: error },
      );
    }
    return new PgmeshError(
      'CONNECTION_FAILED',
      error.code === 'NOT_POSTGRES'
        ? `cannot connect to node ${node}: what answers at ${endpoint} is not PostgreSQL (it sent ${JSON.stringify(error.answer)}); check the host and port in its connection string`
        : `cannot connect to node ${node}: the server at ${endpoint} closed the connection without answering; check the host and port in its connection string, and that PostgreSQL (not another service, or a proxy without a backend) listens there`,
      { context, cause: error },
    );
  }
  if (typeof errno === 'string' && TLS_CERTIFICATE_ERRORS.test(errno)) {
    return new PgmeshError(
      'CONNECTION_FAILED',
      `cannot connect to node ${node} (${endpoint}): the server's certificate is not trusted (${raw}); check sslrootcert (the CA that signed the server's certificate) and, for sslmode=verify-full, that the certificate names the host of the connection string`,
      { context, cause: error },
    );
  }
  if (code === SQLSTATE.invalidPassword || code === SQLSTATE.invalidAuthorization || /SASL|password/i.test(raw)) {
    return new PgmeshError(
      'AUTH_FAILED',
      `cannot log in to node ${node} (${endpoint}): ${raw}; check the user and password in its connection string (or in PGMESH_DSN_${node.toUpperCase()}, its service, PGPASSWORD, or the password file ~/.pgpass)`,
      { context, cause: error },
    );
  }
  if (code === SQLSTATE.invalidCatalogName) {
    return new PgmeshError('CONNECTION_FAILED', `node ${node} (${endpoint}): ${raw}; create the database or fix the database name`, {
      context,
      cause: error,
    });
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
  if (errno === 'ENOENT') {
    return new PgmeshError(
      'CONNECTION_FAILED',
      `cannot reach node ${node} at ${endpoint}: no server socket in that folder; is the server running, and do unix_socket_directories and the port match?`,
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

/** Node's codes for a certificate that TLS verification refused. */
const TLS_CERTIFICATE_ERRORS = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS_CERT_ALTNAME_INVALID/;

/** The password the connection string resolves to (service file, PGPASSWORD), to scrub from messages. */
function resolvedPassword(dsn: string): string | undefined {
  try {
    return resolveConnection(dsn).password;
  } catch {
    return undefined;
  }
}
