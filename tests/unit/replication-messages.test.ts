/**
 * CopyData payloads of the replication stream, checked against the byte layouts of protocol-replication.html
 * written out as hex.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PgmeshError } from '../../src/core/errors.ts';
import { lsn, parseLsn } from '../../src/core/lsn.ts';
import { pgTimestamp, pgTimestampFromDate } from '../../src/core/pg-time.ts';
import { encodeKeepalive, encodeXLogData } from '../../src/protocol/pgoutput-encoder.ts';
import {
  decodeReplicationMessage,
  encodeStandbyStatusUpdate,
  STANDBY_STATUS_UPDATE_LENGTH,
} from '../../src/protocol/replication-messages.ts';

const hex = (...parts: string[]): Buffer => Buffer.from(parts.join(''), 'hex');

function assertProtocolError(fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof PgmeshError, `expected PgmeshError, got ${String(error)}`);
    assert.equal(error.code, 'PROTOCOL');
    if (message !== undefined) assert.match(error.message, message);
    return true;
  });
}

// 2026-01-02T03:04:05.678901Z in µs since 2000-01-01: 820_638_245_678_901 = 0x0002_EA5D_BB1F_6F35
const SEND_TIME = pgTimestamp(820_638_245_678_901n);
const SEND_TIME_HEX = '0002ea5dbb1f6f35';

describe('XLogData', () => {
  const payload = hex('77', '00000016b374d848', 'fedcba9876543210', SEND_TIME_HEX, '420102');

  test('decodes walStart, walEnd (above 2^63), sendTime and the data after the 25-byte header', () => {
    assert.equal(SEND_TIME, pgTimestampFromDate(new Date('2026-01-02T03:04:05.678Z')) + 901n);
    const message = decodeReplicationMessage(payload);
    assert.deepStrictEqual(message, {
      kind: 'xlogdata',
      walStart: parseLsn('16/B374D848'),
      walEnd: lsn(0xfedcba9876543210n),
      sendTime: SEND_TIME,
      data: Buffer.from([0x42, 0x01, 0x02]),
    });
  });

  test('an XLogData with no data is valid (the data is empty)', () => {
    const message = decodeReplicationMessage(payload.subarray(0, 25));
    assert.equal(message.kind, 'xlogdata');
    assert.equal(message.kind === 'xlogdata' && message.data.length, 0);
  });

  test('a header cut anywhere before its 25th byte is a PROTOCOL error', () => {
    for (let cut = 0; cut < 25; cut++) {
      assertProtocolError(() => decodeReplicationMessage(payload.subarray(0, cut)), /truncated/);
    }
  });

  test('encodeXLogData writes the same bytes', () => {
    const encoded = encodeXLogData({
      walStart: parseLsn('16/B374D848'),
      walEnd: lsn(0xfedcba9876543210n),
      sendTime: SEND_TIME,
      data: Buffer.from([0x42, 0x01, 0x02]),
    });
    assert.equal(encoded.toString('hex'), payload.toString('hex'));
  });
});

describe('primary keepalive', () => {
  const payload = hex('6b', '00000016b374d848', SEND_TIME_HEX, '01');

  test('decodes walEnd, sendTime and replyRequested from exactly 18 bytes', () => {
    assert.equal(payload.length, 18);
    assert.deepStrictEqual(decodeReplicationMessage(payload), {
      kind: 'keepalive',
      walEnd: parseLsn('16/B374D848'),
      sendTime: SEND_TIME,
      replyRequested: true,
    });
    const noReply = hex('6b', 'ffffffffffffffff', 'ffffffffffffffff', '00');
    assert.deepStrictEqual(decodeReplicationMessage(noReply), {
      kind: 'keepalive',
      walEnd: lsn(0xffffffffffffffffn),
      sendTime: pgTimestamp(-1n),
      replyRequested: false,
    });
  });

  test('any non-zero reply byte asks for a reply, as in walreceiver', () => {
    const message = decodeReplicationMessage(hex('6b', '00000016b374d848', SEND_TIME_HEX, '02'));
    assert.equal(message.kind === 'keepalive' && message.replyRequested, true);
  });

  test('cut anywhere or followed by trailing bytes, it is a PROTOCOL error', () => {
    for (let cut = 0; cut < payload.length; cut++) {
      assertProtocolError(() => decodeReplicationMessage(payload.subarray(0, cut)), /primary keepalive|replication message/);
    }
    assertProtocolError(() => decodeReplicationMessage(Buffer.concat([payload, hex('00')])), /keepalive: end of message at byte 18/);
  });

  test('encodeKeepalive writes the same bytes', () => {
    const encoded = encodeKeepalive({ walEnd: parseLsn('16/B374D848'), sendTime: SEND_TIME, replyRequested: true });
    assert.equal(encoded.toString('hex'), payload.toString('hex'));
  });
});

describe('unknown message types', () => {
  test('are PROTOCOL errors naming the type', () => {
    assertProtocolError(() => decodeReplicationMessage(hex('72', '00')), /message type at byte 0: unknown type 'r' \(0x72\)/);
    assertProtocolError(() => decodeReplicationMessage(hex('00')), /unknown type 0x00/);
    assertProtocolError(() => decodeReplicationMessage(Buffer.alloc(0)), /truncated/);
  });
});

describe('standby status update', () => {
  test("is 'r', written, flushed, applied, clientTime and the reply byte, big-endian", () => {
    const encoded = encodeStandbyStatusUpdate({
      written: parseLsn('16/B374D848'),
      flushed: parseLsn('16/B374D800'),
      applied: lsn(0x8000000000000001n),
      clientTime: SEND_TIME,
      replyRequested: false,
    });
    assert.equal(encoded.length, STANDBY_STATUS_UPDATE_LENGTH);
    assert.equal(
      encoded.toString('hex'),
      ['72', '00000016b374d848', '00000016b374d800', '8000000000000001', SEND_TIME_HEX, '00'].join(''),
    );
  });

  test('sets the last byte to 1 to ask for an immediate reply, and writes negative times as two’s complement', () => {
    const encoded = encodeStandbyStatusUpdate({
      written: lsn(0n),
      flushed: lsn(0n),
      applied: lsn(0n),
      clientTime: pgTimestamp(-2n),
      replyRequested: true,
    });
    assert.equal(encoded.toString('hex'), '72' + '00'.repeat(24) + 'fffffffffffffffe' + '01');
  });
});
