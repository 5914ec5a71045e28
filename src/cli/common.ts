/**
 * What every command shares: loading the configuration from --config / env, the logger, output, and how errors end
 * a run. The contract scripts rely on (README, "Scripting"): exit code 0 when everything asked for was done, 1 when
 * the operation failed or was done only in part, 2 when the input was wrong (the command line, the configuration, a
 * name it does not have). With --json, the answer is JSON on stdout, errors included: {"error": {"code", "message"}}.
 */
import { PgmeshError, errorMessage, type PgmeshErrorCode } from '../core/errors.ts';
import { SQLSTATE, sqlState } from '../core/sqlstate.ts';
import { loadConfig, type ClusterConfig, type LogLevel } from '../config/config.ts';
import { createLogger } from '../core/pino-logger.ts';
import type { Logger } from '../core/logger.ts';

export interface GlobalOptions {
  readonly config?: string;
  readonly logLevel?: string;
}

/** `joining`: the node that `node add` adds, whose PGMESH_DSN_<NODE> is honoured before the file lists it. */
export function configFrom(options: GlobalOptions, joining?: string): ClusterConfig {
  if (!options.config && !process.env.PGMESH_CONFIG) {
    throw new PgmeshError('CONFIG_INVALID', 'no configuration: pass --config <file.json> or set PGMESH_CONFIG (see README, "Configuration")');
  }
  return loadConfig({ file: options.config, env: process.env, flags: { logLevel: options.logLevel }, joining });
}

/** The level asked for on the command line or in the environment (not the file's, which is for agents). */
let explicitLogLevel = false;

/** Called by main.ts once the command line is parsed. */
export function noteLogLevelFlag(flag: string | undefined): void {
  explicitLogLevel = flag !== undefined || (process.env.PGMESH_LOG_LEVEL ?? '') !== '';
}

/**
 * The logger of an interactive command (everything but `start`): its answer is on stdout and its progress on
 * stderr, so the JSON log lines of what it does on the way (node add runs agent steps in-process) stay out unless
 * asked for with --log-level or PGMESH_LOG_LEVEL; warnings and errors still show.
 */
export function loggerFor(config: ClusterConfig, bindings: Record<string, unknown> = {}): Logger {
  const level: LogLevel = explicitLogLevel ? config.logLevel : higher(config.logLevel, 'warn');
  return createLogger(level, bindings);
}

/** The agent's logger (`pgmesh start`): the configured level, the log being its only output. */
export function agentLoggerFor(config: ClusterConfig, bindings: Record<string, unknown> = {}): Logger {
  return createLogger(config.logLevel, bindings);
}

const LEVEL_ORDER: readonly LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];
function higher(a: LogLevel, b: LogLevel): LogLevel {
  return LEVEL_ORDER.indexOf(a) >= LEVEL_ORDER.indexOf(b) ? a : b;
}

/** --json given anywhere on the command line (before a "--" that ends the options). */
export function jsonRequested(argv: readonly string[] = process.argv.slice(2)): boolean {
  const end = argv.indexOf('--');
  return (end === -1 ? argv : argv.slice(0, end)).includes('--json');
}

/** The codes that mean "the input is wrong": exit code 2. */
const INPUT_CODES: ReadonlySet<PgmeshErrorCode> = new Set(['USAGE', 'CONFIG_INVALID', 'UNKNOWN_NODE', 'UNKNOWN_TABLE']);

export function exitCodeOf(code: PgmeshErrorCode): 1 | 2 {
  return INPUT_CODES.has(code) ? 2 : 1;
}

/**
 * Any error as a PgmeshError with a stable code and a message to act on. The server's "relation pgmesh.x does not
 * exist" (a command on a node where pgmesh was never installed) is NOT_INITIALIZED.
 */
export function asPgmeshError(error: unknown): PgmeshError {
  if (error instanceof PgmeshError) return error;
  const state = sqlState(error);
  const message = errorMessage(error);
  if (state === SQLSTATE.insufficientPrivilege) {
    return new PgmeshError(
      'INSUFFICIENT_PRIVILEGE',
      `${message}: the role in the node's connection string lacks this privilege. ` +
        `"pgmesh check" lists what an agent's role needs; installing and changing what replicates (cluster create, tables) need a superuser`,
      { cause: error },
    );
  }
  // 42P01 undefined table, 42883 undefined function, 3F000 invalid schema name: about pgmesh's own catalog.
  if ((state === SQLSTATE.undefinedTable || state === '42883' || state === '3F000') && /\bpgmesh\b/.test(message)) {
    return new PgmeshError('NOT_INITIALIZED', `not initialized: the node has no pgmesh catalog (${message}); run "pgmesh init --node <name>" or "pgmesh cluster create"`, {
      cause: error,
    });
  }
  return new PgmeshError('INTERNAL', `unexpected error: ${message}`, { cause: error });
}

/** Prints an error the way a user (or, with --json, a script) can act on it; exits 1 or 2. */
export function fail(error: unknown): never {
  const failure = asPgmeshError(error);
  if (jsonRequested()) printJson({ error: { code: failure.code, message: failure.message } });
  else process.stderr.write(`pgmesh: ${failure.message}\n`);
  if (failure.code === 'INTERNAL' && error instanceof Error && error.stack && process.env.PGMESH_DEBUG) process.stderr.write(`${error.stack}\n`);
  process.exit(exitCodeOf(failure.code));
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
}

/** A command's answer: the value as JSON with --json, else the text (a line, or several). */
export function answer(json: boolean | undefined, value: unknown, text: string): void {
  if (json) printJson(value);
  else process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/**
 * Refuses a node where pgmesh was never installed, before a command reads or changes its catalog. Read from the
 * system catalogs: to_regclass fails with "permission denied for schema pgmesh" for a role without USAGE on it.
 */
export async function requireInitialized(sql: { unsafe: (query: string) => PromiseLike<readonly { initialized?: boolean }[]> }, node: string): Promise<void> {
  const rows = await sql.unsafe(`SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'pgmesh' AND c.relname = 'local_node') AS initialized`);
  if (rows[0]?.initialized !== true) {
    throw new PgmeshError('NOT_INITIALIZED', `node ${node} is not initialized (no pgmesh catalog): run "pgmesh init --node ${node}" or "pgmesh cluster create" first`, {
      context: { node },
    });
  }
}
