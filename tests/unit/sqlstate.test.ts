import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isApplyRetrySqlState, isDataSqlState, isRetryableSqlState } from '../../src/core/sqlstate.ts';

test('errors a change raises because of its data or its table are data errors: classes 22 and 23, datatype mismatch, generated always, a privilege its table\'s owner took away', () => {
  for (const code of ['23505', '23503', '23514', '23502', '23P01', '22P02', '22003', '22001', '22007', '22012', '2200N', '42804', '428C9', '42501']) {
    assert.equal(isDataSqlState(code), true, code);
  }
  for (const code of ['40P01', '40001', '08006', '57P01', '42P01', 'PM004', '55P03']) assert.equal(isDataSqlState(code), false, code);
  assert.equal(isDataSqlState(undefined), false);
});

test('connection losses, shutdowns, deadlocks and serialization failures are retryable', () => {
  for (const code of ['08006', '08001', '57P01', '57P02', '57P03', '40001', '40P01', '55006', '55P03']) assert.equal(isRetryableSqlState(code), true, code);
  for (const code of ['23505', '42P01', 'PM004']) assert.equal(isRetryableSqlState(code), false, code);
});

test('deadlocks, serialization failures and lock timeouts are retried in place by the applier; nothing else is', () => {
  for (const code of ['40P01', '40001', '55P03']) assert.equal(isApplyRetrySqlState(code), true, code);
  for (const code of ['08006', '57P01', '55006', '23505', 'PM004', '25P02']) assert.equal(isApplyRetrySqlState(code), false, code);
  assert.equal(isApplyRetrySqlState(undefined), false);
});
