/**
 * One error class for everything pgmesh reports. `code` is stable (documented, matched by tests and API clients);
 * `context` names the node, peer, relation or LSN involved; the server's own error stays in `cause`.
 * Messages say what to do, and never carry a password.
 */
export type PgmeshErrorCode =
  /** The command line itself: an unknown command or option, a missing or malformed value (exit code 2). */
  | 'USAGE'
  | 'CONFIG_INVALID'
  | 'SERVER_SETTINGS'
  | 'CONNECTION_FAILED'
  | 'AUTH_FAILED'
  | 'INSUFFICIENT_PRIVILEGE'
  | 'NOT_INITIALIZED'
  | 'ALREADY_INITIALIZED'
  | 'UNKNOWN_NODE'
  | 'UNKNOWN_TABLE'
  | 'TABLE_WITHOUT_KEY'
  | 'SCHEMA_MISMATCH'
  | 'SLOT_MISSING'
  | 'PROTOCOL'
  | 'APPLY_FAILED'
  | 'BUSY'
  /** A peer's connection string reaches another node than the one linked (src/cluster/peer-identity.ts). */
  | 'PEER_MISMATCH'
  /** A peer's commit timestamp too far ahead of the local clock (src/agent/future-commits.ts). */
  | 'CLOCK_AHEAD'
  | 'INTERNAL';

export type ErrorContext = Readonly<Record<string, string | number | bigint | boolean | undefined>>;

export class PgmeshError extends Error {
  readonly code: PgmeshErrorCode;
  readonly context: ErrorContext;

  constructor(code: PgmeshErrorCode, message: string, options: { context?: ErrorContext; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PgmeshError';
    this.code = code;
    this.context = options.context ?? {};
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, context: stringifyContext(this.context) };
  }
}

function stringifyContext(context: ErrorContext): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [key, value] of Object.entries(context)) {
    if (value === undefined) continue;
    out[key] = typeof value === 'bigint' ? value.toString() : value;
  }
  return out;
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

interface ServerErrorFields {
  readonly message: string;
  readonly code: string;
  readonly detail?: unknown;
  readonly schema_name?: unknown;
  readonly table_name?: unknown;
  readonly constraint_name?: unknown;
  readonly column_name?: unknown;
}

/** The PostgreSQL error behind an error (itself, or the first in its chain of causes), if any. */
function serverError(error: unknown): ServerErrorFields | undefined {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const fields: Partial<ServerErrorFields> = e;
    if (!(e instanceof PgmeshError) && typeof fields.code === 'string' && /^[0-9A-Z]{5}$/.test(fields.code)) return { ...fields, message: e.message, code: fields.code };
  }
  return undefined;
}

/**
 * The server's message without the row values it may hold, for error-level logs, errors and status (personal data
 * stays out of them): a data exception (SQLSTATE class 22) quotes the value it could not take ('invalid input
 * syntax for type integer: "Jane"'), so its quoted text is left out; integrity errors (class 23) keep values in
 * DETAIL ("Failing row contains (...)", "Key (email)=(...)"), which is left out whole. Where it happened (table,
 * constraint, column) is added: that names no value.
 */
export function messageWithoutValues(error: unknown): string {
  const server = serverError(error);
  if (!server) return errorMessage(error);
  const message = server.code.startsWith('22') ? server.message.replace(/"[\s\S]*"/, '"…"') : server.message;
  const table = typeof server.table_name === 'string' ? `table ${typeof server.schema_name === 'string' ? `${server.schema_name}.` : ''}${server.table_name}` : undefined;
  const where = [
    table,
    typeof server.constraint_name === 'string' ? `constraint ${server.constraint_name}` : undefined,
    typeof server.column_name === 'string' ? `column ${server.column_name}` : undefined,
  ].filter((part) => part !== undefined);
  return where.length > 0 ? `${message} (${where.join(', ')})` : message;
}

/** What messageWithoutValues leaves out (the server's whole message and its DETAIL), for debug-level logs only. */
export function serverValues(error: unknown): { serverMessage: string; detail?: string } | undefined {
  const server = serverError(error);
  if (!server) return undefined;
  return typeof server.detail === 'string' && server.detail !== '' ? { serverMessage: server.message, detail: server.detail } : { serverMessage: server.message };
}
