/** Runs the real `pgmesh` CLI in a child process, as a user would, with a deadline (a hang fails the test). */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export async function runCli(args: readonly string[], options: { config: string; timeoutMs?: number }): Promise<CliResult> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    // The user's own PostgreSQL and pgmesh settings must not leak into these runs.
    if (value !== undefined && !key.startsWith('PGMESH_') && !key.startsWith('PG')) env[key] = value;
  }
  const argv = ['--config', options.config, ...args];
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...argv], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timeoutMs = options.timeoutMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c))),
    new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), timeoutMs))),
  ]);
  clearTimeout(timer);
  if (code === 'hung') {
    child.kill('SIGKILL');
    assert.fail(`pgmesh ${argv.join(' ')} did not finish within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`);
  }
  return { code, stdout, stderr };
}
