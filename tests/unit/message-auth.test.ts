/**
 * The check of pgmesh's logical messages (src/ddl/message-auth.ts): a message verifies only with the key, prefix,
 * origin node and transaction it was signed for, and unchanged; anything else is refused with a reason that never
 * holds the key. (That the SQL side signs the same way is checked by tests/integration/ddl-capture.test.ts.)
 * Without the code under test: any content with a pgmesh prefix is taken as genuine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { signMessage, verifyMessage } from '../../src/ddl/message-auth.ts';

test('a signed message verifies only as it was signed', () => {
  const key = randomBytes(32);
  const signed = signMessage(key, 'pgmesh.ddl', 'n1', 1234, '{"version":2,"é":1}');
  const ok = verifyMessage(key, 'pgmesh.ddl', 'n1', 1234, signed);
  assert.ok(ok.ok);
  assert.equal(ok.ok ? ok.body.toString('utf8') : '', '{"version":2,"é":1}');
  const refused = [
    verifyMessage(randomBytes(32), 'pgmesh.ddl', 'n1', 1234, signed),
    verifyMessage(key, 'pgmesh.join', 'n1', 1234, signed),
    verifyMessage(key, 'pgmesh.ddl', 'n2', 1234, signed),
    verifyMessage(key, 'pgmesh.ddl', 'n1', 1235, signed),
    verifyMessage(key, 'pgmesh.ddl', 'n1', 1234, Buffer.concat([signed, Buffer.from(' ')])),
    verifyMessage(key, 'pgmesh.ddl', 'n1', 1234, Buffer.from('{"version":2}')),
    verifyMessage(key, 'pgmesh.ddl', 'n1', 1234, Buffer.from(`pgmesh1:${'0'.repeat(64)}:{}`)),
    verifyMessage(undefined, 'pgmesh.ddl', 'n1', 1234, signed),
  ];
  for (const r of refused) {
    assert.equal(r.ok, false);
    assert.ok(!r.ok && !r.problem.includes(key.toString('hex')));
  }
  assert.match(refused[5]?.ok === false ? refused[5].problem : '', /is not signed/);
  assert.match(refused[6]?.ok === false ? refused[6].problem : '', /signature does not match/);
});
