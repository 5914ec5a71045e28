/**
 * Configuration: defaults < file (JSON) < environment < flags. Everything is validated at once: the error lists
 * every problem, and unknown keys are rejected (a typo must not silently fall back to a default).
 *
 * File:   { "maxNodes": 16, "logLevel": "info", "nodes": [{ "name": "n1", "dsn": "postgres://..." }], "tuning": { ... } }
 * Env:    PGMESH_CONFIG (file path), PGMESH_LOG_LEVEL, PGMESH_MAX_NODES, PGMESH_DSN_<NODE> (a node's connection string,
 *         so that passwords can stay out of the file), and libpq's PG* variables, which connection strings are
 *         resolved against (src/pg/dsn.ts).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { PgmeshError } from '../core/errors.ts';
import { describeEndpoint, dsnProblem } from '../pg/dsn.ts';
import { NODE_NAME_PATTERN } from '../pg/quote.ts';
import type { LogLevel } from '../core/logger.ts';

export interface NodeConfig {
  readonly name: string;
  readonly dsn: string;
}

export interface AgentTuning {
  /** How often a status update goes to each peer even when nothing changed. */
  readonly feedbackIntervalMs: number;
  /** How often the durable (flushed) apply position is read to acknowledge it. */
  readonly progressPollMs: number;
  /** Rows of one table and kind sent as one multi-row statement. */
  readonly maxBatchRows: number;
  /** Statements sent to the apply session without waiting for their replies. */
  readonly maxInflightStatements: number;
  /** Decoded events waiting for apply before the replication socket is paused. */
  readonly highWaterEvents: number;
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  /**
   * The apply session's lock_timeout (0: none). A local session left idle in a transaction that holds a row lock
   * would otherwise hold a peer's whole stream up without a sign; the wait ends, the transaction is retried and
   * `status` shows the wait.
   */
  readonly lockTimeoutMs: number;
  /**
   * How many times a transaction that failed on a deadlock, a serialization failure or a lock timeout is applied
   * again in place (with a short backoff) before the stream is restarted.
   */
  readonly applyRetries: number;
  /**
   * An update or delete that meets a local version written by another node less than this long before it (by
   * commit timestamps) is a conflict: recorded, and resolved by the table's policy.
   */
  readonly conflictWindowMs: number;
  /** Clock difference to a peer above which status and logs warn (last-update-wins trusts clocks). */
  readonly clockSkewWarnMs: number;
  /**
   * A peer's transaction whose commit timestamp is more than this ahead of the local clock is held until the clock
   * catches up (src/agent/future-commits.ts); as the clock-skew warning, by default.
   */
  readonly futureCommitHoldMs: number;
  /** Past this far ahead, the link is paused for the operator instead (a clock set wrong by more than a moment). */
  readonly futureCommitPauseMs: number;
  /** How long a peer's table or columns that this node lacks are waited for (their DDL may be on another stream). */
  readonly schemaWaitMs: number;
  /** How often tombstones that every peer is past are removed. */
  readonly tombstoneGcIntervalMs: number;
  /**
   * How much longer than strictly needed tombstones are kept: commit timestamps are not strictly in commit order
   * (and clocks differ a little), so a change slightly older than the horizon may still arrive.
   */
  readonly tombstoneMarginMs: number;
  /**
   * Ask peers to send a transaction while it is still running once it outgrows their logical_decoding_work_mem
   * (the agent spools it to a file until it commits). On: no spill of large transactions on the peers' disks (each
   * peer's walsender otherwise spills its own copy, once per slot). Off: large transactions apply faster for now,
   * since the peer's read-back of its spill overlaps with apply here, while a spooled one is applied only after it
   * has all arrived.
   */
  readonly streamLargeTransactions: boolean;
  /**
   * Tables that node add copies at once, each on its own pair of sessions in the same snapshot; 0 chooses from the
   * number of tables and cores. At most 2: PostgreSQL 16-18 let one session at a time use a replication origin,
   * and a joining node has two that mark rows as the source's (its link's and its replay origin).
   */
  readonly copyParallelism: number;
}

export type { LogLevel };

export interface ClusterConfig {
  readonly nodes: readonly NodeConfig[];
  readonly maxNodes: number;
  readonly logLevel: LogLevel;
  readonly tuning: AgentTuning;
}

export const DEFAULT_TUNING: AgentTuning = {
  feedbackIntervalMs: 1000,
  progressPollMs: 200,
  maxBatchRows: 1000,
  maxInflightStatements: 512,
  highWaterEvents: 20_000,
  retryBaseMs: 500,
  retryMaxMs: 15_000,
  lockTimeoutMs: 5_000,
  applyRetries: 10,
  conflictWindowMs: 10_000,
  clockSkewWarnMs: 500,
  futureCommitHoldMs: 500,
  futureCommitPauseMs: 300_000,
  schemaWaitMs: 10_000,
  tombstoneGcIntervalMs: 60_000,
  tombstoneMarginMs: 60_000,
  streamLargeTransactions: false,
  copyParallelism: 0,
};

type NumericTuningKey = Exclude<keyof AgentTuning, 'streamLargeTransactions'>;
const TUNING_FLAGS: ReadonlySet<string> = new Set<keyof AgentTuning>(['streamLargeTransactions']);

const TUNING_LIMITS: Record<NumericTuningKey, readonly [number, number]> = {
  feedbackIntervalMs: [50, 60_000],
  progressPollMs: [10, 60_000],
  maxBatchRows: [1, 100_000],
  maxInflightStatements: [2, 100_000],
  highWaterEvents: [10, 10_000_000],
  retryBaseMs: [10, 600_000],
  retryMaxMs: [10, 3_600_000],
  lockTimeoutMs: [0, 3_600_000],
  applyRetries: [0, 1_000],
  conflictWindowMs: [0, 86_400_000],
  clockSkewWarnMs: [1, 3_600_000],
  futureCommitHoldMs: [0, 3_600_000],
  futureCommitPauseMs: [0, 31_536_000_000],
  schemaWaitMs: [0, 3_600_000],
  tombstoneGcIntervalMs: [100, 86_400_000],
  tombstoneMarginMs: [0, 86_400_000],
  copyParallelism: [0, 2],
};

/** A configuration is a few lines per node; more than this is the wrong file (a log, a device such as /dev/zero). */
const MAX_CONFIG_BYTES = 1024 * 1024;

const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];
const TOP_KEYS = new Set(['nodes', 'maxNodes', 'logLevel', 'tuning']);
const NODE_KEYS = new Set(['name', 'dsn']);

export interface ConfigSources {
  readonly file?: string | undefined;
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly flags?: { readonly logLevel?: string | undefined; readonly maxNodes?: string | undefined };
  /**
   * A node that `node add` is adding: its PGMESH_DSN_<NODE> is honoured (joiningDsn) though the file does not list
   * it yet, rather than refused as a variable for an unknown node.
   */
  readonly joining?: string | undefined;
}

/** The environment variable that holds a node's connection string. */
export function dsnVariable(node: string): string {
  return `PGMESH_DSN_${node.toUpperCase()}`;
}

/** The connection string of a node being added, from PGMESH_DSN_<NODE>; undefined when the variable is unset. */
export function joiningDsn(env: Readonly<Record<string, string | undefined>>, node: string): string | undefined {
  return env[dsnVariable(node)] || undefined;
}

/** Reads and validates; throws one PgmeshError('CONFIG_INVALID') listing every problem. */
export function loadConfig(sources: ConfigSources): ClusterConfig {
  const env = sources.env ?? {};
  const problems: string[] = [];
  const path = sources.file ?? env.PGMESH_CONFIG;
  let raw: unknown = {};
  if (path) {
    const text = readConfigFile(path);
    try {
      raw = JSON.parse(text);
    } catch (error) {
      throw new PgmeshError('CONFIG_INVALID', `config file ${path} is not valid JSON: ${describeJsonError((error as Error).message, text)}`);
    }
  }
  const config = parseConfig(raw, problems, path ?? '(no file)');
  const merged = applyOverrides(config, env, sources.flags ?? {}, problems, sources.joining);
  if (problems.length > 0) {
    throw new PgmeshError('CONFIG_INVALID', `the configuration has ${problems.length} problem(s):\n- ${problems.join('\n- ')}`);
  }
  return merged;
}

/** The file's text, read up to MAX_CONFIG_BYTES: a larger file, or one without end, is refused, not read whole. */
function readConfigFile(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    throw new PgmeshError('CONFIG_INVALID', `cannot read config file ${path}: ${(error as Error).message}`);
  }
  try {
    const buffer = Buffer.alloc(MAX_CONFIG_BYTES + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
      if (length > MAX_CONFIG_BYTES) {
        throw new PgmeshError('CONFIG_INVALID', `config file ${path} is larger than ${MAX_CONFIG_BYTES / 1024 / 1024} MiB; is it the right file? (a configuration is a few lines per node)`);
      }
    }
    return buffer.toString('utf8', 0, length);
  } catch (error) {
    if (error instanceof PgmeshError) throw error;
    throw new PgmeshError('CONFIG_INVALID', `cannot read config file ${path}: ${(error as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * The parser's complaint without the piece of the file that V8 quotes in it (that piece may be a password);
 * a position becomes line and column.
 */
function describeJsonError(message: string, text: string): string {
  let out = message.replace(/^(Unexpected token .+?), (?:\.\.\.)?".*$/s, '$1');
  const position = /at position (\d+)/.exec(out);
  if (position) {
    const before = text.slice(0, Number(position[1]));
    const line = before.split('\n').length;
    const column = before.length - before.lastIndexOf('\n');
    out = `${out.replace(/ (?:in JSON )?at position \d+.*$/s, '')} at line ${line}, column ${column}`;
  }
  // Whatever else V8 may quote is dropped too.
  return out.includes('"') ? out.slice(0, out.indexOf('"')).replace(/[\s,]+$/, '') : out;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseConfig(raw: unknown, problems: string[], where: string): ClusterConfig {
  const nodes: NodeConfig[] = [];
  let maxNodes = 16;
  let logLevel: LogLevel = 'info';
  const tuning: Record<string, number | boolean> = { ...DEFAULT_TUNING };
  if (!isRecord(raw)) {
    problems.push(`${where}: the top level must be a JSON object`);
    return { nodes, maxNodes, logLevel, tuning: tuning as unknown as AgentTuning };
  }
  for (const key of Object.keys(raw)) {
    if (!TOP_KEYS.has(key)) problems.push(`unknown key "${key}" (known: ${[...TOP_KEYS].join(', ')})`);
  }
  if (raw.nodes === undefined || (Array.isArray(raw.nodes) && raw.nodes.length === 0)) {
    problems.push('there are no nodes: list them in "nodes", for example [{ "name": "n1", "dsn": "postgres://user@db1:5432/app" }, ...]');
  } else {
    if (!Array.isArray(raw.nodes)) {
      problems.push('"nodes" must be an array of { "name", "dsn" }');
    } else {
      raw.nodes.forEach((node, i) => {
        if (!isRecord(node)) {
          problems.push(`nodes[${i}] must be an object with "name" and "dsn"`);
          return;
        }
        for (const key of Object.keys(node)) {
          if (!NODE_KEYS.has(key)) problems.push(`nodes[${i}]: unknown key "${key}" (known: name, dsn)`);
        }
        if (typeof node.name !== 'string') problems.push(`nodes[${i}].name must be a string`);
        if (typeof node.dsn !== 'string') problems.push(`nodes[${i}].dsn must be a connection string`);
        if (typeof node.name === 'string' && typeof node.dsn === 'string') nodes.push({ name: node.name, dsn: node.dsn });
      });
    }
  }
  if (raw.maxNodes !== undefined) {
    if (typeof raw.maxNodes === 'number') maxNodes = raw.maxNodes;
    else problems.push('"maxNodes" must be a number');
  }
  if (raw.logLevel !== undefined) {
    if (typeof raw.logLevel === 'string' && LOG_LEVELS.includes(raw.logLevel as LogLevel)) logLevel = raw.logLevel as LogLevel;
    else problems.push(`"logLevel" must be one of ${LOG_LEVELS.join(', ')}`);
  }
  if (raw.tuning !== undefined) {
    if (!isRecord(raw.tuning)) {
      problems.push('"tuning" must be an object');
    } else {
      for (const [key, value] of Object.entries(raw.tuning)) {
        if (TUNING_FLAGS.has(key)) {
          if (typeof value === 'boolean') tuning[key] = value;
          else problems.push(`tuning.${key} must be true or false`);
        } else if (!(key in TUNING_LIMITS)) {
          problems.push(`tuning: unknown key "${key}" (known: ${[...Object.keys(TUNING_LIMITS), ...TUNING_FLAGS].join(', ')})`);
        } else if (typeof value !== 'number') {
          problems.push(`tuning.${key} must be a number`);
        } else {
          tuning[key] = value;
        }
      }
    }
  }
  return { nodes, maxNodes, logLevel, tuning: tuning as unknown as AgentTuning };
}

function applyOverrides(
  config: ClusterConfig,
  env: Readonly<Record<string, string | undefined>>,
  flags: NonNullable<ConfigSources['flags']>,
  problems: string[],
  joining: string | undefined,
): ClusterConfig {
  let { maxNodes, logLevel } = config;
  const levelText = flags.logLevel ?? env.PGMESH_LOG_LEVEL;
  if (levelText !== undefined) {
    if (LOG_LEVELS.includes(levelText as LogLevel)) logLevel = levelText as LogLevel;
    else problems.push(`log level "${levelText}" must be one of ${LOG_LEVELS.join(', ')}`);
  }
  const maxText = flags.maxNodes ?? env.PGMESH_MAX_NODES;
  if (maxText !== undefined) {
    const n = Number(maxText);
    if (Number.isInteger(n)) maxNodes = n;
    else problems.push(`max nodes "${maxText}" must be a whole number`);
  }
  const dsnSources: string[] = [];
  const nodes = config.nodes.map((node, i) => {
    const variable = dsnVariable(node.name);
    const override = env[variable];
    dsnSources.push(override ? variable : `nodes[${i}].dsn`);
    return override ? { ...node, dsn: override } : node;
  });
  // A connection string for a node the configuration does not have is a typo (or a stale variable): say so, since
  // the node it was meant for would silently keep its other connection string.
  const known = new Set([...config.nodes.map((n) => dsnVariable(n.name)), ...(joining ? [dsnVariable(joining)] : [])]);
  for (const variable of Object.keys(env).sort()) {
    // Environment variables are case-sensitive: PGMESH_DSN_n1 is not PGMESH_DSN_N1, and would be ignored.
    if (!variable.toUpperCase().startsWith('PGMESH_DSN_') || !env[variable] || known.has(variable)) continue;
    const meant = variable.toUpperCase();
    if (known.has(meant)) {
      problems.push(`${variable} is set, but the variable for node ${meant.slice('PGMESH_DSN_'.length).toLowerCase()} is ${meant} (upper case); rename it`);
    } else {
      const names = config.nodes.map((n) => n.name).join(', ') || 'none';
      problems.push(`${variable} is set, but the configuration has no node ${meant.slice('PGMESH_DSN_'.length).toLowerCase()} (nodes: ${names}); fix its name or unset it`);
    }
  }
  validate({ ...config, nodes, maxNodes, logLevel }, dsnSources, problems, env);
  return { ...config, nodes, maxNodes, logLevel };
}

/** @param dsnSources where each node's connection string came from, to point at the right place */
function validate(config: ClusterConfig, dsnSources: readonly string[], problems: string[], env: Readonly<Record<string, string | undefined>>): void {
  const seen = new Set<string>();
  const endpoints = new Map<string, string>();
  config.nodes.forEach((node, i) => {
    if (!NODE_NAME_PATTERN.test(node.name)) {
      problems.push(`nodes[${i}].name "${node.name}": use 1-40 lowercase letters, digits or "_", starting with a letter`);
    }
    if (seen.has(node.name)) problems.push(`nodes[${i}].name "${node.name}" appears twice`);
    seen.add(node.name);
    // Resolved as a connection would be: with its service file and the PG* variables of this environment.
    const dsn = dsnProblem(node.dsn, env);
    if (dsn) problems.push(`${dsnSources[i]}: the connection string of node ${node.name} ${dsn}`);
    // Two nodes in one database would replicate into themselves; each node is a database of its own.
    const endpoint = dsn ? undefined : sameDatabaseKey(describeEndpoint(node.dsn, env));
    const first = endpoint === undefined ? undefined : endpoints.get(endpoint);
    if (first !== undefined) {
      problems.push(`${dsnSources[i]}: node ${node.name} has the same server and database as node ${first} (${endpoint}); each node must be a database of its own`);
    } else if (endpoint !== undefined) {
      endpoints.set(endpoint, node.name);
    }
  });
  if (!Number.isInteger(config.maxNodes) || config.maxNodes < 2 || config.maxNodes > 1024) {
    problems.push(`maxNodes ${config.maxNodes} must be a whole number from 2 to 1024`);
  } else if (config.nodes.length > config.maxNodes) {
    problems.push(`${config.nodes.length} nodes are configured but maxNodes is ${config.maxNodes}`);
  }
  for (const [key, [min, max]] of Object.entries(TUNING_LIMITS)) {
    const value = config.tuning[key as NumericTuningKey];
    if (!Number.isFinite(value) || value < min || value > max) problems.push(`tuning.${key} = ${value} must be between ${min} and ${max}`);
  }
  if (config.tuning.retryMaxMs < config.tuning.retryBaseMs) {
    problems.push(`tuning.retryMaxMs = ${config.tuning.retryMaxMs} must not be below tuning.retryBaseMs = ${config.tuning.retryBaseMs}`);
  }
}

/** host:port/dbname with the host in lower case (host names are not case-sensitive; database names are). */
function sameDatabaseKey(endpoint: string): string {
  const slash = endpoint.indexOf('/');
  return slash < 0 ? endpoint.toLowerCase() : `${endpoint.slice(0, slash).toLowerCase()}${endpoint.slice(slash)}`;
}

export function findNode(config: ClusterConfig, name: string): NodeConfig {
  const node = config.nodes.find((n) => n.name === name);
  if (!node) {
    throw new PgmeshError(
      'UNKNOWN_NODE',
      `node "${name}" is not in the configuration (nodes: ${config.nodes.map((n) => n.name).join(', ') || 'none'})`,
    );
  }
  return node;
}
