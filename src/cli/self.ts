/**
 * How pgmesh runs its own command again in a child process (the demo's agents). Installed, this file is compiled
 * JavaScript in dist/ and the child is plain `node dist/cli/main.js`: no tsx at run time. From the sources (a
 * checkout, the tests) it is a .ts file run through tsx, and the child needs tsx too: its loader is resolved from
 * this file, never from the current folder, so a demo started from any folder finds it.
 */
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

export interface SelfCommand {
  /** The node executable. */
  readonly command: string;
  /** Node's own options, then the CLI's entry point; the pgmesh arguments go after these. */
  readonly args: readonly string[];
}

export function pgmeshCommand(): SelfCommand {
  const fromSources = import.meta.url.endsWith('.ts');
  const main = fileURLToPath(new URL(fromSources ? './main.ts' : './main.js', import.meta.url));
  if (!fromSources) return { command: process.execPath, args: [main] };
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm')).href;
  return { command: process.execPath, args: ['--import', tsx, main] };
}

/** The version in package.json (two folders up, from src/cli/ as from dist/cli/). */
export function pgmeshVersion(): string {
  const pkg = createRequire(import.meta.url)('../../package.json') as { version?: string };
  return pkg.version ?? 'unknown';
}
