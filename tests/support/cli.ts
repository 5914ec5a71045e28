/**
 * The real `pgmesh` command in a child process, as a user runs it, with a deadline: a run that outlives it is
 * killed and fails the test as a hang.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'src/cli/main.ts');

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly output: string;
}

export interface CliOptions {
  /** Passed as --config before the arguments. */
  readonly config?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
}

/** A pgmesh run in progress: the child (a test may signal it) and its end, with everything it printed. */
export interface CliProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
}

/** Starts `pgmesh args` and returns at once (for runs a test kills, or watches while they work). */
export function spawnPgmesh(args: readonly string[], options: Omit<CliOptions, 'timeoutMs'> = {}): CliProcess {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    // The user's own PostgreSQL and pgmesh settings must not leak into these runs.
    if (value !== undefined && !key.startsWith('PGMESH_') && !key.startsWith('PG')) env[key] = value;
  }
  const argv = [...(options.config ? ['--config', options.config] : []), ...args];
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...argv], { cwd: ROOT, env: { ...env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, exited };
}

/** Runs `pgmesh args` to its end, or fails the test as a hang after the deadline (the child is killed). */
export async function pgmesh(args: readonly string[], options: CliOptions = {}): Promise<CliResult> {
  const run = spawnPgmesh(args, options);
  const timeoutMs = options.timeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  const end = await Promise.race([run.exited, new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), timeoutMs)))]);
  clearTimeout(timer);
  if (end === 'hung') {
    run.child.kill('SIGKILL');
    const { stdout, stderr } = await run.exited;
    assert.fail(`pgmesh ${args.join(' ')} did not finish within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`);
  }
  return { code: end.code, stdout: end.stdout, stderr: end.stderr, output: end.stdout + end.stderr };
}

export function assertNoSecret(text: string, secrets: readonly string[], what: string): void {
  for (const secret of secrets) {
    assert.ok(!text.includes(secret) && !text.includes(encodeURIComponent(secret)), `${what} shows a password:\n${text}`);
  }
}
