/**
 * Network faults on one machine: a TCP proxy per directed replication link (peer P -> local node L: L's agent
 * connects to P through it), which a test can hold (nothing crosses, connections stay open), release, and cut (every
 * open connection is closed at once, as by a failed network; new connections are accepted). A `LinkMesh` puts one in
 * front of every peer of every agent, and gives each agent process the environment (`PGMESH_DSN_<PEER>`) that sends
 * its connections to its own proxies, so links are faulted one by one, not node by node.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { TestCluster } from './cluster.ts';

interface Pair {
  readonly client: Socket;
  readonly upstream: Socket;
}

export class LinkProxy {
  private readonly pairs = new Set<Pair>();
  private held = false;
  private cuts = 0;

  private constructor(
    readonly name: string,
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(name: string, targetPort: number, targetHost = '127.0.0.1'): Promise<LinkProxy> {
    let proxy: LinkProxy | undefined;
    const server = createServer((client) => proxy?.accept(client, targetHost, targetPort));
    server.on('error', () => undefined);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (typeof address !== 'object' || address === null) throw new Error(`proxy ${name} has no port`);
    proxy = new LinkProxy(name, server, address.port);
    return proxy;
  }

  get isHeld(): boolean {
    return this.held;
  }

  /** Connections open now, and connections cut so far. */
  stats(): { open: number; cut: number } {
    return { open: this.pairs.size, cut: this.cuts };
  }

  /** Nothing crosses the link until release(): both directions stop being read; connections stay open. */
  hold(): void {
    this.held = true;
    for (const pair of this.pairs) {
      pair.client.pause();
      pair.upstream.pause();
    }
  }

  release(): void {
    this.held = false;
    for (const pair of this.pairs) {
      pair.client.resume();
      pair.upstream.resume();
    }
  }

  /** Closes every open connection of the link (a reset, as after a network failure); later ones are accepted. */
  cut(): void {
    for (const pair of this.pairs) {
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
      this.cuts++;
    }
    this.pairs.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket, host: string, port: number): void {
    const upstream = connect({ host, port });
    const pair = { client, upstream };
    this.pairs.add(pair);
    const drop = () => {
      if (!this.pairs.delete(pair)) return;
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on('error', drop);
      socket.on('close', drop);
    }
    this.forward(client, upstream);
    this.forward(upstream, client);
    if (this.held) {
      client.pause();
      upstream.pause();
    }
  }

  /** Not pipe(): pipe resumes its source on 'drain', which would let data through a held link. */
  private forward(from: Socket, to: Socket): void {
    from.on('data', (chunk: Buffer) => {
      if (to.write(chunk)) return;
      from.pause();
      to.once('drain', () => {
        if (!this.held) from.resume();
      });
    });
  }
}

/** A proxy for every directed link `peer->local` of a cluster. */
export class LinkMesh {
  private constructor(
    private readonly cluster: TestCluster,
    readonly links: ReadonlyMap<string, LinkProxy>,
  ) {}

  static async start(cluster: TestCluster): Promise<LinkMesh> {
    const links = new Map<string, LinkProxy>();
    for (const local of cluster.nodes) {
      for (const peer of cluster.nodes) {
        if (peer === local) continue;
        const name = `${peer.name}->${local.name}`;
        links.set(name, await LinkProxy.start(name, peer.server.port));
      }
    }
    return new LinkMesh(cluster, links);
  }

  link(peer: string, local: string): LinkProxy {
    const proxy = this.links.get(`${peer}->${local}`);
    if (!proxy) throw new Error(`no link ${peer}->${local}`);
    return proxy;
  }

  /** The environment for `local`'s agent process: its connections to each peer go through that link's proxy. */
  agentEnv(local: string): Record<string, string> {
    const env: Record<string, string> = {};
    for (const peer of this.cluster.nodes) {
      if (peer.name === local) continue;
      const dsn = new URL(peer.server.dsn);
      dsn.port = String(this.link(peer.name, local).port);
      env[`PGMESH_DSN_${peer.name.toUpperCase()}`] = dsn.toString();
    }
    return env;
  }

  releaseAll(): void {
    for (const proxy of this.links.values()) proxy.release();
  }

  async close(): Promise<void> {
    await Promise.all([...this.links.values()].map((proxy) => proxy.close()));
  }
}
