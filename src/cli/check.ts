import type { Command } from 'commander';
import { errorMessage } from '../core/errors.ts';
import { checkServerFacts, formatProblems, readServerFacts, serverWarnings } from '../cluster/server-checks.ts';
import { agentRoleProblems } from '../cluster/agent-privileges.ts';
import { connectionError, openSql } from '../pg/connect.ts';
import { configFrom, loggerFor, printJson, type GlobalOptions } from './common.ts';

export function registerCheck(program: Command): void {
  program
    .command('check')
    .description('check that every node can be reached, has the server settings pgmesh needs, and that its role has the privileges the agent needs (changes nothing)')
    .option('--json', 'print as JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      // Every node at once: with several nodes down, the wait is one connect timeout, not one per node.
      const report = await Promise.all(
        config.nodes.map(async (node): Promise<{ node: string; ok: boolean; problems: string[]; warnings: string[] }> => {
          const sql = openSql(node.dsn, { node: node.name, applicationName: 'pgmesh check', logger: loggerFor(config), connectTimeoutS: 5 });
          try {
            const facts = await readServerFacts(sql);
            const settings = checkServerFacts(facts, config.nodes.length - 1);
            const problems = [
              ...(settings.length ? formatProblems(node.name, settings).split('\n') : []),
              ...(await agentRoleProblems(sql, node.name, facts)),
            ];
            return {
              node: node.name,
              ok: problems.length === 0,
              problems,
              warnings: serverWarnings(facts),
            };
          } catch (error) {
            return { node: node.name, ok: false, problems: [errorMessage(connectionError(error, node.name, node.dsn))], warnings: [] };
          } finally {
            await sql.end({ timeout: 1 }).catch(() => undefined);
          }
        }),
      );
      if (options.json) printJson(report);
      else {
        for (const r of report) {
          process.stdout.write(r.ok ? `${r.node}: ok\n` : `${r.problems.map((p) => `${r.node}: ${p}`).join('\n')}\n`);
          for (const w of r.warnings) process.stdout.write(`${r.node}: warning: ${w}\n`);
        }
      }
      if (report.some((r) => !r.ok)) process.exitCode = 1;
    });
}
