/**
 * node add's progress on stderr (a bar on a terminal, plain lines otherwise) and how many tables it copies at once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeProgress, progressBar, progressReporter } from '../../src/cli/progress.ts';
import { copyParallelism } from '../../src/membership/copy-tables.ts';
import type { JoinProgress } from '../../src/membership/membership-state.ts';

const half: JoinProgress = { phase: 'copying', tablesDone: 1, tablesTotal: 2, rows: 500_000, bytes: 50 * 1024 * 1024, rowsEstimated: 1_000_000 };

test('progress: rows, bytes, MB/s, rows/s, ETA and tables', () => {
  const { fraction, text } = describeProgress(half, 10_000);
  assert.equal(fraction, 0.5);
  assert.equal(text, '500,000/~1,000,000 rows, 50.0 MB, 5.0 MB/s, 50,000 rows/s, ETA 10s, tables 1/2');
});

test('progress: without an estimate (a table never analyzed on the source) there is no bar and no ETA', () => {
  const { fraction, text } = describeProgress({ ...half, rowsEstimated: undefined }, 10_000);
  assert.equal(fraction, undefined);
  assert.doesNotMatch(text, /ETA/);
  assert.doesNotMatch(progressBar({ ...half, rowsEstimated: undefined }, 10_000, 100), /\[/);
});

test('progress: the bar fits the terminal width', () => {
  const line = progressBar(half, 10_000, 60);
  assert.equal(line.length, 60);
  assert.match(line, /^\[##########----------\]  50% /);
});

test('progress: a terminal gets the bar redrawn in place, a pipe a plain line at most every 10 s', () => {
  let clock = 0;
  const tty: string[] = [];
  const onTty = progressReporter({ isTTY: true, columns: 100, write: (t) => tty.push(t) }, () => clock);
  const plain: string[] = [];
  const onPipe = progressReporter({ isTTY: false, columns: undefined, write: (t) => plain.push(t) }, () => clock);
  for (clock = 0; clock <= 20_000; clock += 1000) {
    onTty.onProgress({ ...half, tablesDone: 0 });
    onPipe.onProgress({ ...half, tablesDone: 0 });
  }
  onTty.finish();
  onPipe.finish();
  assert.equal(tty.length, 22);
  assert.ok(tty.slice(0, -1).every((t) => t.startsWith('\r') && !t.includes('\n')));
  assert.equal(tty.at(-1), '\n');
  assert.deepEqual(plain.map((l) => l.endsWith('\n') && !l.includes('\r')), [true, true, true]);
  assert.match(plain[0] ?? '', /^node add: copying: 500,000\/~1,000,000 rows/);
});

test('copy parallelism: from tables and cores by default, at most 2, never more than the tables', () => {
  assert.equal(copyParallelism(0, 10, 8), 2);
  assert.equal(copyParallelism(0, 10, 1), 1);
  assert.equal(copyParallelism(0, 1, 8), 1);
  assert.equal(copyParallelism(1, 10, 8), 1);
  assert.equal(copyParallelism(2, 3, 1), 2);
});
