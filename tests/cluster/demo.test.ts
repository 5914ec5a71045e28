/**
 * The demo the README starts (`pgmesh demo`): real embedded servers, real agent processes, a live view; Ctrl-C
 * stops it cleanly. The process gets SIGINT twice, as it does under `npm run demo` (the terminal's signal, then the
 * one npm passes on): it must still stop its agents and servers before it exits.
 * Without the code under test (signal handlers kept until everything is stopped), the second SIGINT kills the demo
 * halfway through stopping and leaves PostgreSQL servers running.
 * It runs from a folder outside the checkout, as `npx pgmesh demo` elsewhere does: without src/cli/self.ts (agents
 * started with `node --import tsx`, tsx looked up from the current folder) every agent dies with "Cannot find
 * package 'tsx'" and no link ever streams.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { eventually } from '../support/cluster.ts';
import { makeServerTempDir } from '../../src/embedded/server-user.ts';

const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
// The demo itself is loaded through this checkout's tsx (by path): only the agents it starts are under test.
const TSX = import.meta.resolve('tsx/esm');

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('the demo replicates, and two SIGINTs stop its agents and servers before it exits', { timeout: 180_000 }, async () => {
  const base = makeServerTempDir('pgmesh-demo-test-');
  const dir = join(base, 'demo');
  const child = spawn(process.execPath, ['--import', TSX, CLI, 'demo', '--nodes', '2', '--dir', dir, '--rate', '10'], {
    cwd: base,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group, with the agents it starts: a failed run is cleaned up whole (see finally).
    detached: true,
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const postmasters: number[] = [];
  try {
    // The live view: both links streaming, and the nodes identical after some writes.
    const screen = () => output.slice(output.lastIndexOf('pgmesh demo: '));
    await eventually(async () => /n1\s+n2\s+yes/.test(screen()) && /n2\s+n1\s+yes/.test(screen()) && /=> all nodes identical; [1-9]\d* writes so far/.test(screen()), {
      timeoutMs: 120_000,
      what: () => `the demo to show both links streaming and identical nodes after some writes; its output ends:\n${output.slice(-2000)}`,
      abort: () => (child.exitCode !== null ? `the demo exited (${child.exitCode}):\n${output.slice(-2000)}` : undefined),
    });
    // The screen fits an 80-column terminal.
    const last = screen().split('\n\n\n')[0] ?? '';
    const wide = last.split('\n').filter((line) => line.length > 80);
    assert.deepEqual(wide, [], `lines wider than 80 columns in:\n${last}`);
    for (const node of ['n1', 'n2']) {
      const pid = Number(readFileSync(join(dir, node, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
      assert.ok(running(pid), `${node}'s server runs`);
      postmasters.push(pid);
    }

    child.kill('SIGINT');
    await new Promise((resolve) => setTimeout(resolve, 200));
    child.kill('SIGINT');
    const code = await exited;
    assert.equal(code, 0, `the demo exits cleanly; its output ends:\n${output.slice(-1500)}`);
    assert.match(output, /stopping agents and servers \.\.\.\n(?:.*\n)*stopped\.\n/);
    for (const pid of postmasters) assert.equal(running(pid), false, `server process ${pid} is gone`);
    for (const node of ['n1', 'n2']) assert.equal(existsSync(join(dir, node, 'data', 'postmaster.pid')), false, `${node}'s server shut down cleanly`);
  } finally {
    // The demo and the agent processes it started, if a failure left them running.
    try {
      process.kill(-(child.pid as number), 'SIGKILL');
    } catch {
      // the group is gone: the demo stopped everything itself
    }
    for (const pid of postmasters) if (running(pid)) process.kill(pid, 'SIGQUIT');
    rmSync(base, { recursive: true, force: true });
  }
});
