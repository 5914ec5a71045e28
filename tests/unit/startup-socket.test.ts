/**
 * The start-up guard reads the server's side of a connection's start-up beside the driver: PostgreSQL's messages
 * pass however the bytes are cut into chunks, and it is done at ReadyForQuery; anything else fails at once.
 * https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StartupError, StartupGuard } from '../../src/pg/startup-socket.ts';

/** A backend message: type byte, Int32 length (counting itself), body. */
function message(type: string, body: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}

const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

/** What a server sends after a StartupMessage with trust or after a completed password exchange. */
const STARTUP_ANSWER = Buffer.concat([
  message('R', Buffer.concat([int32(10), Buffer.from('SCRAM-SHA-256\0\0', 'latin1')])), // AuthenticationSASL
  message('R', int32(0)), // AuthenticationOk
  message('S', Buffer.from('server_version\x0017.4\x00', 'latin1')),
  message('K', Buffer.concat([int32(4242), int32(7)])),
  message('N', Buffer.from('SWARNING\x00Mhi\x00\x00', 'latin1')),
  message('Z', Buffer.from('I', 'latin1')),
]);

/** Feeds the chunks; returns the first failure, and whether the guard was done. */
function feed(guard: StartupGuard, chunks: readonly Buffer[]): { failure: StartupError | undefined; done: boolean } {
  for (const chunk of chunks) {
    const failure = guard.read(chunk);
    if (failure) return { failure, done: guard.done };
  }
  return { failure: undefined, done: guard.done };
}

test("PostgreSQL's start-up answer passes however it is cut, and the guard is done at ReadyForQuery", () => {
  for (let cut = 0; cut <= STARTUP_ANSWER.length; cut++) {
    for (let second = cut; second <= STARTUP_ANSWER.length; second += 7) {
      const chunks = [STARTUP_ANSWER.subarray(0, cut), STARTUP_ANSWER.subarray(cut, second), STARTUP_ANSWER.subarray(second)];
      assert.deepEqual(feed(new StartupGuard(false), chunks), { failure: undefined, done: true }, `cut at ${cut} and ${second}`);
    }
  }
  // Not done one byte before the end of ReadyForQuery's header.
  const guard = new StartupGuard(false);
  assert.equal(guard.read(STARTUP_ANSWER.subarray(0, STARTUP_ANSWER.length - 2)), undefined);
  assert.equal(guard.done, false);
});

test('after an SSLRequest: "N" then the plain answer passes; "S" hands over to TLS; an ErrorResponse ends it', () => {
  assert.deepEqual(feed(new StartupGuard(true), [Buffer.from('N'), STARTUP_ANSWER]), { failure: undefined, done: true });
  assert.deepEqual(feed(new StartupGuard(true), [Buffer.from('S')]), { failure: undefined, done: true });
  const error = message('E', Buffer.from('SFATAL\x00C28000\x00Mno pg_hba.conf entry\x00\x00', 'latin1'));
  assert.deepEqual(feed(new StartupGuard(false), [error]), { failure: undefined, done: true });
});

test('an answer that is not PostgreSQL fails at once, and says what was sent', () => {
  const http = Buffer.from('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n', 'latin1');
  for (const sslRequestFirst of [false, true]) {
    const { failure } = feed(new StartupGuard(sslRequestFirst), [http]);
    assert.ok(failure instanceof StartupError);
    assert.equal(failure.code, 'NOT_POSTGRES');
    assert.equal(failure.answer, 'HTTP/1.1 400 Bad Request');
  }
  // SSH's banner starts with "S", which is PostgreSQL's ParameterStatus, but never as the first message.
  assert.equal(feed(new StartupGuard(false), [Buffer.from('SSH-2.0-OpenSSH_9.6\r\n', 'latin1')]).failure?.code, 'NOT_POSTGRES');
  // A plausible type with an impossible length: text read as a length.
  assert.equal(feed(new StartupGuard(false), [Buffer.from('Random text', 'latin1')]).failure?.code, 'NOT_POSTGRES');
  // Unprintable bytes are shown as "?".
  assert.equal(feed(new StartupGuard(false), [Buffer.from([0x16, 0x03, 0x01, 0x41])]).failure?.answer, '???A');
});

test('a request for the password in clear ends the attempt before the driver answers, however it is cut, unless allowed', () => {
  const cleartext = Buffer.concat([message('R', int32(3)), message('Z', Buffer.from('I', 'latin1'))]);
  for (let cut = 0; cut <= cleartext.length; cut++) {
    const chunks = [cleartext.subarray(0, cut), cleartext.subarray(cut)];
    assert.equal(feed(new StartupGuard({ sslRequestFirst: false }), chunks).failure?.code, 'CLEARTEXT_PASSWORD', `cut at ${cut}`);
    assert.equal(feed(new StartupGuard({ sslRequestFirst: true }), [Buffer.from('N'), ...chunks]).failure?.code, 'CLEARTEXT_PASSWORD', `cut at ${cut}`);
    assert.deepEqual(feed(new StartupGuard({ sslRequestFirst: false, allowCleartextPassword: true }), chunks), { failure: undefined, done: true });
  }
  // MD5 and SCRAM never show the password: not refused.
  assert.equal(feed(new StartupGuard({ sslRequestFirst: false }), [message('R', Buffer.concat([int32(5), int32(1)])), STARTUP_ANSWER]).failure, undefined);
});

test('sslmode=require or stronger: a server without TLS ends the attempt at its "N"', () => {
  assert.equal(feed(new StartupGuard({ sslRequestFirst: true, tlsRequired: true }), [Buffer.from('N')]).failure?.code, 'NO_TLS');
  assert.deepEqual(feed(new StartupGuard({ sslRequestFirst: true, tlsRequired: true }), [Buffer.from('S')]), { failure: undefined, done: true });
});
