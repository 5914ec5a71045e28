import type { Command } from 'commander';
import { PgmeshError } from '../core/errors.ts';
import { addNodeToConfigFile, removeNodeFromConfigFile } from '../config/config-file.ts';
import { dsnVariable, joiningDsn } from '../config/config.ts';
import { dsnProblem, hasPassword, withoutPassword } from '../pg/dsn.ts';
import { addNode } from '../membership/node-add.ts';
import { removeNode } from '../membership/node-remove.ts';
import { resyncNode } from '../membership/node-resync.ts';
import { progressReporter } from './progress.ts';
import { configFrom, loggerFor, printJson, type GlobalOptions } from './common.ts';

function megabytes(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** The copy's progress on this process's stderr (a bar on a terminal, plain lines otherwise). */
function copyProgressOnStderr(): ReturnType<typeof progressReporter> {
  return progressReporter({ isTTY: process.stderr.isTTY === true, columns: process.stderr.columns, write: (text) => process.stderr.write(text) });
}

/**
 * The node's connection string and the catch-up timeout, checked. The string comes from --dsn, else
 * PGMESH_DSN_<NODE> (also for a node the file does not list yet), else the node's entry in the configuration. A
 * password on the command line is refused: every user of the machine can read it (ps, /proc).
 */
function joinInput(
  nodes: readonly { readonly name: string; readonly dsn: string }[],
  name: string,
  options: { readonly dsn?: string; readonly catchUpTimeout: string },
): { dsn: string; timeout: number } {
  const variable = dsnVariable(name);
  if (options.dsn !== undefined && hasPassword(options.dsn)) {
    throw new PgmeshError(
      'CONFIG_INVALID',
      `--dsn carries a password, which every user of this machine can read on a command line; give the connection string in ${variable} instead, or the password in PGPASSWORD, the password file (~/.pgpass) or a service file, and --dsn without it`,
    );
  }
  const dsn = options.dsn ?? joiningDsn(process.env, name) ?? nodes.find((n) => n.name === name)?.dsn;
  if (!dsn) throw new PgmeshError('CONFIG_INVALID', `node ${name} is not in the configuration: give its connection string with --dsn postgres://... or in ${variable}`);
  const problem = dsnProblem(dsn);
  if (problem) throw new PgmeshError('CONFIG_INVALID', `the connection string of node ${name} ${problem}`);
  const timeout = Number(options.catchUpTimeout);
  if (!Number.isFinite(timeout) || timeout <= 0) throw new PgmeshError('CONFIG_INVALID', `--catch-up-timeout must be a number of seconds above 0, not "${options.catchUpTimeout}"`);
  return { dsn, timeout };
}

export function registerNode(program: Command): void {
  const node = program.command('node').description('grow and shrink a running cluster');
  node
    .command('add')
    .description('add a node to the running cluster: copy the replicated tables from a member, online, then link it with every node')
    .argument('<name>', 'the new node (1-40 of a-z, 0-9, _)')
    .option('--dsn <string>', 'its connection string, without a password (default: PGMESH_DSN_<NAME>, or its entry in the configuration)')
    .option('--from <node>', 'the member whose data is copied (default: the first node of the configuration)')
    .option('--catch-up-timeout <seconds>', 'how long the source may take to apply the other nodes\' changes', '300')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { dsn?: string; from?: string; catchUpTimeout: string; json?: boolean }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>();
      const config = configFrom(globals, name);
      const { dsn, timeout } = joinInput(config.nodes, name, options);
      const progress = copyProgressOnStderr();
      const result = await addNode(config, loggerFor(config), {
        name,
        dsn,
        from: options.from,
        catchUpTimeoutMs: timeout * 1000,
        onProgress: progress.onProgress,
      }).finally(progress.finish);
      const file = globals.config ?? process.env.PGMESH_CONFIG;
      const listed = file ? addNodeToConfigFile(file, { name, dsn: withoutPassword(dsn) }) : false;
      if (options.json) {
        printJson({ ...result, configUpdated: listed });
        return;
      }
      if (result.alreadyMember) {
        process.stdout.write(`node ${name} is already a member of the cluster\n`);
      } else {
        process.stdout.write(
          `node ${name} joined from ${result.source}: ${result.tables} tables, ${result.rows.toLocaleString('en')} rows, ${megabytes(result.bytes)} in ${result.copySeconds.toFixed(1)} s\n`,
        );
      }
      if (listed) process.stdout.write(`added ${name} to ${file}\n`);
      process.stdout.write(
        `next: reload every running agent (kill -HUP <pid>, or restart it) so it streams from ${name}, and start ${name}'s agent: pgmesh start --node ${name}\n`,
      );
    });
  node
    .command('resync')
    .description("copy a node anew from a member, as a join does: for a node whose slot on a peer was invalidated, that was restored from an old backup, or that was removed")
    .argument('<name>', 'the node to bring back to the cluster\'s state')
    .option('--dsn <string>', 'its connection string, without a password (default: PGMESH_DSN_<NAME>, or its entry in the configuration)')
    .option('--from <node>', 'the member whose data is copied (default: the first other node of the configuration)')
    .option('--force', 'resync although what it wrote could not be drained to every other node (those changes are lost)')
    .option('--catch-up-timeout <seconds>', 'how long the source may take to apply the other nodes\' changes', '300')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { dsn?: string; from?: string; force?: boolean; catchUpTimeout: string; json?: boolean }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>();
      const config = configFrom(globals, name);
      const { dsn, timeout } = joinInput(config.nodes, name, options);
      const progress = copyProgressOnStderr();
      const result = await resyncNode(config, loggerFor(config), {
        name,
        dsn,
        from: options.from,
        force: options.force,
        catchUpTimeoutMs: timeout * 1000,
        onProgress: progress.onProgress,
      }).finally(progress.finish);
      const file = globals.config ?? process.env.PGMESH_CONFIG;
      const listed = file ? addNodeToConfigFile(file, { name, dsn: withoutPassword(dsn) }) : false;
      if (options.json) {
        printJson({ ...result, configUpdated: listed });
        return;
      }
      process.stdout.write(
        `node ${name} resynced from ${result.source}: ${result.tables} tables, ${result.rows.toLocaleString('en')} rows, ${megabytes(result.bytes)} in ${result.copySeconds.toFixed(1)} s` +
          `${result.drained ? ' (what it had written reached every other node first)' : ''}\n`,
      );
      for (const warning of result.warnings) process.stdout.write(`warning: ${warning}\n`);
      if (listed) process.stdout.write(`added ${name} to ${file}\n`);
      process.stdout.write(`next: reload every other running agent (kill -HUP <pid>, or restart it), and start ${name}'s agent: pgmesh start --node ${name}\n`);
    });
  node
    .command('remove')
    .description('remove a node: drain what it wrote to the others, then drop its slots, origins and links on every node')
    .argument('<name>', 'the node that leaves')
    .option('--force', 'remove it although it is unreachable or not drained (its changes that others lack are lost)')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { force?: boolean; json?: boolean }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>();
      const config = configFrom(globals);
      const result = await removeNode(config, loggerFor(config), { name, force: options.force });
      const file = globals.config ?? process.env.PGMESH_CONFIG;
      const unlisted = file ? removeNodeFromConfigFile(file, name) : false;
      if (options.json) {
        printJson({ ...result, configUpdated: unlisted });
        return;
      }
      process.stdout.write(`node ${name} removed${result.drained ? ' (everything it wrote reached every other node)' : ''}\n`);
      for (const warning of result.warnings) process.stdout.write(`warning: ${warning}\n`);
      if (unlisted) process.stdout.write(`removed ${name} from ${file}\n`);
      process.stdout.write(`next: stop ${name}'s agent, and reload every other agent (kill -HUP <pid>, or restart it)\n`);
    });
}
