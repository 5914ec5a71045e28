/**
 * assessMembership (src/membership/membership-status.ts): which nodes need a resync, from facts read on every node.
 * Without the code under test: status says nothing of invalidated slots, restored nodes or leftover slots; a node
 * that is down would hide the slot invalidated for it; a joining node would be reported as needing a resync.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assessMembership, type MemberFacts } from '../../src/membership/membership-status.ts';
import type { SlotHealth } from '../../src/membership/slot-health.ts';
import { slotSubscriber } from '../../src/cluster/link-names.ts';

function slot(name: string, extra: Partial<SlotHealth> = {}): SlotHealth {
  return { slot: name, subscriber: slotSubscriber(name), active: true, walStatus: 'reserved', invalidated: null, confirmedFlush: '0/100', retainedBytes: 0, ...extra };
}

/** A member linked with every other node of `names`, caught up, nothing odd. */
function member(name: string, names: readonly string[], extra: Partial<MemberFacts> = {}): MemberFacts {
  const peers = names.filter((n) => n !== name);
  return {
    name,
    membership: undefined,
    walLsn: '0/1000',
    slots: peers.map((p) => slot(`pgmesh_16384_${p}`)),
    progress: new Map(peers.map((p) => [p, '0/200'])),
    acked: new Map(peers.map((p) => [p, { lsn: '0/200', known: true }])),
    ...extra,
  };
}

const NAMES = ['n1', 'n2', 'n3'];
const reasons = (facts: MemberFacts[], names = NAMES) =>
  Object.fromEntries([...assessMembership(facts, names).resync].map(([node, list]) => [node, list.map((r) => `${r.kind} ${r.peer}`)]));

test('a healthy cluster: nobody needs a resync, no leftover slot', () => {
  const facts = NAMES.map((n) => member(n, NAMES));
  assert.deepEqual(reasons(facts), {});
  assert.deepEqual(assessMembership(facts, NAMES).leftoverSlots, []);
});

test('a slot invalidated on n1 for n3 is reported for n3, also while n3 is down', () => {
  const n1 = member('n1', NAMES, { slots: [slot('pgmesh_n2'), slot('pgmesh_n3', { walStatus: 'lost', invalidated: 'wal_removed', active: false })] });
  assert.deepEqual(reasons([n1, member('n2', NAMES), member('n3', NAMES)]), { n3: ['slot_invalidated n1'] });
  assert.deepEqual(reasons([n1, member('n2', NAMES)]), { n3: ['slot_invalidated n1'] }, 'n3 unreachable');
});

test('a slot confirmed past what the node holds: restored; a keepalive record covers it', () => {
  const n1 = member('n1', NAMES, { slots: [slot('pgmesh_n2'), slot('pgmesh_n3', { confirmedFlush: '0/300' })] });
  assert.deepEqual(reasons([n1, member('n2', NAMES), member('n3', NAMES)]), { n3: ['restored n1'] });
  const recorded = member('n3', NAMES, { acked: new Map([['n1', { lsn: '0/300', known: true }], ['n2', { lsn: '0/200', known: true }]]) });
  assert.deepEqual(reasons([n1, member('n2', NAMES), recorded]), {}, 'acknowledged up to its record: not restored');
  const fresh = member('n3', NAMES, { acked: new Map([['n1', { lsn: '0/0', known: false }], ['n2', { lsn: '0/0', known: false }]]) });
  assert.deepEqual(reasons([n1, member('n2', NAMES), fresh]), {}, 'nothing acknowledged yet (a new link): not judged');
});

test("a peer applied a node's WAL further than the node's WAL reaches: restored", () => {
  const n2 = member('n2', NAMES, { progress: new Map([['n1', '0/200'], ['n3', '0/5000']]) });
  assert.deepEqual(reasons([member('n1', NAMES), n2, member('n3', NAMES)]), { n3: ['restored n2'] });
});

test('a joining node is not judged, and the slots held for it (or for a node not configured) are leftovers', () => {
  const n1 = member('n1', ['n1', 'n2', 'n3', 'n4'], { slots: [slot('pgmesh_n2'), slot('pgmesh_n3', { active: false }), slot('pgmesh_n4', { active: false })] });
  const n3 = member('n3', NAMES, { membership: 'joining', progress: new Map(), acked: new Map() });
  const assessed = assessMembership([n1, member('n2', ['n1', 'n2']), n3], NAMES);
  assert.deepEqual([...assessed.resync.keys()], []);
  assert.deepEqual(assessed.leftoverSlots.map((l) => `${l.node} ${l.slot}`), ['n1 pgmesh_n3', 'n1 pgmesh_n4']);
  assert.match(assessed.leftoverSlots[1]?.detail ?? '', /n4, which is not in the configuration/);
});

test("a slot missing on a peer that the node streams from is reported for that node", () => {
  const n1 = member('n1', NAMES, { slots: [slot('pgmesh_n2')] });
  assert.deepEqual(reasons([n1, member('n2', NAMES), member('n3', NAMES)]), { n3: ['slot_missing n1'] });
});
