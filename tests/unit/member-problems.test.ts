/**
 * memberProblems: the slots and maxNodes that interleaved sequences need (each node its own slot within one maxNodes).
 * Without it, two nodes' residue classes overlap and they hand out the same keys.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memberProblems, type Member } from '../../src/cluster/sequences.ts';

const node = (name: string, slot: number, maxNodes: number, initialized = true): Member => ({ node: name, slot, maxNodes, initialized });

test('a cluster whose nodes share one maxNodes and have their own slots within it has no problem', () => {
  assert.deepEqual(memberProblems([node('n1', 1, 4), node('n2', 2, 4), node('n3', 4, 4, false)], 4), []);
});

test('a slot beyond maxNodes is refused, saying how many nodes the cluster holds', () => {
  const problems = memberProblems([node('n1', 1, 2), node('n2', 2, 2), node('n3', 3, 2, false)], 2);
  assert.equal(problems.length, 1);
  assert.match(problems[0] ?? '', /^node n3 would have slot 3, but the cluster's maxNodes is 2: .*holds at most 2 nodes/);
});

test('maxNodes changed in the configuration after init is refused, with the value to set back', () => {
  const problems = memberProblems([node('n1', 1, 8), node('n2', 2, 8)], 16);
  assert.deepEqual(problems.length, 1);
  assert.match(problems[0] ?? '', /the configuration says maxNodes 16, but n1, n2 were initialized with maxNodes 8: .*set maxNodes back to 8/);
});

test('nodes initialized with different maxNodes, or sharing a slot, are refused', () => {
  assert.match(memberProblems([node('n1', 1, 8), node('n2', 2, 16)]).join('\n'), /initialized with different maxNodes \(n1 with 8; n2 with 16\)/);
  assert.match(memberProblems([node('n1', 1, 8), node('n2', 1, 8)]).join('\n'), /nodes n1 and n2 both have slot 1/);
});
