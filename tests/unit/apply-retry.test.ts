import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RETRY_BASE_MS, RETRY_MAX_MS, retryDelayMs } from '../../src/apply/apply-retry.ts';
import { ReplayBuffer } from '../../src/apply/replay-buffer.ts';
import { lsn } from '../../src/core/lsn.ts';
import { pgTimestamp } from '../../src/core/pg-time.ts';
import type { StreamEvent } from '../../src/stream/remote-transaction.ts';

test('the backoff of an apply retry doubles from RETRY_BASE_MS, stays within RETRY_MAX_MS, half of it random', () => {
  for (let attempt = 1; attempt <= 30; attempt++) {
    const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** (attempt - 1));
    assert.equal(retryDelayMs(attempt, () => 0), ceiling / 2, `attempt ${attempt}, least`);
    assert.equal(retryDelayMs(attempt, () => 1), ceiling, `attempt ${attempt}, most`);
  }
  assert.equal(retryDelayMs(1000, () => 1), RETRY_MAX_MS);
});

function transaction(at: bigint, changes: number): StreamEvent[] {
  const finalLsn = lsn(at);
  const commitTime = pgTimestamp(0n);
  const events: StreamEvent[] = [{ kind: 'begin', xid: Number(at), finalLsn, commitTime }];
  for (let i = 0; i < changes; i++) events.push({ kind: 'change', change: { kind: 'message', prefix: 'test', content: Buffer.alloc(0), lsn: finalLsn } });
  events.push({ kind: 'commit', commitLsn: finalLsn, endLsn: lsn(at + 1n), commitTime });
  return events;
}

test('the replay buffer gives back every event from the first unconfirmed transaction, and forgets committed ones', () => {
  const buffer = new ReplayBuffer();
  const [a, b, c] = [transaction(10n, 1), transaction(20n, 2), transaction(30n, 0)];
  for (const event of [...a, ...b, ...c]) buffer.retain(event);
  assert.equal(buffer.holdsFrom(lsn(20n)), false, 'transaction 10 is still kept before it');
  buffer.committed(lsn(10n));
  assert.equal(buffer.holdsFrom(lsn(20n)), true);
  assert.equal(buffer.holdsFrom(lsn(30n)), false, 'not the first one kept');
  assert.deepEqual(buffer.takeAll(), [...b, ...c]);
  assert.equal(buffer.holdsFrom(lsn(20n)), false, 'emptied');
});

test('a transaction too large to keep is not replayed: the buffer says it does not hold it', () => {
  const buffer = new ReplayBuffer();
  for (const event of transaction(10n, 50_001)) buffer.retain(event);
  assert.equal(buffer.holdsFrom(lsn(10n)), false);
  // The next transaction is kept again once the large one is committed.
  buffer.committed(lsn(10n));
  for (const event of transaction(20n, 1)) buffer.retain(event);
  assert.equal(buffer.holdsFrom(lsn(20n)), true);
});
