/**
 * The embedded servers behind the demo and the tests, where people clone: a checkout inside a folder the `postgres`
 * user cannot enter (root's home is mode 700), run as root. Without server-user.ts the servers, which run as
 * `postgres`, can reach neither the binaries under node_modules nor a data folder inside the checkout, and the demo
 * failed with "initdb for n1 failed:" and nothing after it. Failures to start a server must show their real reason.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EmbeddedServer } from '../../src/embedded/embedded-server.ts';
import { binaryPackage } from '../../src/embedded/postgres-binaries.ts';
import { makeServerTempDir } from '../../src/embedded/server-user.ts';
import { PG_MAJOR } from '../support/cluster.ts';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

/**
 * A copy of the checkout in a private folder: its own src/ and the PostgreSQL binaries' package copied (so they are
 * out of the server user's reach, as in a real clone), the other packages linked to this checkout's node_modules.
 */
function privateCheckout(root: string): string {
  const checkout = join(root, 'pgmesh');
  mkdirSync(checkout);
  for (const file of ['package.json', 'tsconfig.json']) cpSync(join(REPO, file), join(checkout, file));
  cpSync(join(REPO, 'src'), join(checkout, 'src'), { recursive: true });
  const modules = join(checkout, 'node_modules');
  mkdirSync(modules);
  const binaries = binaryPackage(PG_MAJOR);
  for (const entry of readdirSync(join(REPO, 'node_modules'))) {
    if (entry === binaries.split('/')[0]) continue;
    symlinkSync(join(REPO, 'node_modules', entry), join(modules, entry));
  }
  mkdirSync(dirname(join(modules, binaries)), { recursive: true });
  cpSync(join(REPO, 'node_modules', binaries), join(modules, binaries), { recursive: true, verbatimSymlinks: true });
  return checkout;
}

test('the demo runs from a checkout inside a folder only its owner may enter', { timeout: 240_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'pgmesh-private-'));
  chmodSync(root, 0o700);
  // A temporary folder of its own, so that the binaries are copied afresh rather than found from an earlier run.
  const temp = makeServerTempDir('pgmesh-private-tmp-');
  try {
    const checkout = privateCheckout(root);
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'demo', '--nodes', '2', '--duration', '6', '--pg', String(PG_MAJOR)], {
      cwd: checkout,
      env: { ...process.env, TMPDIR: temp },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    assert.equal(code, 0, `the demo exits 0; its output ends:\n${output.slice(-3000)}`);
    assert.match(output, /=> all nodes identical; [1-9]\d* writes so far/, output.slice(-3000));
    const left = readdirSync(temp);
    assert.deepEqual(left.filter((name) => name.startsWith('pgmesh-demo-')), [], 'the servers\' folders are removed at the end');
    if (userInfo().uid === 0) {
      assert.match(output, /the postgres user cannot enter .*\.pgmesh\/demo/);
      assert.ok(left.some((name) => name.startsWith(`pgmesh-pg${PG_MAJOR}-`)), `the binaries were copied where the postgres user can run them: ${left.join(', ')}`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
    rmSync(temp, { recursive: true, force: true });
  }
});

test('a failed initdb reports what initdb printed', { timeout: 60_000 }, async () => {
  const baseDir = makeServerTempDir('pgmesh-test-');
  try {
    // initdb refuses a data folder that is not empty.
    mkdirSync(join(baseDir, 'n1', 'data'), { recursive: true });
    writeFileSync(join(baseDir, 'n1', 'data', 'something'), 'x');
    await assert.rejects(EmbeddedServer.create({ name: 'n1', baseDir, major: PG_MAJOR, password: 'pw' }), (error: Error) => {
      assert.match(error.message, /^initdb for n1 failed/);
      assert.match(error.message, /exists but is not empty/);
      return true;
    });
  } finally {
    rmSync(baseDir, { recursive: true, force: true });
  }
});

test('a server that will not start reports the end of its log', { timeout: 120_000 }, async () => {
  const baseDir = makeServerTempDir('pgmesh-test-');
  try {
    const server = await EmbeddedServer.create({ name: 'n1', baseDir, major: PG_MAJOR, password: 'pw', settings: { shared_buffers: 'plenty' } });
    await assert.rejects(server.start(), (error: Error) => {
      assert.match(error.message, /PostgreSQL n1 exited at start/);
      assert.match(error.message, /invalid value for parameter "shared_buffers": "plenty"/);
      return true;
    });
    assert.equal(existsSync(join(server.dataDir, 'postmaster.pid')), false);
  } finally {
    rmSync(baseDir, { recursive: true, force: true });
  }
});
