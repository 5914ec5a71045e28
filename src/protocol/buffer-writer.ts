/**
 * A small big-endian byte builder: the encoder writes messages with it, and tests write protocol bytes by hand
 * with it (as node-postgres' pg-protocol tests do). Out-of-range values throw RangeError rather than wrapping.
 */
export class BufferWriter {
  #buffer: Buffer;
  #length = 0;

  constructor(initialSize = 256) {
    this.#buffer = Buffer.allocUnsafe(Math.max(16, initialSize));
  }

  get length(): number {
    return this.#length;
  }

  uint8(value: number): this {
    const at = this.#reserve(1);
    this.#buffer.writeUInt8(value, at);
    this.#length = at + 1;
    return this;
  }

  int8(value: number): this {
    const at = this.#reserve(1);
    this.#buffer.writeInt8(value, at);
    this.#length = at + 1;
    return this;
  }

  /** One ASCII character as a byte: a message tag such as 'B', or a tuple column kind such as 't'. */
  char(value: string): this {
    const code = value.charCodeAt(0);
    if (value.length !== 1 || code > 0x7f) throw new RangeError(`expected one ASCII character, got ${JSON.stringify(value)}`);
    return this.uint8(code);
  }

  int16(value: number): this {
    const at = this.#reserve(2);
    this.#buffer.writeInt16BE(value, at);
    this.#length = at + 2;
    return this;
  }

  uint16(value: number): this {
    const at = this.#reserve(2);
    this.#buffer.writeUInt16BE(value, at);
    this.#length = at + 2;
    return this;
  }

  int32(value: number): this {
    const at = this.#reserve(4);
    this.#buffer.writeInt32BE(value, at);
    this.#length = at + 4;
    return this;
  }

  uint32(value: number): this {
    const at = this.#reserve(4);
    this.#buffer.writeUInt32BE(value, at);
    this.#length = at + 4;
    return this;
  }

  uint64(value: bigint): this {
    const at = this.#reserve(8);
    this.#buffer.writeBigUInt64BE(value, at);
    this.#length = at + 8;
    return this;
  }

  int64(value: bigint): this {
    const at = this.#reserve(8);
    this.#buffer.writeBigInt64BE(value, at);
    this.#length = at + 8;
    return this;
  }

  /** A NUL-terminated UTF-8 string; a NUL inside the value could not be read back, so it is refused. */
  cstring(value: string): this {
    if (value.includes('\0')) throw new RangeError(`a protocol String cannot contain NUL: ${JSON.stringify(value)}`);
    const length = Buffer.byteLength(value, 'utf8');
    const at = this.#reserve(length + 1);
    this.#buffer.write(value, at, length, 'utf8');
    this.#buffer[at + length] = 0;
    this.#length = at + length + 1;
    return this;
  }

  /** UTF-8 bytes of `value`, with no length and no terminator. */
  utf8(value: string): this {
    const length = Buffer.byteLength(value, 'utf8');
    const at = this.#reserve(length);
    this.#buffer.write(value, at, length, 'utf8');
    this.#length = at + length;
    return this;
  }

  bytes(value: Uint8Array | readonly number[]): this {
    const source = value instanceof Uint8Array ? value : Uint8Array.from(value);
    const at = this.#reserve(source.length);
    this.#buffer.set(source, at);
    this.#length = at + source.length;
    return this;
  }

  /** A copy of the bytes written so far. */
  toBuffer(): Buffer {
    return Buffer.from(this.#buffer.subarray(0, this.#length));
  }

  /**
   * Returns the offset to write at, after growing the buffer so that `size` more bytes fit. The caller advances
   * the length only after its write succeeded, so a refused value leaves no half-written bytes behind.
   */
  #reserve(size: number): number {
    const at = this.#length;
    const needed = at + size;
    if (needed > this.#buffer.length) {
      const grown = Buffer.allocUnsafe(Math.max(needed, this.#buffer.length * 2));
      this.#buffer.copy(grown, 0, 0, at);
      this.#buffer = grown;
    }
    return at;
  }
}
