#!/usr/bin/env node
// Runs the test files under the given folders (default: all) with node's test runner, TypeScript through tsx.
// Node 20's --test does not expand globs, so the files are listed here.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const roots = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['tests/unit', 'tests/property', 'tests/integration', 'tests/cluster'];
const files = [];
function walk(path) {
  const stat = statSync(path, { throwIfNoEntry: false });
  if (!stat) return;
  if (stat.isFile()) {
    if (path.endsWith('.test.ts')) files.push(path);
    return;
  }
  for (const entry of readdirSync(path).sort()) walk(join(path, entry));
}
for (const root of roots) walk(root);
if (files.length === 0) {
  console.error(`no test files under ${roots.join(', ')}`);
  process.exit(1);
}
// Cluster tests start several servers each; on a 2-core machine two files at a time is the most that helps.
const concurrency = process.env.PGMESH_TEST_CONCURRENCY ?? '2';
const result = spawnSync(
  process.execPath,
  // --test-timeout bounds a whole file here (node runs each file as one test of the root): every cluster test bounds
  // itself with its own timeout, and a file of several node add and kill scenarios takes more than 10 minutes on 2
  // busy cores, so the file's bound only catches a hang.
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, '--test-timeout=1800000', ...files],
  { stdio: 'inherit' },
);
process.exit(result.status ?? 1);
