/**
 * A failed change's values are personal data: what goes to error-level logs, errors and the status names the table,
 * constraint and column, never a value; the server's own words (its message and DETAIL) are kept for debug logs.
 * The server errors here are built as postgres.js hands them over (an Error with the fields of ErrorResponse).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PgmeshError, messageWithoutValues, serverValues } from '../../src/core/errors.ts';

function serverError(message: string, fields: Record<string, string>): Error {
  return Object.assign(new Error(message), fields);
}

test('a data exception (class 22) loses the value it quotes, wherever it stands', () => {
  const input = serverError('invalid input syntax for type integer: "Jane Roe"', { code: '22P02' });
  assert.equal(messageWithoutValues(input), 'invalid input syntax for type integer: "…"');
  const range = serverError('value "12345678901" is out of range for type integer', { code: '22003', table_name: 't', schema_name: 'public' });
  assert.equal(messageWithoutValues(range), 'value "…" is out of range for type integer (table public.t)');
  // A quote inside the value does not let its tail through.
  const quoted = serverError('invalid input value for enum mood: "a"b"', { code: '22P02' });
  assert.equal(messageWithoutValues(quoted), 'invalid input value for enum mood: "…"');
});

test("an integrity error (class 23) keeps its message, names where, and leaves the DETAIL's values out", () => {
  const check = serverError('new row for relation "people" violates check constraint "no_jane"', {
    code: '23514',
    detail: 'Failing row contains (7, Jane Roe).',
    schema_name: 'public',
    table_name: 'people',
    constraint_name: 'no_jane',
  });
  assert.equal(messageWithoutValues(check), 'new row for relation "people" violates check constraint "no_jane" (table public.people, constraint no_jane)');
  assert.deepEqual(serverValues(check), { serverMessage: 'new row for relation "people" violates check constraint "no_jane"', detail: 'Failing row contains (7, Jane Roe).' });
  // Through a PgmeshError that wraps it, as the applier throws it.
  const wrapped = new PgmeshError('APPLY_FAILED', 'applying ... failed', { cause: check });
  assert.equal(serverValues(wrapped)?.detail, 'Failing row contains (7, Jane Roe).');
  const nullColumn = serverError('null value in column "name" of relation "people" violates not-null constraint', {
    code: '23502',
    detail: 'Failing row contains (8, null).',
    table_name: 'people',
    column_name: 'name',
  });
  assert.equal(messageWithoutValues(nullColumn), 'null value in column "name" of relation "people" violates not-null constraint (table people, column name)');
});

test('an error that is not the server\'s is left as it is', () => {
  assert.equal(messageWithoutValues(new Error('socket hang up')), 'socket hang up');
  assert.equal(messageWithoutValues(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })), 'connect ECONNREFUSED');
  assert.equal(serverValues(new Error('socket hang up')), undefined);
});
