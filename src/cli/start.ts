import type { Command } from 'commander';
import { Agent } from '../agent/agent.ts';
import { errorMessage } from '../core/errors.ts';
import { agentLoggerFor, configFrom, type GlobalOptions } from './common.ts';

export function registerStart(program: Command): void {
  program
    .command('start')
    .description('run the agent of one node (streams from every peer and applies); stops cleanly on SIGINT/SIGTERM; SIGHUP reloads the configuration (nodes added or removed)')
    .requiredOption('--node <name>', 'the node this agent serves')
    // The agent's output is its log (JSON lines on stderr); --json makes a refusal to start JSON on stdout too.
    .option('--json', 'an error that stops the agent from starting as JSON on stdout')
    .action(async (options: { node: string; json?: boolean }, command: Command) => {
      const config = configFrom(command.optsWithGlobals<GlobalOptions>());
      const logger = agentLoggerFor(config);
      const agent = await Agent.start(config, options.node, logger);
      // Listening until the agent has stopped: a second signal (a wrapper such as npm or tsx passes one on) must
      // not end the process halfway through stopping.
      let stopping = false;
      let requested: () => void = () => undefined;
      const onSignal = (signal: NodeJS.Signals) => {
        logger.info({ signal }, stopping ? 'already stopping' : 'stopping');
        stopping = true;
        requested();
      };
      // SIGHUP: read the configuration again and stream from the nodes it adds, stop for those it drops.
      const onReload = () => {
        let next;
        try {
          next = configFrom(command.optsWithGlobals<GlobalOptions>());
        } catch (error) {
          logger.error({ err: errorMessage(error) }, 'configuration not reloaded');
          return;
        }
        agent.reload(next).catch((error: unknown) => logger.error({ err: errorMessage(error) }, 'configuration not reloaded'));
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      process.on('SIGHUP', onReload);
      await new Promise<void>((resolve) => {
        requested = resolve;
      });
      await agent.stop();
      logger.info({}, 'stopped');
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('SIGHUP', onReload);
    });
}
