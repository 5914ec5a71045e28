import type { Command } from 'commander';
import { runDemo } from './demo-cluster.ts';
import { parseMajor } from '../embedded/postgres-binaries.ts';
import { createLogger } from '../core/pino-logger.ts';
import { decimal, seconds, wholeNumber } from './parsers.ts';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run a local cluster on embedded PostgreSQL with a live view (no setup needed); Ctrl-C stops it')
    .option('--nodes <n>', 'how many nodes (2-5)', wholeNumber(2, 5), 3)
    .option('--pg <major>', 'PostgreSQL major: 16, 17 or 18 (default: $PGMESH_PG_MAJOR or 17)')
    .option('--dir <path>', 'where the servers live (wiped at start)', '.pgmesh/demo')
    .option('--duration <seconds>', 'stop by itself after this long (0 = until Ctrl-C)', seconds(0, 86_400), 0)
    // The live view is for people; --json makes an error that ends the demo JSON on stdout, as for every command.
    .option('--json', 'an error that ends the demo as JSON on stdout')
    .option('--rate <writes/s>', 'writes per second, spread over the nodes (0.2-100)', decimal(0.2, 100, 'a number of writes per second'), 5)
    .action(async (options: { nodes: number; pg?: string; dir: string; duration: number; rate: number }) => {
      const nodes = options.nodes;
      const major = options.pg ? parseMajor(options.pg, '--pg') : parseMajor(process.env.PGMESH_PG_MAJOR, 'PGMESH_PG_MAJOR');
      // A closed stdout (the demo piped into `head`) stops the demo as Ctrl-C would, servers included.
      process.stdout.on('error', () => process.kill(process.pid, 'SIGTERM'));
      await runDemo({
        nodes,
        major,
        dir: options.dir,
        durationS: options.duration,
        writesPerSecond: options.rate,
        logger: createLogger('warn'),
        out: (text) => process.stdout.write(text),
        interactive: process.stdout.isTTY === true,
      });
    });
}
