/** `pgmesh ddl "<sql>"`: a schema change run on one node, replicated to the others (docs/ddl.md). */
import type { Command } from 'commander';
import { runDdl } from '../ddl/run-ddl.ts';
import { configFrom, loggerFor, type GlobalOptions } from './common.ts';

export function registerDdl(program: Command): void {
  program
    .command('ddl')
    .description('run schema changes (one string, several statements allowed) on one node; they replicate to every node')
    .argument('<sql>', 'the statements')
    .option('--node <name>', 'the node to run them on (default: the first in the configuration)')
    .action(async (statements: string, options: { node?: string }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const { node } = await runDdl(config, loggerFor(config), statements, options.node);
      const others = config.nodes.filter((n) => n.name !== node).map((n) => n.name);
      process.stdout.write(`ran on ${node}; it replicates to ${others.join(', ') || 'no other node'} (pgmesh schema diff compares them)\n`);
    });
}
