/**
 * The agent of one node: the composition root. It checks the node, then runs one PeerReplicator per peer
 * (every other node of the configuration), and stops them in reverse order.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { connectionError, openSql, type Sql } from '../pg/connect.ts';
import { requireLocalNode } from '../cluster/node-admin.ts';
import { CATALOG_VERSION } from '../cluster/catalog-schema.ts';
import { checkServerFacts, formatProblems, readServerFacts, serverWarnings } from '../cluster/server-checks.ts';
import { formatMissingPrivileges, missingAgentPrivileges } from '../cluster/agent-privileges.ts';
import { findNode, type ClusterConfig, type NodeConfig } from '../config/config.ts';
import { readMembership } from '../membership/membership-state.ts';
import { errorMessage } from '../core/errors.ts';
import { ClockMonitor, type ClockReading } from './clock-monitor.ts';
import { PeerReplicator, type PeerStatus } from './peer-replicator.ts';
import { VersionHorizonKeeper } from './version-horizon.ts';

export interface AgentStatus {
  readonly node: string;
  readonly startedAt: string;
  readonly peers: readonly (PeerStatus & { readonly clock: ClockReading | null })[];
}

export class Agent {
  private readonly startedAt = new Date();
  private gcTimer: NodeJS.Timeout | undefined;
  private horizon: VersionHorizonKeeper | undefined;

  private constructor(
    readonly node: string,
    private readonly catalog: Sql,
    private readonly replicators: Map<string, PeerReplicator>,
    private readonly clocks: Map<string, ClockMonitor>,
    private readonly logger: Logger,
    private config: ClusterConfig,
  ) {}

  private now: (() => number) | undefined;

  private startMaintenance(intervalMs: number, marginMs: number): void {
    this.gcTimer = setInterval(() => {
      this.catalog
        .unsafe<{ removed: string }[]>(`SELECT pgmesh.gc_tombstones(interval '${Math.round(marginMs)} milliseconds')::text AS removed`)
        .then((rows) => {
          const removed = Number(rows[0]?.removed ?? 0);
          if (removed > 0) this.logger.debug({ removed }, 'tombstones collected');
        })
        .catch((error) => this.logger.warn({ err: errorMessage(error) }, 'tombstone collection failed'));
    }, intervalMs);
    this.gcTimer.unref();
    // Row versions are judged against the same horizon as tombstones, so they are kept as long (docs/design.md).
    this.horizon = new VersionHorizonKeeper({
      localNode: this.node,
      localDsn: findNode(this.config, this.node).dsn,
      intervalMs,
      marginMs,
      logger: this.logger,
    });
    this.horizon.start();
  }

  /** `options.now`: the local clock peers' commit timestamps are judged against (future-commits.ts); tests fake it. */
  static async start(config: ClusterConfig, nodeName: string, logger: Logger, options: { now?: () => number } = {}): Promise<Agent> {
    const self = findNode(config, nodeName);
    const peers = config.nodes.filter((n) => n.name !== nodeName);
    if (peers.length === 0) {
      throw new PgmeshError('CONFIG_INVALID', `node ${nodeName} has no peers in the configuration; add at least one other node`);
    }
    const log = logger.child({ node: nodeName });
    const catalog = openSql(self.dsn, { node: nodeName, applicationName: `pgmesh agent ${nodeName}`, logger: log, max: 2 });
    try {
      const facts = await readServerFacts(catalog).catch((error) => {
        throw connectionError(error, nodeName, self.dsn);
      });
      const problems = checkServerFacts(facts, peers.length);
      if (problems.length > 0) throw new PgmeshError('SERVER_SETTINGS', formatProblems(nodeName, problems), { context: { node: nodeName } });
      for (const warning of serverWarnings(facts)) log.warn({}, warning);
      // Every missing privilege at once, each with its GRANT, rather than the first one the agent would trip on.
      const needed = await missingAgentPrivileges(catalog, facts.currentUser);
      // Rights a replicated table's owner controls: without them that table's changes become exceptions; the agent
      // starts, or any table's owner could stop replication for every other table by a REVOKE and a restart.
      const ownerControlled = needed.filter((m) => m.ownerControlled);
      if (ownerControlled.length > 0) {
        log.warn({ lacking: ownerControlled.map((m) => m.privilege) }, 'the agent\'s role lacks rights on replicated tables: their changes will go to pgmesh.exception; "pgmesh check" lists each with its GRANT');
      }
      const lacking = needed.filter((m) => !m.ownerControlled);
      if (lacking.length > 0) {
        throw new PgmeshError('INSUFFICIENT_PRIVILEGE', formatMissingPrivileges(nodeName, facts.currentUser, lacking).join('\n'), { context: { node: nodeName } });
      }
      await requireLocalNode(catalog, nodeName);
      const versions = await catalog.unsafe<{ version: number }[]>(`SELECT version FROM pgmesh.catalog_version`);
      const version = versions[0]?.version ?? 0;
      if (version < CATALOG_VERSION) {
        throw new PgmeshError(
          'NOT_INITIALIZED',
          `the pgmesh catalog on node ${nodeName} is version ${version}, and this pgmesh needs version ${CATALOG_VERSION}; run "pgmesh init --node ${nodeName}" (or "pgmesh cluster create") to upgrade it`,
          { context: { node: nodeName } },
        );
      }
      // Code of a table's owner that the apply session would run with the agent's rights is refused by every node's
      // DDL (docs/security.md, "Whose rights code runs with"); a catalog upgraded with such code in place, or a table
      // changed while the guard was disabled, is refused here.
      await catalog.unsafe(`SELECT pgmesh.check_owner_code()`).catch((error: { message?: string; hint?: string }) => {
        throw new PgmeshError('CONFIG_INVALID', `node ${nodeName}: ${error.message ?? String(error)}; ${error.hint ?? ''}`, { cause: error, context: { node: nodeName } });
      });
      const membership = await readMembership(catalog);
      if (membership?.state === 'joining') {
        throw new PgmeshError(
          'NOT_INITIALIZED',
          `node ${nodeName} is still joining (its copy from ${membership.source} has not finished: ${membership.phase ?? 'not started'}); run "pgmesh node add ${nodeName}" again to finish it, or "pgmesh node remove ${nodeName}"`,
          { context: { node: nodeName } },
        );
      }
      if (membership?.state === 'resyncing') {
        throw new PgmeshError(
          'NOT_INITIALIZED',
          `node ${nodeName} is being resynced (its copy from ${membership.source} has not finished: ${membership.phase ?? 'not started'}); run "pgmesh node resync ${nodeName}" again to finish it`,
          { context: { node: nodeName } },
        );
      }
      if (membership?.state === 'removed') {
        throw new PgmeshError('NOT_INITIALIZED', `node ${nodeName} was removed from the cluster ("pgmesh node remove"); take it out of the configuration, or bring it back with "pgmesh node resync ${nodeName}" (or node add)`, {
          context: { node: nodeName },
        });
      }
      const missing = await unlinkedPeers(catalog, peers);
      if (missing.length > 0) {
        throw new PgmeshError(
          'NOT_INITIALIZED',
          `node ${nodeName} is not linked with ${missing.join(', ')}; run "pgmesh cluster create" (it links every pair of nodes in the configuration), or "pgmesh node add" for a node that joins a running cluster`,
        );
      }
    } catch (error) {
      await catalog.end({ timeout: 1 }).catch(() => undefined);
      throw error;
    }
    const agent = new Agent(nodeName, catalog, new Map(), new Map(), log, config);
    agent.now = options.now;
    for (const peer of peers) agent.startPeer(peer);
    agent.startMaintenance(config.tuning.tombstoneGcIntervalMs, config.tuning.tombstoneMarginMs);
    log.info({ peers: peers.map((p) => p.name) }, 'agent started');
    return agent;
  }

  private startPeer(peer: NodeConfig): void {
    const replicator = new PeerReplicator({
      peer: peer.name,
      peerDsn: peer.dsn,
      localNode: this.node,
      localDsn: findNode(this.config, this.node).dsn,
      catalog: this.catalog,
      tuning: this.config.tuning,
      logger: this.logger,
      ...(this.now ? { now: this.now } : {}),
    });
    const clock = new ClockMonitor({
      peer: peer.name,
      peerDsn: peer.dsn,
      localNode: this.node,
      catalog: this.catalog,
      warnMs: this.config.tuning.clockSkewWarnMs,
      intervalMs: 10_000,
      logger: this.logger,
    });
    this.replicators.set(peer.name, replicator);
    this.clocks.set(peer.name, clock);
    replicator.start();
    clock.start();
  }

  private async stopPeer(peer: string): Promise<void> {
    const clock = this.clocks.get(peer);
    const replicator = this.replicators.get(peer);
    this.clocks.delete(peer);
    this.replicators.delete(peer);
    await clock?.stop();
    await replicator?.stop();
  }

  /**
   * Takes a new configuration (SIGHUP of "pgmesh start", after "pgmesh node add" or "node remove"): streams from
   * nodes that joined, stops streaming from nodes that left. A new peer that this node is not linked with yet is
   * left out (and reported) until the next reload. Streams of peers that stay are not touched.
   */
  async reload(config: ClusterConfig): Promise<{ added: string[]; removed: string[]; notLinked: string[] }> {
    const peers = config.nodes.filter((n) => n.name !== this.node);
    const removed = [...this.replicators.keys()].filter((name) => !peers.some((p) => p.name === name));
    for (const name of removed) await this.stopPeer(name);
    // A stream that stopped because its peer was unlinked (node remove, or a resync of the peer that was under way)
    // starts again if the peer is linked now.
    for (const [name, replicator] of this.replicators) if (replicator.status().state === 'stopped') await this.stopPeer(name);
    const candidates = peers.filter((p) => !this.replicators.has(p.name));
    const notLinked = await unlinkedPeers(this.catalog, candidates);
    this.config = config;
    const added: string[] = [];
    for (const peer of candidates) {
      if (notLinked.includes(peer.name)) continue;
      this.startPeer(peer);
      added.push(peer.name);
    }
    if (notLinked.length > 0) this.logger.warn({ peers: notLinked }, 'not linked with these nodes yet; run "pgmesh node add" for them, then reload again');
    this.logger.info({ added, removed }, 'configuration reloaded');
    return { added, removed, notLinked };
  }

  status(): AgentStatus {
    return {
      node: this.node,
      startedAt: this.startedAt.toISOString(),
      peers: [...this.replicators.values()].map((r) => {
        const status = r.status();
        return { ...status, clock: this.clocks.get(status.peer)?.current() ?? null };
      }),
    };
  }

  async stop(): Promise<void> {
    if (this.gcTimer) clearInterval(this.gcTimer);
    await this.horizon?.stop();
    await Promise.all([...this.clocks.values()].map((c) => c.stop()));
    await Promise.all([...this.replicators.values()].map((r) => r.stop()));
    await this.catalog.end({ timeout: 2 }).catch(() => undefined);
  }
}

/** Peers that this node has no link from yet (no progress row). */
async function unlinkedPeers(catalog: Sql, peers: readonly NodeConfig[]): Promise<string[]> {
  const linked = await catalog.unsafe<{ peer: string }[]>(`SELECT peer FROM pgmesh.apply_progress`);
  return peers.filter((p) => !linked.some((l) => l.peer === p.name)).map((p) => p.name);
}
