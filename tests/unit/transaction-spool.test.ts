/**
 * TransactionSpool (src/stream/transaction-spool.ts): what is appended is read back in order, whole, across read
 * chunks of any size; a subtransaction's abort drops exactly its records (and its subtransactions') while the
 * relation descriptions sent inside it stay; the file is gone after discard.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { TransactionSpool } from '../../src/stream/transaction-spool.ts';

const TOP = 700;

function withDir(body: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'pgmesh-spool-test-'));
  try {
    body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function readAll(spool: TransactionSpool, chunkBytes?: number): string[] {
  const out: string[] = [];
  for (const messages of spool.read(chunkBytes)) for (const m of messages) out.push(m.toString());
  return out;
}

test('records come back in order, whatever the read chunk size; large records too', () => {
  withDir((dir) => {
    const spool = new TransactionSpool(dir, 'a', TOP);
    const records = ['one', '', 'x'.repeat(3000), 'two', 'y'.repeat(2 * 1024 * 1024), 'three'];
    for (const r of records) spool.append(TOP, Buffer.from(r));
    for (const chunk of [1, 5, 7, 4096, 1024 * 1024]) assert.deepEqual(readAll(spool, chunk), records, `chunk ${chunk}`);
    assert.equal(spool.count, records.length);
    spool.discard();
    assert.equal(existsSync(spool.path), false, 'the file is removed');
  });
});

test('a subtransaction abort drops its records and its subtransactions, and keeps the relations described in it', () => {
  withDir((dir) => {
    const spool = new TransactionSpool(dir, 'b', TOP);
    spool.append(TOP, Buffer.from('R1 v1'), 1);
    spool.append(TOP, Buffer.from('top 1'));
    spool.append(701, Buffer.from('R2 v1'), 2);
    spool.append(701, Buffer.from('sub 701 a'));
    spool.append(702, Buffer.from('sub 702 (inside 701)'));
    spool.append(702, Buffer.from('R1 v2'), 1);
    spool.append(701, Buffer.from('sub 701 b'));
    spool.abortSubtransaction(701);
    spool.append(703, Buffer.from('sub 703'));
    spool.abortSubtransaction(999); // nothing streamed for it
    spool.append(TOP, Buffer.from('top 2'));
    assert.deepEqual(readAll(spool, 3), ['R1 v1', 'top 1', 'R2 v1', 'R1 v2', 'sub 703', 'top 2']);
    assert.equal(spool.count, 6);
    spool.abortSubtransaction(703);
    assert.deepEqual(readAll(spool), ['R1 v1', 'top 1', 'R2 v1', 'R1 v2']);
    spool.discard();
  });
});

/**
 * Property: a random history of appends by nested subtransactions, releases and aborts (an abort only of an open
 * subtransaction, with a Stream Abort for it and each subtransaction under it, as the peer sends them) reads back
 * as a model that removes the records of every aborted subtransaction.
 */
test('property: reading back equals a model of appends and subtransaction aborts', () => {
  type Step = { kind: 'append'; size: number } | { kind: 'open' } | { kind: 'close' } | { kind: 'abort' };
  const step = fc.oneof(
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('append' as const), size: fc.integer({ min: 0, max: 5000 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('open' as const) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('close' as const) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('abort' as const) }) },
  );
  withDir((dir) => {
    let n = 0;
    fc.assert(
      fc.property(fc.array(step, { maxLength: 60 }), fc.integer({ min: 1, max: 9000 }), (steps: Step[], chunk) => {
        const spool = new TransactionSpool(dir, `p${n++}`, TOP);
        let next = TOP + 1;
        const open: number[] = []; // nested subtransactions, innermost last
        const model: { xid: number; text: string }[] = [];
        const dead = new Set<number>();
        const children = new Map<number, number[]>();
        try {
          for (const s of steps) {
            const current = open.at(-1) ?? TOP;
            if (s.kind === 'open') {
              const xid = next++;
              children.set(current, [...(children.get(current) ?? []), xid]);
              open.push(xid);
            } else if (s.kind === 'close') {
              open.pop(); // released: its records now belong to the parent's fate
            } else if (s.kind === 'abort') {
              const xid = open.pop();
              if (xid === undefined) continue;
              const doomed = [xid];
              for (let i = 0; i < doomed.length; i++) doomed.push(...(children.get(doomed[i] as number) ?? []));
              for (const d of doomed) dead.add(d);
              // The peer decodes the abort record, which lists the subtransaction and every subtransaction under
              // it, and sends a Stream Abort for each that was streamed: the inner ones first.
              for (const d of [...doomed].reverse()) spool.abortSubtransaction(d);
            } else {
              const text = `${current}:${model.length}:${'z'.repeat(s.size)}`;
              model.push({ xid: current, text });
              spool.append(current, Buffer.from(text));
            }
          }
          const expected = model.filter((r) => !dead.has(r.xid)).map((r) => r.text);
          assert.deepEqual(readAll(spool, chunk), expected);
          assert.equal(spool.count, expected.length);
        } finally {
          spool.discard();
        }
      }),
      { numRuns: 200 },
    );
  });
});
