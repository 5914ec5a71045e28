/**
 * One error class for everything pgmesh reports. `code` is stable (documented, matched by tests and API clients);
 * `context` names the node, peer, relation or LSN involved; the server's own error stays in `cause`.
 * Messages say what to do, and never carry a password.
 */
export type PgmeshErrorCode =
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
