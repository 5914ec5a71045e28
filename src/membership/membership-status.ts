/**
 * What `status` says about membership, from facts read on every node: which nodes need a resync and why, slots that
 * hold WAL for a node that is not (yet) a member (what a failed node add leaves), and the copy of a joining node.
 *
 * A node L needs a resync (node resync) when it can no longer reach the cluster's state by streaming:
 * - slot_invalidated: the slot for L on a peer P was invalidated (it fell behind max_slot_wal_keep_size): L has lost
 *   part of P's changes;
 * - slot_missing: L is linked from P, but P has no slot for L: L receives nothing more of P's;
 * - restored: P's slot for L says L acknowledged P's changes further than L holds them (its progress and its recorded
 *   keepalive position): L lost state it had acknowledged, restored from a backup; or P has applied L's own changes
 *   up to a WAL position that L has not reached: L's WAL went back.
 * Nodes that are joining or resyncing are left out (their copy is under way or must be run again), and so are
 * links from such nodes.
 */
import { parseLsn } from '../core/lsn.ts';
import type { MembershipState } from './membership-state.ts';
import type { SlotHealth } from './slot-health.ts';

export type ResyncReasonKind = 'slot_invalidated' | 'slot_missing' | 'restored';

export interface ResyncReason {
  readonly kind: ResyncReasonKind;
  /** The peer whose changes the node lacks (slot_*), or that received more of the node's than it still has (restored). */
  readonly peer: string;
  /** The same in words, for people. */
  readonly detail: string;
}

export interface LeftoverSlot {
  /** The node the slot is on. */
  readonly node: string;
  readonly slot: string;
  /** The node the slot is for. */
  readonly forNode: string;
  readonly retainedBytes: number | null;
  readonly detail: string;
}

/** What one reachable node says; `membership` undefined for a node made by cluster create (a member). */
export interface MemberFacts {
  readonly name: string;
  readonly membership: MembershipState | undefined;
  /** pg_current_wal_insert_lsn() as text. */
  readonly walLsn: string;
  readonly slots: readonly SlotHealth[];
  /** The peers this node streams from, and how far it has applied each (end LSN as text). */
  readonly progress: ReadonlyMap<string, string>;
  /**
   * How far it may have acknowledged each peer (its progress or its recorded keepalive position: slot-health.ts,
   * ackFloor), read after every slot; `known` false while it has acknowledged nothing.
   */
  readonly acked: ReadonlyMap<string, { readonly lsn: string; readonly known: boolean }>;
}

export interface MembershipAssessment {
  readonly resync: ReadonlyMap<string, readonly ResyncReason[]>;
  readonly leftoverSlots: readonly LeftoverSlot[];
}

/** `configured`: every node name of the configuration (reachable or not). */
export function assessMembership(facts: readonly MemberFacts[], configured: readonly string[]): MembershipAssessment {
  const byName = new Map(facts.map((f) => [f.name, f]));
  const settled = (f: MemberFacts) => f.membership === undefined || f.membership === 'member';
  const resync = new Map<string, ResyncReason[]>();
  const add = (node: string, reason: ResyncReason) => resync.set(node, [...(resync.get(node) ?? []), reason]);

  for (const local of facts) {
    if (!settled(local)) continue;
    for (const [peer, endLsn] of local.progress) {
      const publisher = byName.get(peer);
      if (!publisher || !settled(publisher)) continue;
      // Restored: this node applied the peer's WAL further than the peer's WAL now reaches.
      if (parseLsn(endLsn) > parseLsn(publisher.walLsn)) {
        add(peer, {
          kind: 'restored',
          peer: local.name,
          detail: `${local.name} has applied ${peer}'s changes up to ${endLsn}, past ${peer}'s own WAL position ${publisher.walLsn}: ${peer} was restored from an older backup`,
        });
      }
    }
  }
  for (const local of facts) {
    if (!settled(local)) continue;
    for (const [peer, acked] of local.acked) {
      const publisher = byName.get(peer);
      const slot = publisher?.slots.find((s) => s.subscriber === local.name);
      if (!publisher || !settled(publisher) || !acked.known || !slot?.confirmedFlush || slot.invalidated !== null) continue;
      if (parseLsn(slot.confirmedFlush) > parseLsn(acked.lsn)) {
        add(local.name, {
          kind: 'restored',
          peer,
          detail: `slot ${slot.slot} on ${peer} says ${local.name} acknowledged ${peer}'s changes up to ${slot.confirmedFlush}, but ${local.name} holds them only up to ${acked.lsn}: ${local.name} was restored from a backup`,
        });
      }
    }
  }
  const restored = new Set(resync.keys());
  for (const publisher of facts) {
    if (!settled(publisher) || restored.has(publisher.name)) continue;
    const slots = new Map(publisher.slots.map((s) => [s.subscriber, s]));
    // Every configured node, reachable or not: a node that is down is the usual one whose slot was invalidated.
    for (const name of configured) {
      if (name === publisher.name) continue;
      const local = byName.get(name);
      if (local && !settled(local)) continue;
      const slot = slots.get(name);
      if (!slot) {
        // Missing counts only where the node says it streams from the publisher (unknown while it is down).
        if (!local?.progress.has(publisher.name)) continue;
        add(name, {
          kind: 'slot_missing',
          peer: publisher.name,
          detail: `the slot for ${name} is missing on ${publisher.name}, so ${name} receives nothing more of ${publisher.name}'s changes`,
        });
      } else if (slot.invalidated !== null) {
        add(name, {
          kind: 'slot_invalidated',
          peer: publisher.name,
          detail: `slot ${slot.slot} on ${publisher.name} was invalidated (${slot.invalidated}${slot.invalidated === 'wal_removed' ? ': it fell behind max_slot_wal_keep_size' : ''}), so ${name} has lost part of ${publisher.name}'s changes`,
        });
      }
    }
  }

  const leftoverSlots: LeftoverSlot[] = [];
  for (const node of facts) {
    for (const slot of node.slots) {
      // Not a node's slot: the version horizon's (pgmesh__versions_<oid>).
      const forNode = slot.subscriber;
      if (forNode === null) continue;
      const target = byName.get(forNode);
      const state = target?.membership;
      let detail: string | undefined;
      if (!configured.includes(forNode)) {
        detail = `for ${forNode}, which is not in the configuration (left by a node add that failed, or one under way): run "pgmesh node add ${forNode}" again to finish it, or drop the slot, which pgmesh made in ${node.name}'s database (SELECT pg_drop_replication_slot('${slot.slot}') on ${node.name})`;
      } else if (state === 'joining' || state === 'resyncing') {
        const command = state === 'joining' ? 'add' : 'resync';
        detail = `for ${forNode}, which is still ${state} (a node ${command} under way, or one that failed: run "pgmesh node ${command} ${forNode}" again, or "pgmesh node remove ${forNode}")`;
      }
      if (detail !== undefined) leftoverSlots.push({ node: node.name, slot: slot.slot, forNode, retainedBytes: slot.retainedBytes, detail });
    }
  }
  return { resync, leftoverSlots };
}
