/**
 * Slot and origin names (src/cluster/link-names.ts): unique per server through the database OID, within PostgreSQL's
 * 63 bytes for the longest node name and OID, and read back to their node under both namings.
 * Without the code under test: names were pgmesh_<node>, the same in every database of a server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { originNameFor, replayOriginNameFor, slotNameFor, slotSubscriber } from '../../src/cluster/link-names.ts';

const LONGEST_NODE = `n${'x'.repeat(39)}`;
const LARGEST_OID = '4294967295';

test('names carry the database OID and fit in 63 bytes for the longest node name and OID', () => {
  assert.equal(slotNameFor('16384', 'n2'), 'pgmesh_16384_n2');
  assert.equal(originNameFor('16384', 'n1'), 'pgmesh_16384_n1');
  assert.equal(replayOriginNameFor('16384', 'n1'), 'pgmeshr_16384_n1');
  assert.notEqual(slotNameFor('16384', 'n3'), slotNameFor('16385', 'n3'), 'two databases of a server: two slots for n3');
  for (const name of [slotNameFor(LARGEST_OID, LONGEST_NODE), originNameFor(LARGEST_OID, LONGEST_NODE), replayOriginNameFor(LARGEST_OID, LONGEST_NODE)]) {
    assert.ok(Buffer.byteLength(name) <= 63, `${name} is ${Buffer.byteLength(name)} bytes`);
  }
});

test('a slot reads as its subscriber under both namings; other slots as none', () => {
  assert.equal(slotSubscriber('pgmesh_16384_n2'), 'n2');
  assert.equal(slotSubscriber('pgmesh_n2'), 'n2', 'a link made before this release');
  assert.equal(slotSubscriber('pgmesh_16384_a_1_b'), 'a_1_b');
  assert.equal(slotSubscriber('pgmesh_a_16384_b'), 'a_16384_b', 'an old name of a node with digits in it');
  assert.equal(slotSubscriber(slotNameFor(LARGEST_OID, LONGEST_NODE)), LONGEST_NODE);
  assert.equal(slotSubscriber('pgmesh__versions_16384'), null, "the version horizon's slot");
  assert.equal(slotSubscriber('pgmesh_16384_'), null);
  assert.equal(slotSubscriber('other_n2'), null);
  assert.equal(slotSubscriber('pgmesh_N2'), null);
});
