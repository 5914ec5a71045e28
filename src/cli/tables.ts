import type { Command } from 'commander';
import { PgmeshError } from '../core/errors.ts';
import { addClusterTables, removeClusterTables } from '../cluster/cluster-ops.ts';
import { listReplicatedTables, type AddTablesResult, type TableRef } from '../cluster/node-admin.ts';
import { readSequenceStatus, type SequenceResult, type SequenceStatus } from '../cluster/sequences.ts';
import { connectionError, openSql } from '../pg/connect.ts';
import { configFrom, loggerFor, printJson, type GlobalOptions } from './common.ts';

export function parseTableName(text: string): TableRef {
  const dot = text.indexOf('.');
  if (dot <= 0 || dot === text.length - 1) {
    throw new PgmeshError('CONFIG_INVALID', `table "${text}" must be written schema.table (for example public.orders)`);
  }
  return { schema: text.slice(0, dot), name: text.slice(dot + 1) };
}

export function printTables(node: string, result: AddTablesResult): void {
  for (const t of result.added) process.stdout.write(`  ${node}: replicating ${t.schema}.${t.name}\n`);
  for (const t of result.alreadyReplicated) process.stdout.write(`  ${node}: already replicating ${t.schema}.${t.name}\n`);
  for (const t of result.refused) process.stdout.write(`  ${node}: NOT replicated: ${t.reason}\n`);
  for (const s of result.sequences ?? []) process.stdout.write(`  ${node}: ${describeSequence(s)}\n`);
}

/** "sequence public.orders_id_seq (public.orders.id) hands out 3, 11, 19, ... (interleaved now)". */
export function describeSequence(s: SequenceResult): string {
  const next = BigInt(s.nextValue);
  const values = [next, next + BigInt(s.step), next + 2n * BigInt(s.step)].join(', ');
  const state = s.action === 'interleaved' ? 'interleaved now' : 'already interleaved';
  return `sequence ${s.sequence} (${s.feeds.join(', ')}) hands out ${values}, ... (${state}; ${s.valuesLeft} values left)`;
}

/** The tables of every node; a table refused on every node (as addTablesEverywhere refuses) is printed once. */
export function printClusterTables(results: Readonly<Record<string, AddTablesResult>>): void {
  const refusals = new Set<string>();
  for (const [node, result] of Object.entries(results)) {
    printTables(node, { ...result, refused: [] });
    for (const t of result.refused) refusals.add(t.reason);
  }
  for (const reason of refusals) process.stdout.write(`  NOT replicated: ${reason}\n`);
}

export function registerTables(program: Command): void {
  const tables = program.command('tables').description('choose which tables replicate');
  tables
    .command('add')
    .description('add tables to replication on every node (schema.table ...)')
    .argument('<tables...>', 'tables as schema.table')
    .option('--json', 'print the result as JSON')
    .action(async (names: string[], options: { json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const refs = names.map(parseTableName);
      const results = await addClusterTables(config, loggerFor(config), refs);
      if (options.json) printJson(results);
      else printClusterTables(results);
      if (Object.values(results).some((r) => r.refused.length > 0)) process.exitCode = 1;
    });
  tables
    .command('remove')
    .description('take tables out of replication on every node; their rows stay (schema.table ...)')
    .argument('<tables...>', 'tables as schema.table')
    .option('--json', 'print the result as JSON')
    .action(async (names: string[], options: { json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const results = await removeClusterTables(config, loggerFor(config), names.map(parseTableName));
      if (options.json) printJson(results);
      else {
        for (const [node, result] of Object.entries(results)) {
          for (const t of result.removed) process.stdout.write(`  ${node}: no longer replicating ${t.schema}.${t.name} (its rows stay)\n`);
          for (const t of result.notReplicated) process.stdout.write(`  ${node}: ${t.schema}.${t.name} was not replicated\n`);
          for (const t of result.missing) process.stdout.write(`  ${node}: table ${t.schema}.${t.name} does not exist (names are case-sensitive)\n`);
        }
      }
      if (Object.values(results).some((r) => r.missing.length > 0)) process.exitCode = 1;
    });
  tables
    .command('list')
    .description('list the replicated tables of every node')
    .option('--json', 'print as JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      // Every node at once, each on its own: a node that cannot be read is reported, the others still listed.
      type Listing = { tables: string[]; sequences: SequenceStatus[] };
      const results = await Promise.all(
        config.nodes.map(async (node): Promise<[string, Listing | PgmeshError]> => {
          const sql = openSql(node.dsn, { node: node.name, applicationName: 'pgmesh tables', logger: loggerFor(config), connectTimeoutS: 5 });
          try {
            const tables = (await listReplicatedTables(sql)).map((t) => `${t.schema}.${t.name}`);
            return [node.name, { tables, sequences: await readSequenceStatus(sql) }];
          } catch (error) {
            return [node.name, connectionError(error, node.name, node.dsn)];
          } finally {
            await sql.end({ timeout: 2 }).catch(() => undefined);
          }
        }),
      );
      const failed = results.filter((r): r is [string, PgmeshError] => r[1] instanceof PgmeshError);
      const listed = results.filter((r): r is [string, Listing] => !(r[1] instanceof PgmeshError));
      if (options.json) {
        printJson(Object.fromEntries(listed.map(([node, l]) => [node, l.tables])));
        for (const [, error] of failed) process.stderr.write(`pgmesh: ${error.message}\n`);
      } else {
        for (const [node, listing] of results) {
          if (listing instanceof PgmeshError) {
            process.stdout.write(`${node}: ${listing.message}\n`);
            continue;
          }
          process.stdout.write(`${node}: ${listing.tables.join(', ') || '(none)'}\n`);
          for (const s of listing.sequences) {
            const state = s.interleaved
              ? `steps by ${s.increment.replace(/^-/, '')}${s.increment.startsWith('-') ? ' down' : ''}, last value ${s.lastValue ?? 'none yet'}, ${s.valuesLeft ?? '?'} values left`
              : `NOT interleaved (increment ${s.increment}): run "pgmesh tables add" for its tables`;
            process.stdout.write(`  sequence ${s.sequence} (${s.feeds.join(', ')}): ${state}\n`);
          }
        }
      }
      if (failed.length > 0) process.exitCode = 1;
    });
}
