/** `pgmesh schema diff`: what differs between the nodes' schemas (docs/ddl.md). */
import type { Command } from 'commander';
import { clusterSchemaDiff } from '../cluster/cluster-ops.ts';
import { formatSchemaDifferences } from '../cluster/schema-dump.ts';
import { configFrom, loggerFor, printJson, type GlobalOptions } from './common.ts';

export function registerSchema(program: Command): void {
  const schema = program.command('schema').description("compare the nodes' schemas");
  schema
    .command('diff')
    .description('show what differs between the schemas of the nodes (exits 1 when they differ)')
    .option('--json', 'print as JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const result = await clusterSchemaDiff(config, loggerFor(config));
      if (options.json) printJson(result);
      else if (result.differences.length === 0) process.stdout.write(`the schemas of ${Object.keys(result.fingerprints).join(', ')} are alike (fingerprint ${Object.values(result.fingerprints)[0] ?? '-'})\n`);
      else process.stdout.write(`${formatSchemaDifferences(result.differences).join('\n')}\n`);
      if (result.differences.length > 0) process.exitCode = 1;
    });
}
