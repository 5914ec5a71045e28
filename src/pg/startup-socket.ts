/**
 * The socket every pgmesh connection uses, with a guard on the connection's start-up: it fails the connection
 * when what answers is not PostgreSQL.
 *
 * Why: postgres.js reconnects at once, in a loop without delay or end, when the server closes the connection before
 * the start-up has finished, and its connect timeout restarts on every attempt. A DSN that points at an HTTP server
 * (it answers "HTTP/1.1 400" and closes) or at a service that accepts and closes made every command hang with
 * thousands of connects a second. Here such a connection ends in one attempt with an error that says what answered.
 *
 * What the guard reads, without taking anything from the driver (it listens beside it):
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP
 * - after an SSLRequest, one byte: 'S' (TLS follows; the guard stops there), 'N' (plain start-up follows), or
 *   'E' (a server too old to know SSLRequest);
 * - after a StartupMessage, messages (type byte, Int32 length that counts itself): the first is Authentication
 *   'R', NegotiateProtocolVersion 'v' or ErrorResponse 'E'; then 'R', 'S', 'K', 'N', 'v' until ReadyForQuery 'Z' or
 *   an ErrorResponse 'E' (the driver reports it), where the guard stops.
 * Anything else, or the peer closing the connection before either end, fails the socket with a GuardError.
 * A close after TLS has started is not seen here (the driver reads TLS records itself); the TLS layer reports a
 * close during its own handshake as an error, which ends the attempt too.
 *
 * The guard also keeps two of libpq's promises that the driver does not: with sslmode=require or stronger, an 'N'
 * to the SSLRequest ends the attempt (the driver would start TLS anyway and fail obscurely); and on a connection
 * without TLS, an AuthenticationCleartextPassword request ('R', code 3) ends it before the driver answers with the
 * password, unless the operator allowed it. The guard's listener is attached before the driver's, so it sees the
 * request first and destroys the socket: the driver's answer is then written to a destroyed socket, which sends
 * nothing.
 */
import { connect as netConnect, type Socket } from 'node:net';

export type StartupFailure = 'NOT_POSTGRES' | 'CLOSED_AT_STARTUP' | 'NO_TLS' | 'CLEARTEXT_PASSWORD';

const FAILURE_TEXT: Record<Exclude<StartupFailure, 'NOT_POSTGRES'>, string> = {
  CLOSED_AT_STARTUP: 'the server closed the connection during start-up',
  NO_TLS: 'the server does not offer TLS',
  CLEARTEXT_PASSWORD: 'the server asked for the password in clear on a connection without TLS',
};

/** A connection that the guard ended; `code` is what connectionError matches, `answer` what the server sent first. */
export class StartupError extends Error {
  constructor(
    readonly code: StartupFailure,
    readonly answer: string,
  ) {
    super(code === 'NOT_POSTGRES' ? `the server answered ${JSON.stringify(answer)}, which is not PostgreSQL's protocol` : FAILURE_TEXT[code]);
    this.name = 'StartupError';
  }
}

export interface SocketTarget {
  /** Host name or IP address (an IPv6 address without brackets), or a Unix socket's path. */
  readonly host: string;
  readonly port: number;
  readonly path?: string;
}

/** The part of postgres.js's parsed options that decides what is sent first. */
interface DriverOptions {
  readonly ssl?: unknown;
  readonly sslnegotiation?: string | null;
}

const FIRST_MESSAGE = new Set([0x52 /* R */, 0x76 /* v */, 0x45 /* E */]);
const STARTUP_MESSAGE = new Set([0x52 /* R */, 0x53 /* S */, 0x4b /* K */, 0x4e /* N */, 0x76 /* v */]);
const SSL_ANSWER = new Set([0x53 /* S */, 0x4e /* N */, 0x45 /* E */]);
/** No start-up message is this long; a longer length is text read as a length. */
const MAX_STARTUP_MESSAGE = 1 << 20;
/** AuthenticationCleartextPassword's code in an 'R' message. */
const AUTH_CLEARTEXT = 3;

export interface GuardOptions {
  /** An SSLRequest goes first (sslmode other than disable). */
  readonly sslRequestFirst: boolean;
  /** sslmode=require or stronger: an 'N' answer ends the attempt. */
  readonly tlsRequired?: boolean;
  /** The operator allowed a password in clear (PGMESH_ALLOW_CLEARTEXT_PASSWORD). */
  readonly allowCleartextPassword?: boolean;
}

/** The first bytes a server sent, as printable text for a message (it is not PostgreSQL's, so not a secret of ours). */
function printable(bytes: Buffer): string {
  const text = bytes.subarray(0, 40).toString('latin1');
  return text.replace(/[\r\n]+[\s\S]*$/, '').replace(/[^\x20-\x7e]/g, '?');
}

/**
 * Reads the server's side of the start-up: settled once the driver is past it (or into TLS), failed when the
 * bytes are not PostgreSQL's.
 */
export class StartupGuard {
  /** 'ssl': the one-byte answer to an SSLRequest is next; 'type', 'length': a message's header; 'body': its payload. */
  private expect: 'ssl' | 'type' | 'length' | 'body' | 'done';
  private first = true;
  private type = 0;
  private header = Buffer.alloc(4);
  private headerBytes = 0;
  private remaining = 0;
  /** The first bytes of an Authentication message's body: its code. */
  private authCode = Buffer.alloc(4);
  private authBytes = 0;
  private readonly options: GuardOptions;

  constructor(options: GuardOptions | boolean) {
    this.options = typeof options === 'boolean' ? { sslRequestFirst: options } : options;
    this.expect = this.options.sslRequestFirst ? 'ssl' : 'type';
  }

  get done(): boolean {
    return this.expect === 'done';
  }

  /** Undefined while the bytes are PostgreSQL's; the failure otherwise. */
  read(chunk: Buffer): StartupError | undefined {
    const wrong = () => new StartupError('NOT_POSTGRES', printable(chunk));
    let i = 0;
    while (i < chunk.length && this.expect !== 'done') {
      const byte = chunk.readUInt8(i);
      switch (this.expect) {
        case 'ssl':
          if (!SSL_ANSWER.has(byte)) return wrong();
          if (byte === 0x4e && this.options.tlsRequired) return new StartupError('NO_TLS', 'N');
          // 'S': TLS from here on, which the driver reads. 'N', 'E': plain messages follow.
          if (byte === 0x53) this.expect = 'done';
          else if (byte === 0x45) {
            this.expect = 'length';
            this.type = byte;
            this.first = false;
          } else this.expect = 'type';
          i++;
          break;
        case 'type':
          if (!(this.first ? FIRST_MESSAGE : STARTUP_MESSAGE).has(byte) && byte !== 0x5a /* Z */ && byte !== 0x45) return wrong();
          this.first = false;
          this.type = byte;
          this.headerBytes = 0;
          this.expect = 'length';
          i++;
          break;
        case 'length': {
          const take = Math.min(4 - this.headerBytes, chunk.length - i);
          chunk.copy(this.header, this.headerBytes, i, i + take);
          this.headerBytes += take;
          i += take;
          if (this.headerBytes < 4) break;
          const length = this.header.readUInt32BE(0);
          if (length < 4 || length > MAX_STARTUP_MESSAGE) return wrong();
          // ReadyForQuery: the driver is connected. ErrorResponse: the driver reports it and the attempt ends.
          if (this.type === 0x5a || this.type === 0x45) this.expect = 'done';
          else {
            this.remaining = length - 4;
            this.authBytes = 0;
            this.expect = this.remaining > 0 ? 'body' : 'type';
          }
          break;
        }
        case 'body': {
          const take = Math.min(this.remaining, chunk.length - i);
          if (this.type === 0x52 /* R */ && this.authBytes < 4) {
            const codeBytes = Math.min(take, 4 - this.authBytes);
            chunk.copy(this.authCode, this.authBytes, i, i + codeBytes);
            this.authBytes += codeBytes;
            if (this.authBytes === 4 && this.authCode.readUInt32BE(0) === AUTH_CLEARTEXT && !this.options.allowCleartextPassword) {
              return new StartupError('CLEARTEXT_PASSWORD', '');
            }
          }
          this.remaining -= take;
          i += take;
          if (this.remaining === 0) this.expect = 'type';
          break;
        }
      }
    }
    return undefined;
  }
}

/**
 * For postgres.js's `socket` option: a socket already connecting to the target (the driver attaches its handlers
 * and writes its first message, buffered until connected), failed by the guard when the answer is not PostgreSQL.
 * The socket is handed over at once rather than after 'connect': a factory that waited and rejected left the
 * driver's connection stuck in "connecting", and every later query on it waited forever.
 */
export function startupSocket(
  target: SocketTarget,
  options: { readonly noDelay: boolean; readonly tlsRequired?: boolean; readonly allowCleartextPassword?: boolean },
): (driver: DriverOptions) => Socket {
  return (driver) => {
    const socket = target.path ? netConnect({ path: target.path }) : netConnect({ host: target.host, port: target.port });
    if (options.noDelay) socket.setNoDelay(true);
    // The driver names the TLS server (SNI, certificate check) from socket.host, which it sets only on sockets it
    // made itself.
    Object.assign(socket, { host: target.host, port: target.port });
    // sslnegotiation=direct starts with TLS at once: nothing of PostgreSQL's to read before it.
    if (driver.sslnegotiation === 'direct') return socket;
    const guard = new StartupGuard({
      sslRequestFirst: Boolean(driver.ssl),
      tlsRequired: options.tlsRequired === true,
      allowCleartextPassword: options.allowCleartextPassword === true,
    });
    let answer: Buffer | undefined;
    const onData = (chunk: Buffer) => {
      answer ??= chunk;
      const failure = guard.read(chunk);
      if (failure) socket.destroy(failure);
      else if (guard.done) stop();
    };
    const onEnd = () => {
      stop();
      socket.destroy(new StartupError('CLOSED_AT_STARTUP', answer ? printable(answer) : ''));
    };
    const stop = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
    return socket;
  };
}
