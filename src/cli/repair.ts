import { Option, type Command } from 'commander';
import { PgmeshError } from '../core/errors.ts';
import {
  CONFLICT_POLICIES,
  CONFLICT_TYPES,
  EXCEPTION_POLICIES,
  discardException,
  listConflicts,
  listExceptions,
  replayException,
  restoreConflict,
  resumePeer,
  type ResumeResolution,
  setDeltaColumns,
  setTablePolicy,
} from '../cluster/repair.ts';
import type { ConflictPolicy, ExceptionPolicy } from '../apply/local-relation.ts';
import type { ClusterConfig, NodeConfig } from '../config/config.ts';
import { findNode } from '../config/config.ts';
import { connectionError, openSql, type Sql } from '../pg/connect.ts';
import { answer, configFrom, loggerFor, printJson, requireInitialized, type GlobalOptions } from './common.ts';
import { parseId, wholeNumber } from './parsers.ts';
import { renderTable } from './status.ts';
import { parseTableName } from './tables.ts';

async function onNode<T>(config: ClusterConfig, node: NodeConfig, fn: (sql: Sql) => Promise<T>): Promise<T> {
  const sql = openSql(node.dsn, { node: node.name, applicationName: 'pgmesh repair', logger: loggerFor(config) });
  try {
    await sql.unsafe('SELECT 1').catch((error) => {
      throw connectionError(error, node.name, node.dsn);
    });
    await requireInitialized(sql, node.name);
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 2 });
  }
}

function requireNode(node: string | undefined, command: string): string {
  if (!node) throw new PgmeshError('CONFIG_INVALID', `pgmesh ${command} needs --node <name>: the node whose conflict log to use`);
  return node;
}

/** Collects repeated `--set column=value` options. */
function collectAssignment(text: string, into: Record<string, string>): Record<string, string> {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new PgmeshError('CONFIG_INVALID', `--set ${text}: write column=value`);
  return { ...into, [text.slice(0, eq)]: text.slice(eq + 1) };
}

function short(value: unknown, width = 60): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > width ? `${text.slice(0, width - 1)}…` : text;
}

export function registerRepair(program: Command): void {
  const conflicts = program
    .command('conflicts')
    .description('list the conflicts a node recorded (newest first): type, resolution, both versions, both rows')
    // Not a required option: commander checks those before it hands over to "conflicts restore", which has it too.
    .option('--node <name>', 'the node whose conflict log to read (required)')
    .option('--table <schema.table>', 'only this table')
    .addOption(new Option('--type <type>', 'only this conflict type').choices(CONFLICT_TYPES))
    .option('--limit <n>', 'at most this many (1-100000)', wholeNumber(1, 100_000), 50)
    .option('--json', 'print as JSON (with the whole rows)')
    .action(async (options: { node?: string; table?: string; type?: string; limit: number; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const records = await onNode(config, findNode(config, requireNode(options.node, 'conflicts')), (sql) =>
        listConflicts(sql, { relation: options.table, type: options.type, limit: options.limit }),
      );
      if (options.json) return printJson(records);
      const rows = [['ID', 'AT', 'FROM', 'TABLE', 'KEY', 'TYPE', 'RESOLUTION', 'LOCAL VERSION', 'REMOTE VERSION']];
      for (const r of records) {
        rows.push([String(r.id), r.recordedAt.slice(0, 19), r.peer, r.relation, short(r.key, 30), r.type, r.resolution,
          r.local.ts ? `${r.local.ts.slice(11, 26)} ${r.local.node}` : '-', `${r.remote.ts.slice(11, 26)} ${r.remote.node}`]);
      }
      process.stdout.write(`${records.length === 0 ? 'no conflicts recorded' : renderTable(rows)}\n`);
    });
  conflicts
    .command('restore')
    .description('write the row that lost a conflict back as a new change on the node; it replicates like any other write')
    .argument('<id>', 'conflict id (from "pgmesh conflicts")', parseId)
    .option('--set <column=value>', 'give a column another value in the row written back (repeatable), e.g. a free unique value', collectAssignment, {})
    .option('--json', 'print the result as JSON')
    .action(async (id: bigint, options: { set: Record<string, string>; json?: boolean }, command: Command) => {
      const all = command.optsWithGlobals<GlobalOptions & { node?: string }>();
      const config = configFrom(all);
      const node = findNode(config, requireNode(all.node, 'conflicts restore'));
      const result = await onNode(config, node, (sql) => restoreConflict(sql, id, { set: options.set }));
      answer(options.json, { conflict: id, node: node.name, ...result }, `conflict ${id}: ${result.rows.length} row(s) of ${result.relation} written back on ${node.name}`);
    });

  const exceptions = program.command('exceptions').description('changes that could not be applied: list, replay after a fix, or discard');
  exceptions
    .command('list')
    .requiredOption('--node <name>', 'the node whose exceptions to read')
    .option('--all', 'also replayed and discarded ones')
    .option('--json', 'print as JSON (with the whole change)')
    .action(async (options: { node: string; all?: boolean; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const records = await onNode(config, findNode(config, options.node), (sql) => listExceptions(sql, options.all ? {} : { state: 'open' }));
      if (options.json) return printJson(records);
      const rows = [['ID', 'AT', 'FROM', 'TABLE', 'CHANGE', 'KEY', 'STATE', 'ERROR']];
      for (const e of records) rows.push([String(e.id), e.recordedAt.slice(0, 19), e.peer, e.relation ?? '-', e.kind, short(e.key, 30), e.state, short(e.error, 70)]);
      process.stdout.write(`${records.length === 0 ? 'no exceptions' : renderTable(rows)}\n`);
    });
  exceptions
    .command('replay')
    .description('apply an exception\'s change again (after fixing its cause), with its original version')
    .argument('<id>', 'exception id', parseId)
    .requiredOption('--node <name>', 'the node the exception is on')
    .option('--json', 'print the result as JSON')
    .action(async (id: bigint, options: { node: string; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const node = findNode(config, options.node);
      await onNode(config, node, async () => undefined);
      await replayException(node.dsn, node.name, id, loggerFor(config));
      answer(options.json, { exception: id, node: node.name, replayed: true }, `exception ${id} replayed on ${node.name}`);
    });
  exceptions
    .command('discard')
    .description('mark an exception as dealt with, without applying it')
    .argument('<id>', 'exception id', parseId)
    .requiredOption('--node <name>', 'the node the exception is on')
    .option('--note <text>', 'why', 'discarded by operator')
    .option('--json', 'print the result as JSON')
    .action(async (id: bigint, options: { node: string; note: string; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      await onNode(config, findNode(config, options.node), (sql) => discardException(sql, id, options.note));
      answer(options.json, { exception: id, node: options.node, discarded: true }, `exception ${id} discarded on ${options.node}`);
    });

  const tables = program.commands.find((c) => c.name() === 'tables');
  if (!tables) throw new PgmeshError('INTERNAL', 'tables command missing');
  tables
    .command('policy')
    .description('set how a table resolves conflicts and what happens to changes that cannot be applied (on every node)')
    .argument('<table>', 'schema.table')
    .addOption(new Option('--conflicts <policy>', 'how conflicts are resolved').choices(CONFLICT_POLICIES))
    .addOption(new Option('--exceptions <policy>', 'what happens to a change that cannot be applied').choices(EXCEPTION_POLICIES))
    .option('--json', 'print the result as JSON')
    .action(async (table: string, options: { conflicts?: string; exceptions?: string; json?: boolean }, command: Command) => {
      if (!options.conflicts && !options.exceptions) throw new PgmeshError('CONFIG_INVALID', 'give --conflicts and/or --exceptions');
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const ref = parseTableName(table);
      for (const node of config.nodes) {
        await onNode(config, node, (sql) =>
          setTablePolicy(sql, ref, { conflictPolicy: options.conflicts as ConflictPolicy | undefined, exceptionPolicy: options.exceptions as ExceptionPolicy | undefined }),
        );
      }
      const nodes = config.nodes.map((n) => n.name);
      answer(options.json, { table, conflictPolicy: options.conflicts ?? null, exceptionPolicy: options.exceptions ?? null, nodes }, `${table}: policy set on ${nodes.join(', ')}`);
    });
  tables
    .command('delta')
    .description('declare numeric columns whose concurrent changes add up (local + (new - old)); sets REPLICA IDENTITY FULL (on every node)')
    .argument('<table>', 'schema.table')
    .argument('<columns...>', 'column names')
    .option('--json', 'print the result as JSON')
    .action(async (table: string, columns: string[], options: { json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const ref = parseTableName(table);
      for (const node of config.nodes) await onNode(config, node, (sql) => setDeltaColumns(sql, ref, columns));
      const nodes = config.nodes.map((n) => n.name);
      answer(options.json, { table, deltaColumns: columns, nodes }, `${table}: delta columns ${columns.join(', ')} on ${nodes.join(', ')}`);
    });

  program
    .command('resume')
    .description('let a paused peer stream again (after repairing what paused it)')
    .requiredOption('--node <name>', 'the node that paused')
    .requiredOption('--peer <name>', 'the peer whose stream is paused')
    .addOption(
      new Option('--resolution <policy>', 'how the conflicts of the transaction that paused the peer are resolved (that transaction only)')
        .choices(['last_update_wins', 'keep_local', 'apply_remote'])
        .default('last_update_wins'),
    )
    .option('--json', 'print the result as JSON')
    .action(async (options: { node: string; peer: string; resolution: ResumeResolution; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const node = findNode(config, options.node);
      const peers = config.nodes.filter((n) => n !== node).map((n) => n.name);
      if (options.peer === node.name) {
        throw new PgmeshError('CONFIG_INVALID', `--peer ${options.peer} is the node itself; give the peer whose stream to ${node.name} is paused (${peers.join(', ') || 'none'})`);
      }
      if (!peers.includes(options.peer)) {
        throw new PgmeshError('UNKNOWN_NODE', `--peer ${options.peer}: there is no node ${options.peer} in the configuration (peers of ${node.name}: ${peers.join(', ') || 'none'})`);
      }
      const resumed = await onNode(config, node, (sql) => resumePeer(sql, options.peer, { resolution: options.resolution }));
      answer(
        options.json,
        { node: options.node, peer: options.peer, resumed },
        resumed ? `${options.node} resumes streaming from ${options.peer}` : `${options.peer} was not paused on ${options.node}`,
      );
    });
}
