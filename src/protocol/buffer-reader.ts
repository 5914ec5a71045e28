/**
 * A bounds-checked, big-endian byte reader over one complete message (after the CopyData framing).
 * Every read checks that enough bytes remain and otherwise throws PgmeshError('PROTOCOL') naming the message,
 * the field and the byte offset, so a truncated or misframed message can never surface as a RangeError or
 * as garbage values. Modelled on node-postgres' pg-protocol BufferReader.
 */
import { isUtf8 } from 'node:buffer';
import { PgmeshError } from '../core/errors.ts';

export class BufferReader {
  readonly #buffer: Buffer;
  #offset: number;
  #message: string;

  /** `message` names what is being read ("pgoutput Relation") for error messages; change it with `describe()`. */
  constructor(buffer: Buffer, message = 'message', offset = 0) {
    this.#buffer = buffer;
    this.#message = message;
    if (!Number.isInteger(offset) || offset < 0 || offset > buffer.length) {
      throw new RangeError(`offset ${offset} is outside a buffer of ${buffer.length} bytes`);
    }
    this.#offset = offset;
  }

  /** Bytes consumed so far. */
  get offset(): number {
    return this.#offset;
  }

  get message(): string {
    return this.#message;
  }

  /** Renames the message being read, once its tag is known. */
  describe(message: string): this {
    this.#message = message;
    return this;
  }

  remaining(): number {
    return this.#buffer.length - this.#offset;
  }

  uint8(field = 'uint8'): number {
    this.#need(1, field);
    const value = this.#buffer[this.#offset] as number;
    this.#offset += 1;
    return value;
  }

  int8(field = 'int8'): number {
    this.#need(1, field);
    const value = this.#buffer.readInt8(this.#offset);
    this.#offset += 1;
    return value;
  }

  int16(field = 'int16'): number {
    this.#need(2, field);
    const value = this.#buffer.readInt16BE(this.#offset);
    this.#offset += 2;
    return value;
  }

  uint16(field = 'uint16'): number {
    this.#need(2, field);
    const value = this.#buffer.readUInt16BE(this.#offset);
    this.#offset += 2;
    return value;
  }

  int32(field = 'int32'): number {
    this.#need(4, field);
    const value = this.#buffer.readInt32BE(this.#offset);
    this.#offset += 4;
    return value;
  }

  /** OIDs and XIDs: PostgreSQL sends them as Int32 but they are unsigned; a signed read turns 0xFFFFFFFF into -1. */
  uint32(field = 'uint32'): number {
    this.#need(4, field);
    const value = this.#buffer.readUInt32BE(this.#offset);
    this.#offset += 4;
    return value;
  }

  /** LSNs: unsigned 64-bit. */
  uint64(field = 'uint64'): bigint {
    this.#need(8, field);
    const value = this.#buffer.readBigUInt64BE(this.#offset);
    this.#offset += 8;
    return value;
  }

  /** Timestamps: signed 64-bit (dates before 2000-01-01 are negative). */
  int64(field = 'int64'): bigint {
    this.#need(8, field);
    const value = this.#buffer.readBigInt64BE(this.#offset);
    this.#offset += 8;
    return value;
  }

  /** A NUL-terminated UTF-8 string (the protocol's String); the terminator is consumed, not returned. */
  cstring(field = 'string'): string {
    const end = this.#buffer.indexOf(0, this.#offset);
    if (end === -1) {
      this.fail(field, `no NUL terminator in the remaining ${this.remaining()} bytes`);
    }
    const value = this.#utf8(this.#offset, end, field);
    this.#offset = end + 1;
    return value;
  }

  /** `length` bytes decoded as UTF-8; invalid UTF-8 is an error rather than silently replaced by U+FFFD. */
  utf8(length: number, field = 'text'): string {
    const start = this.#take(length, field);
    return this.#utf8(start, start + length, field);
  }

  /** A view of the next `length` bytes (shares memory with the input; copy it to keep it past the input's life). */
  bytes(length: number, field = 'bytes'): Buffer {
    const start = this.#take(length, field);
    return this.#buffer.subarray(start, start + length);
  }

  /** Everything not read yet, as a view. */
  rest(): Buffer {
    const value = this.#buffer.subarray(this.#offset);
    this.#offset = this.#buffer.length;
    return value;
  }

  /** A complete message must use every byte: leftovers mean we and the server disagree on its layout. */
  end(): void {
    if (this.remaining() !== 0) {
      this.fail('end of message', `${this.remaining()} unexpected trailing bytes`);
    }
  }

  /** Throws the PROTOCOL error for `field`, at the current offset unless another is given. */
  fail(field: string, problem: string, offset = this.#offset): never {
    throw new PgmeshError('PROTOCOL', `malformed ${this.#message}: ${field} at byte ${offset}: ${problem}`, {
      context: { message: this.#message, field, offset },
    });
  }

  /** Consumes the next `length` bytes (checked) and returns where they start. */
  #take(length: number, field: string): number {
    if (!Number.isInteger(length) || length < 0) this.fail(field, `invalid length ${length}`);
    this.#need(length, field);
    const start = this.#offset;
    this.#offset += length;
    return start;
  }

  #need(length: number, field: string): void {
    const left = this.#buffer.length - this.#offset;
    if (left < length) {
      this.fail(field, `truncated: needs ${length} bytes, ${left} left of ${this.#buffer.length}`);
    }
  }

  /**
   * Bytes start..end decoded straight from the input (no view of them: a column value is the commonest thing read).
   * The decoder replaces invalid UTF-8 with U+FFFD, so only a result that contains U+FFFD is checked (whether the
   * input was invalid, or held that character).
   */
  #utf8(start: number, end: number, field: string): string {
    const value = this.#buffer.toString('utf8', start, end);
    if (value.includes('\uFFFD') && !isUtf8(this.#buffer.subarray(start, end))) this.fail(field, 'invalid UTF-8', start);
    return value;
  }
}

/** A tag byte as `'x' (0x78)` for error messages, or as hex alone when it is not printable ASCII. */
export function describeByte(byte: number): string {
  const hex = `0x${byte.toString(16).padStart(2, '0')}`;
  return byte >= 0x20 && byte < 0x7f ? `'${String.fromCharCode(byte)}' (${hex})` : hex;
}
