/**
 * rowOps turns an update that left an out-of-line (TOAST) value unchanged into a whole-row write when the peer sent
 * its whole old row (REPLICA IDENTITY FULL), and names the columns taken from it; without a whole old row it stays a
 * partial update. The cluster tests (toast-convergence.test.ts) show what each does on real servers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bindRelation, type LocalColumn, type LocalRelation } from '../../src/apply/local-relation.ts';
import { rowOps } from '../../src/apply/row-ops.ts';
import type { RelationMessage, Tuple } from '../../src/protocol/messages.ts';

const columns: LocalColumn[] = [
  { name: 'id', type: 'integer', identityAlways: false },
  { name: 'n', type: 'integer', identityAlways: false },
  { name: 'note', type: 'text', identityAlways: false },
  { name: 'body', type: 'text', identityAlways: false },
];

function binding(identity: RelationMessage['replicaIdentity'], deltaColumns: string[] = []) {
  const local: LocalRelation = {
    oid: 16384,
    schema: 'public',
    name: 'doc',
    qualified: '"public"."doc"',
    columns: new Map(columns.map((c) => [c.name, c])),
    primaryKey: ['id'],
    conflictPolicy: 'last_update_wins',
    exceptionPolicy: 'skip_change',
    deltaColumns,
    deferredUnique: [],
    uniqueIndexes: [],
  };
  const remote: RelationMessage = {
    tag: 'relation',
    relationOid: 1,
    schema: 'public',
    name: 'doc',
    replicaIdentity: identity,
    columns: columns.map((c, i) => ({ isKey: i === 0, name: c.name, typeOid: c.type === 'integer' ? 23 : 25, typeModifier: -1 })),
  };
  return bindRelation(remote, local, { peer: 'n1', node: 'n2' });
}

const text = (value: string) => ({ kind: 'text' as const, value });
const newRow: Tuple = [text('1'), text('5'), text('new note'), { kind: 'unchanged' }];
const oldRow: Tuple = [text('1'), text('3'), text('old note'), text('big value')];

test('an update with an unchanged out-of-line value and the whole old row is a whole-row upsert', () => {
  const b = binding('f');
  const ops = rowOps({ kind: 'update', relation: b.remote, oldTuple: oldRow, newTuple: newRow }, b);
  assert.equal(ops.length, 1);
  assert.equal(ops[0]?.kind, 'upsert');
  assert.deepEqual(ops[0]?.values, ['1', '5', 'new note', 'big value', 'u']);
  assert.deepEqual(ops[0]?.unchangedPositions, [3]);
});

test('a delta table takes the unchanged value from the old row too', () => {
  const b = binding('f', ['n']);
  const ops = rowOps({ kind: 'update', relation: b.remote, oldTuple: oldRow, newTuple: newRow }, b);
  assert.equal(ops[0]?.kind, 'delta_update');
  // The key, every column's new value (the unchanged one from the old row), the delta column's old value.
  assert.deepEqual(ops[0]?.values, ['1', '1', '5', 'new note', 'big value', '3']);
  assert.deepEqual(ops[0]?.unchangedPositions, [3]);
});

test('without a whole old row (the peer\'s table is not REPLICA IDENTITY FULL) the update stays partial', () => {
  const b = binding('d');
  const ops = rowOps({ kind: 'update', relation: b.remote, oldTuple: undefined, newTuple: newRow }, b);
  assert.equal(ops[0]?.kind, 'partial_update');
  assert.deepEqual(ops[0]?.valuePositions, [0, 1, 2]);
  assert.deepEqual(ops[0]?.unchangedPositions, []);
});

test('an update that sent every value is a plain upsert with nothing taken from the old row', () => {
  const b = binding('f');
  const ops = rowOps({ kind: 'update', relation: b.remote, oldTuple: oldRow, newTuple: [text('1'), text('5'), text('n'), text('other')] }, b);
  assert.deepEqual(ops[0]?.values, ['1', '5', 'n', 'other', 'u']);
  assert.deepEqual(ops[0]?.unchangedPositions, []);
});
