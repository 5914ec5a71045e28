import type { Command } from 'commander';
import { initNode, addTables } from '../cluster/node-admin.ts';
import { findNode } from '../config/config.ts';
import { connectionError, openSql } from '../pg/connect.ts';
import { configFrom, loggerFor, printJson, type GlobalOptions } from './common.ts';
import { printTables } from './tables.ts';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('prepare one node: check its server settings, install the pgmesh catalog and publication, add its tables')
    .requiredOption('--node <name>', 'the node to prepare, as named in the configuration')
    .option('--no-tables', 'do not add the existing tables to replication')
    .option('--json', 'print the result as JSON')
    .action(async (options: { node: string; tables: boolean; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const node = findNode(config, options.node);
      const sql = openSql(node.dsn, { node: node.name, applicationName: 'pgmesh init', logger: loggerFor(config) });
      try {
        await sql.unsafe('SELECT 1').catch((error) => {
          throw connectionError(error, node.name, node.dsn);
        });
        const result = await initNode(sql, {
          nodeName: node.name,
          nodeSlot: config.nodes.indexOf(node) + 1,
          maxNodes: config.maxNodes,
          expectedPeers: config.nodes.length - 1,
        });
        const tables = options.tables ? await addTables(sql, 'all') : undefined;
        if (options.json) {
          printJson({ node: result.node, created: result.created, tables });
        } else {
          process.stdout.write(`node ${node.name}: ${result.created ? 'initialized' : 'already initialized; catalog up to date'}\n`);
          if (tables) printTables(node.name, tables);
        }
      } finally {
        await sql.end({ timeout: 2 });
      }
    });
}
