/**
 * Topology: none (files only). Scenario: `node add`/`node remove` rewrite the configuration, which holds connection
 * strings, while another local user has planted a symbolic link where the temporary file would go (the old name was
 * "<config>.pgmesh-<pid>.tmp", guessable), or made the configuration itself a link.
 * Without the code under test: the planted link received the whole configuration (passwords included) in the file
 * it pointed to, and the configuration became a new file of mode 644 instead of keeping its 600.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addNodeToConfigFile, removeNodeFromConfigFile } from '../../src/config/config-file.ts';

const dir = mkdtempSync(join(tmpdir(), 'pgmesh-config-file-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const SECRET = 'config-Secret-pw';

function configFile(name: string, mode: number): string {
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify({ nodes: [{ name: 'n1', dsn: `postgres://app:${SECRET}@db1/app` }] }), { mode });
  return path;
}

test('a link planted at any temporary name the rewrite could use receives nothing; the file keeps its mode', () => {
  const path = configFile('cluster.json', 0o600);
  const stolen = join(dir, 'stolen');
  // Every name the old code or a guess could use: the pid-based one for a range of pids.
  for (let pid = process.pid - 50; pid <= process.pid + 50; pid++) symlinkSync(stolen, `${path}.pgmesh-${pid}.tmp`);
  assert.equal(addNodeToConfigFile(path, { name: 'n2', dsn: 'postgres://app@db2/app' }), true);
  assert.equal(existsSync(stolen), false, 'the planted link received the configuration');
  assert.equal(lstatSync(path).isFile(), true);
  assert.equal(statSync(path).mode & 0o777, 0o600);
  assert.deepEqual(
    (JSON.parse(readFileSync(path, 'utf8')) as { nodes: { name: string }[] }).nodes.map((n) => n.name),
    ['n1', 'n2'],
  );
  // No temporary file is left behind.
  assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.tmp') && !lstatSync(join(dir, f)).isSymbolicLink()), []);
  // A wider mode chosen by the operator is kept too (not the umask's).
  const shared = configFile('shared.json', 0o640);
  assert.equal(removeNodeFromConfigFile(shared, 'n1'), true);
  assert.equal(statSync(shared).mode & 0o777, 0o640);
});

test('a configuration that is a symbolic link is not rewritten (the link would be replaced by a file)', () => {
  const real = configFile('real.json', 0o600);
  const link = join(dir, 'link.json');
  symlinkSync(real, link);
  assert.throws(() => addNodeToConfigFile(link, { name: 'n2', dsn: 'postgres://app@db2/app' }), /is a symbolic link, which pgmesh does not rewrite/);
  assert.equal(lstatSync(link).isSymbolicLink(), true);
  assert.ok(!readFileSync(real, 'utf8').includes('n2'));
});
