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
import { findNode, type ClusterConfig } from '../config/config.ts';
import { errorMessage } from '../core/errors.ts';
import { ClockMonitor, type ClockReading } from './clock-monitor.ts';
import { PeerReplicator, type PeerStatus } from './peer-replicator.ts';

export interface AgentStatus {
  readonly node: string;
  readonly startedAt: string;
  readonly peers: readonly (PeerStatus & { readonly clock: ClockReading | null })[];
}

export class Agent {
  private readonly startedAt = new Date();
  private gcTimer: NodeJS.Timeout | undefined;

  private constructor(
    readonly node: string,
    private readonly catalog: Sql,
    private readonly replicators: readonly PeerReplicator[],
    private readonly clocks: ReadonlyMap<string, ClockMonitor>,
    private readonly logger: Logger,
  ) {}

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
  }

  static async start(config: ClusterConfig, nodeName: string, logger: Logger): Promise<Agent> {
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
      const lacking = await missingAgentPrivileges(catalog, facts.currentUser);
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
      const linked = await catalog.unsafe<{ peer: string }[]>(`SELECT peer FROM pgmesh.apply_progress`);
      const missing = peers.filter((p) => !linked.some((l) => l.peer === p.name)).map((p) => p.name);
      if (missing.length > 0) {
        throw new PgmeshError(
          'NOT_INITIALIZED',
          `node ${nodeName} is not linked with ${missing.join(', ')}; run "pgmesh cluster create" (it links every pair of nodes in the configuration)`,
        );
      }
    } catch (error) {
      await catalog.end({ timeout: 1 }).catch(() => undefined);
      throw error;
    }
    const replicators = peers.map(
      (peer) =>
        new PeerReplicator({
          peer: peer.name,
          peerDsn: peer.dsn,
          localNode: nodeName,
          localDsn: self.dsn,
          catalog,
          tuning: config.tuning,
          logger: log,
        }),
    );
    const clocks = new Map(
      peers.map((peer) => [
        peer.name,
        new ClockMonitor({
          peer: peer.name,
          peerDsn: peer.dsn,
          localNode: nodeName,
          catalog,
          warnMs: config.tuning.clockSkewWarnMs,
          intervalMs: 10_000,
          logger: log,
        }),
      ]),
    );
    for (const r of replicators) r.start();
    for (const c of clocks.values()) c.start();
    const agent = new Agent(nodeName, catalog, replicators, clocks, log);
    agent.startMaintenance(config.tuning.tombstoneGcIntervalMs, config.tuning.tombstoneMarginMs);
    log.info({ peers: peers.map((p) => p.name) }, 'agent started');
    return agent;
  }

  status(): AgentStatus {
    return {
      node: this.node,
      startedAt: this.startedAt.toISOString(),
      peers: this.replicators.map((r) => {
        const status = r.status();
        return { ...status, clock: this.clocks.get(status.peer)?.current() ?? null };
      }),
    };
  }

  async stop(): Promise<void> {
    if (this.gcTimer) clearInterval(this.gcTimer);
    await Promise.all([...this.clocks.values()].map((c) => c.stop()));
    await Promise.all(this.replicators.map((r) => r.stop()));
    await this.catalog.end({ timeout: 2 }).catch(() => undefined);
  }
}
