/**
 * Services on loopback ports that are not PostgreSQL, for connection strings that point at the wrong thing: an HTTP
 * server (reads the request, answers 400 and closes, as real ones do with PostgreSQL's start-up bytes), a service
 * that closes the connection as soon as it has read something, without a word, and one that accepts and never
 * answers (a hung server, a black-holing proxy). Each counts the connections it accepted.
 */
import { createServer, type Socket } from 'node:net';

export type FakeKind = 'http' | 'close' | 'silent';

export interface FakeService {
  readonly port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  close(): Promise<void>;
}

export async function startFakeService(kind: FakeKind): Promise<FakeService> {
  const sockets = new Set<Socket>();
  let connections = 0;
  const server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    if (kind === 'http') socket.once('data', () => socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'));
    if (kind === 'close') socket.once('data', () => socket.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('the fake service has no port');
  return {
    port: address.port,
    get connections() {
      return connections;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
