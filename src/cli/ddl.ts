/** `pgmesh ddl "<sql>"`: a schema change run on one node, replicated to the others (docs/ddl.md). */
import type { Command } from 'commander';
import { PgmeshError } from '../core/errors.ts';
import { runDdl } from '../ddl/run-ddl.ts';
import { answer, configFrom, loggerFor, type GlobalOptions } from './common.ts';

export function registerDdl(program: Command): void {
  program
    .command('ddl')
    .description('run schema changes (one string, several statements allowed) on one node; they replicate to every node')
    .argument('<sql>', 'the statements')
    .option('--node <name>', 'the node to run them on (default: the first in the configuration)')
    .option('--lock', 'cluster-wide DDL lock: writes to the changed tables fail on every node until every node has the change (docs/ddl.md)')
    .option('--lock-timeout <seconds>', 'with --lock: how long each step may take before the lock gives up and is released', '60')
    .option('--json', 'print the result as JSON')
    .action(async (statements: string, options: { node?: string; lock?: boolean; lockTimeout: string; json?: boolean }, command: Command) => {
      const timeout = Number(options.lockTimeout);
      if (!Number.isFinite(timeout) || timeout <= 0) throw new PgmeshError('CONFIG_INVALID', `--lock-timeout must be a number of seconds above 0, not "${options.lockTimeout}"`);
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const { node } = await runDdl(config, loggerFor(config), statements, options.node, { lock: options.lock === true, lockTimeoutMs: timeout * 1000 });
      const others = config.nodes.filter((n) => n.name !== node).map((n) => n.name);
      answer(options.json, { node, replicatesTo: others }, `ran on ${node}; it replicates to ${others.join(', ') || 'no other node'} (pgmesh schema diff compares them)`);
    });
}
