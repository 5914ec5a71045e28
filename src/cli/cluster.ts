import type { Command } from 'commander';
import { createCluster } from '../cluster/cluster-ops.ts';
import { configFrom, loggerFor, printJson, type GlobalOptions } from './common.ts';
import { parseTableName, printClusterTables } from './tables.ts';

export function registerCluster(program: Command): void {
  const cluster = program.command('cluster').description('cluster membership');
  cluster
    .command('create')
    .description('make every node of the configuration one full mesh: init each node, add tables, link every pair (idempotent)')
    .option('--tables <list>', 'comma-separated schema.table list (default: every table with a primary key)')
    .option('--agent-role <role>', 'the (non-superuser) role the agents will connect as: grant it what an agent needs on every node')
    .option('--json', 'print the result as JSON')
    .action(async (options: { tables?: string; agentRole?: string; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const tables = options.tables ? options.tables.split(',').map((t) => parseTableName(t.trim())) : 'all';
      const result = await createCluster(config, loggerFor(config), { tables, agentRole: options.agentRole });
      // A table left out is a failure (exit 1), named or not: the nodes are linked, but its rows do not replicate.
      const refused = [...new Set(result.nodes.flatMap((n) => n.tables.refused.map((t) => `${t.schema}.${t.name}`)))];
      if (refused.length > 0) process.exitCode = 1;
      if (options.json) {
        // complete: false with the tables left out, as the exit code 1 says.
        printJson({ ...result, complete: refused.length === 0, notReplicated: refused });
        return;
      }
      for (const node of result.nodes) {
        process.stdout.write(`node ${node.name}: ${node.created ? 'initialized' : 'already initialized'}\n`);
      }
      printClusterTables(Object.fromEntries(result.nodes.map((n) => [n.name, n.tables])));
      process.stdout.write(`linked ${config.nodes.length} nodes (${result.slotsCreated} new slots)\n`);
      if (refused.length > 0) {
        process.stdout.write(`INCOMPLETE: ${refused.length} table(s) do not replicate: ${refused.join(', ')}\n`);
        process.stderr.write(`pgmesh: not replicated: ${refused.join(', ')}; fix what is said above for each, then run "pgmesh tables add"\n`);
      } else {
        process.stdout.write('cluster created; start an agent per node: pgmesh start --node <name>\n');
      }
    });
}
