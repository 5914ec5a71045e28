/** The parts of pgpass (no types of its own) that pgmesh uses: matching a connection against a password file. */
declare module 'pgpass/lib/helper.js' {
  import type { Readable } from 'node:stream';
  interface ConnInfo {
    readonly host: string;
    readonly port: string;
    readonly database: string;
    readonly user: string;
  }
  const helper: {
    getPassword(connInfo: ConnInfo, stream: Readable, callback: (password: string | undefined) => void): void;
    warnTo(stream: NodeJS.WritableStream): NodeJS.WritableStream;
  };
  export default helper;
}
