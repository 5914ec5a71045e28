/**
 * The Node.js versions pgmesh names must be ones its dependencies accept: package.json's engines, README's
 * "Node.js 20.10 or later" and every package in package-lock.json agree (npm ci warned EBADENGINE when a
 * dependency wanted Node 22 while README said 20).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const root = new URL('../../', import.meta.url);
const read = (path: string) => readFileSync(new URL(path, root), 'utf8');

type Version = readonly [number, number, number];

function parseVersion(text: string): Version {
  const [major = 0, minor = 0, patch = 0] = text.replace(/^v/, '').split('.').map((p) => (/^\d+$/.test(p) ? Number(p) : 0));
  return [major, minor, patch];
}

function compare(a: Version, b: Version): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

/** Whether a version satisfies an npm engines range of the forms found in the lock file: ">=X", "^X", "X.x", "a || b". */
function satisfies(version: Version, range: string): boolean {
  return range.split('||').some((alternative) => {
    const text = alternative.trim();
    const atLeast = /^>=\s*(\S+)$/.exec(text);
    if (atLeast) return compare(version, parseVersion(atLeast[1] ?? '')) >= 0;
    const caret = /^\^(\S+)$/.exec(text);
    if (caret) {
      const base = parseVersion(caret[1] ?? '');
      return version[0] === base[0] && compare(version, base) >= 0;
    }
    const wildcard = /^(\d+)(?:\.x)?$/.exec(text);
    if (wildcard) return version[0] === Number(wildcard[1]);
    assert.fail(`an engines range this test cannot read: "${text}"; teach satisfies() its form`);
  });
}

test('package.json, README and every locked dependency agree on the Node.js versions pgmesh runs on', () => {
  const engines = (JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node;
  const minimum = /^>=(\d+\.\d+)$/.exec(engines)?.[1];
  assert.ok(minimum, `package.json engines.node "${engines}" should read ">=major.minor"`);
  assert.ok(read('README.md').includes(`Node.js ${minimum} or later`), `README.md should say "Node.js ${minimum} or later", as package.json does`);

  const lock = JSON.parse(read('package-lock.json')) as { packages: Record<string, { engines?: { node?: string } | string[] }> };
  const refusing: string[] = [];
  for (const [path, entry] of Object.entries(lock.packages)) {
    const range = Array.isArray(entry.engines) ? undefined : entry.engines?.node;
    if (path === '' || range === undefined) continue;
    for (const version of [parseVersion(minimum), parseVersion(process.version)]) {
      if (!satisfies(version, range)) refusing.push(`${path.replace(/^.*node_modules\//, '')} wants node ${range}, not ${version.join('.')}`);
    }
  }
  assert.deepEqual(refusing, []);
});
