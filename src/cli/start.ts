import type { Command } from 'commander';
import { Agent } from '../agent/agent.ts';
import { configFrom, loggerFor, type GlobalOptions } from './common.ts';

export function registerStart(program: Command): void {
  program
    .command('start')
    .description('run the agent of one node (streams from every peer and applies); stops cleanly on SIGINT/SIGTERM')
    .requiredOption('--node <name>', 'the node this agent serves')
    .action(async (options: { node: string }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const logger = loggerFor(config);
      const agent = await Agent.start(config, options.node, logger);
      await new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          logger.info({ signal }, 'stopping');
          resolve();
        };
        process.once('SIGINT', () => stop('SIGINT'));
        process.once('SIGTERM', () => stop('SIGTERM'));
      });
      await agent.stop();
      logger.info({}, 'stopped');
    });
}
