/** What every command shares: loading the configuration from --config / env, the logger, error output. */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import { SQLSTATE, sqlState } from '../core/sqlstate.ts';
import { loadConfig, type ClusterConfig } from '../config/config.ts';
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

export function loggerFor(config: ClusterConfig, bindings: Record<string, unknown> = {}): Logger {
  return createLogger(config.logLevel, bindings);
}

/** Prints an error the way a user can act on it; exits non-zero. */
export function fail(error: unknown): never {
  if (error instanceof PgmeshError) {
    process.stderr.write(`pgmesh: ${error.message}\n`);
    // 2: the input is wrong (the configuration, or a node name that it does not have); 1: the operation failed.
    process.exit(error.code === 'CONFIG_INVALID' || error.code === 'UNKNOWN_NODE' ? 2 : 1);
  }
  if (sqlState(error) === SQLSTATE.insufficientPrivilege) {
    process.stderr.write(
      `pgmesh: ${errorMessage(error)}: the role in the node's connection string lacks this privilege. ` +
        `"pgmesh check" lists what an agent's role needs; installing and changing what replicates (cluster create, tables) need a superuser\n`,
    );
    process.exit(1);
  }
  process.stderr.write(`pgmesh: unexpected error: ${errorMessage(error)}\n`);
  if (error instanceof Error && error.stack && process.env.PGMESH_DEBUG) process.stderr.write(`${error.stack}\n`);
  process.exit(1);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
}
