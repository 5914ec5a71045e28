/**
 * Operations over every node of a configuration: create the cluster (init each node, choose the tables, link every
 * ordered pair) and read its status. The CLI commands `cluster create` and `status` are thin shells over these.
 */
import { shareClusterKey } from '../ddl/message-auth.ts';
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { isoTimestampSql } from '../core/pg-time.ts';
import { APPLY_RETRY_REASONS, SQLSTATE, sqlState } from '../core/sqlstate.ts';
import { connectionError, openSql, type Sql } from '../pg/connect.ts';
import { describeEndpoint } from '../pg/dsn.ts';
import type { ClusterConfig, NodeConfig } from '../config/config.ts';
import { publisherSlotName, slotSubscriber } from './link-names.ts';
import { diffSchemaDumps, readSchemaDump, schemaFingerprint as schemaFingerprintOf, type SchemaDifference, type SchemaDump } from './schema-dump.ts';
import {
  addTables,
  ensurePeer,
  ensureSlotFor,
  initNode,
  initProblems,
  listUserTables,
  readLocalNode,
  removeTables,
  requireLocalNode,
  requireUserTables,
  type AddTablesResult,
  type RemoveTablesResult,
  type TableRef,
  type TableRefusal,
} from './node-admin.ts';
import { interleaveSequences, memberProblems, readSequenceStatus, type Member } from './sequences.ts';
import { readMembership, type Membership } from '../membership/membership-state.ts';
import { assessMembership, type LeftoverSlot, type MemberFacts, type ResyncReason } from '../membership/membership-status.ts';
import { ackFloor, readSlotHealth, type SlotHealth } from '../membership/slot-health.ts';
import { formatLsn } from '../core/lsn.ts';
import { ensureClusterId, readPeerIdentity, type PeerIdentity } from './peer-identity.ts';

export interface CreateClusterResult {
  readonly nodes: readonly { readonly name: string; readonly created: boolean; readonly tables: AddTablesResult }[];
  readonly slotsCreated: number;
}

async function withNodes<T>(config: ClusterConfig, logger: Logger, fn: (conns: Map<string, Sql>) => Promise<T>): Promise<T> {
  const conns = new Map<string, Sql>();
  try {
    for (const node of config.nodes) conns.set(node.name, openSql(node.dsn, { node: node.name, applicationName: 'pgmesh admin', logger, max: 1 }));
    // All at once: with several nodes down, the wait is one connect timeout, not one per node.
    const failures = await Promise.all(
      config.nodes.map((node) =>
        (conns.get(node.name) as Sql).unsafe('SELECT 1').then(
          () => undefined,
          (error: unknown) => connectionError(error, node.name, node.dsn),
        ),
      ),
    );
    const problems = failures.filter((f) => f !== undefined);
    if (problems.length > 0) {
      const code = problems.every((p) => p.code === 'AUTH_FAILED') ? 'AUTH_FAILED' : 'CONNECTION_FAILED';
      throw new PgmeshError(code, problems.map((p) => p.message).join('\n'));
    }
    return await fn(conns);
  } finally {
    await Promise.all([...conns.values()].map((s) => s.end({ timeout: 2 }).catch(() => undefined)));
  }
}

export interface CreateClusterOptions {
  readonly tables: readonly TableRef[] | 'all';
  /** The role the agents will connect as, on every node: it gets what an agent needs (agent-privileges.ts). */
  readonly agentRole?: string;
}

/**
 * Makes every configured node a member of one full mesh. The nodes' replicated tables must hold the same rows
 * when this runs (empty, or restored from one backup): streams start from now. Idempotent.
 */
export async function createCluster(config: ClusterConfig, logger: Logger, options: CreateClusterOptions = { tables: 'all' }): Promise<CreateClusterResult> {
  if (config.nodes.length < 2) throw new PgmeshError('CONFIG_INVALID', 'a cluster needs at least two nodes in the configuration');
  requireUserTables(options.tables);
  return withNodes(config, logger, async (conns) => {
    const nodes: { name: string; created: boolean; tables: AddTablesResult }[] = [];
    const initOptions = (index: number, node: NodeConfig) => ({
      nodeName: node.name,
      nodeSlot: index + 1,
      maxNodes: config.maxNodes,
      expectedPeers: config.nodes.length - 1,
      agentRole: options.agentRole,
    });
    // Every node's problems are reported, and fixed, before anything is installed anywhere.
    const problems: PgmeshError[] = [];
    for (const [index, node] of config.nodes.entries()) {
      problems.push(...(await initProblems(conns.get(node.name) as Sql, initOptions(index, node))));
    }
    // Slots and maxNodes as they are (nodes already initialized keep theirs) or will be: sequences interleave by them.
    const members: Member[] = [];
    for (const [index, node] of config.nodes.entries()) {
      const existing = await readLocalNode(conns.get(node.name) as Sql);
      members.push(
        existing
          ? { node: node.name, slot: existing.nodeSlot, maxNodes: existing.maxNodes, initialized: true }
          : { node: node.name, slot: index + 1, maxNodes: config.maxNodes, initialized: false },
      );
    }
    for (const problem of memberProblems(members, config.maxNodes)) problems.push(new PgmeshError('CONFIG_INVALID', problem));
    if (problems.length > 0) {
      throw new PgmeshError(problems[0]?.code ?? 'SERVER_SETTINGS', problems.map((p) => p.message).join('\n'));
    }
    const inits = new Map<string, boolean>();
    for (const [index, node] of config.nodes.entries()) {
      inits.set(node.name, (await initNode(conns.get(node.name) as Sql, initOptions(index, node))).created);
    }
    // One cluster key on every node: the first node's (docs/security.md, "Authenticated messages"). Also how an
    // existing cluster gets one on upgrade: each node's catalog upgrade made its own.
    const [first, ...others] = config.nodes;
    if (first) await shareClusterKey(conns.get(first.name) as Sql, others.map((n) => ({ name: n.name, sql: conns.get(n.name) as Sql })));
    const tables = await addTablesEverywhere(conns, options.tables);
    for (const node of config.nodes) {
      nodes.push({ name: node.name, created: inits.get(node.name) ?? false, tables: tables.get(node.name) as AddTablesResult });
    }
    let slotsCreated = 0;
    // One cluster id on every node (refused when they already have different ones), then each link records who its
    // peer is, read on the peer's own connection.
    await ensureClusterId(conns);
    const identities = new Map<string, PeerIdentity>();
    for (const node of config.nodes) identities.set(node.name, await readPeerIdentity(conns.get(node.name) as Sql));
    for (const [i, publisher] of config.nodes.entries()) {
      for (const [j, subscriber] of config.nodes.entries()) {
        if (i === j) continue;
        // The origin and progress row on the subscriber exist before the slot, so nothing streamed is unaccounted.
        const publisherSql = conns.get(publisher.name) as Sql;
        await ensurePeer(conns.get(subscriber.name) as Sql, {
          name: publisher.name,
          nodeSlot: i + 1,
          endpoint: describeEndpoint(publisher.dsn),
          identity: identities.get(publisher.name) as PeerIdentity,
          slot: await publisherSlotName(publisherSql, subscriber.name),
        });
        if ((await ensureSlotFor(publisherSql, subscriber.name)).created) slotsCreated++;
      }
    }
    return { nodes, slotsCreated };
  });
}

function tableKey(table: TableRef): string {
  return JSON.stringify([table.schema, table.name]);
}

/**
 * Adds tables on every node or on none. A table that one node publishes and another cannot take (missing there, or
 * without a primary key there) would stop that node's whole stream from the first: its changes cannot be placed.
 * So each table is checked on every node first, and one refused anywhere is added nowhere, with every node's reason.
 */
export async function addTablesEverywhere(conns: ReadonlyMap<string, Sql>, tables: readonly TableRef[] | 'all'): Promise<Map<string, AddTablesResult>> {
  const candidates = new Map<string, TableRef>();
  if (tables === 'all') {
    // Every node's tables: one that exists on only some nodes must be reported, not quietly added where it exists.
    for (const sql of conns.values()) for (const t of await listUserTables(sql)) candidates.set(tableKey(t), t);
  } else {
    for (const t of tables) candidates.set(tableKey(t), t);
  }
  const reasons = new Map<string, { node: string; problem: TableRefusal['problem']; reason: string }[]>();
  const publishedOn = new Map<string, string[]>();
  for (const [node, sql] of conns) {
    const dry = await addTables(sql, [...candidates.values()], { dryRun: true });
    for (const refusal of dry.refused) {
      const key = tableKey(refusal);
      reasons.set(key, [...(reasons.get(key) ?? []), { node, problem: refusal.problem, reason: refusal.reason }]);
    }
    for (const t of dry.alreadyReplicated) publishedOn.set(tableKey(t), [...(publishedOn.get(tableKey(t)) ?? []), node]);
  }
  const refusedEverywhere: TableRefusal[] = [];
  for (const [key, byNode] of reasons) {
    const table = candidates.get(key) as TableRef;
    const first = byNode[0];
    if (!first) continue;
    if (byNode.length === conns.size && byNode.every((r) => r.reason === first.reason)) {
      refusedEverywhere.push({ ...table, problem: first.problem, reason: first.reason });
      continue;
    }
    const where = byNode.map((r) =>
      r.problem === 'missing'
        ? `it does not exist on ${r.node}; create it there with the same columns and primary key`
        : `on ${r.node}: ${r.reason}`,
    );
    // Added earlier on some nodes (by `init`, or by hand): say so, that is where changes are already coming from.
    const published = publishedOn.get(key);
    const state = published
      ? `is replicated on ${published.join(', ')} but cannot be on every node (until it is, those nodes' changes to it cannot be applied)`
      : 'is not replicated on any node, because every node must replicate it';
    refusedEverywhere.push({ ...table, problem: 'refused_elsewhere', reason: `table ${table.schema}.${table.name} ${state}: ${where.join('; ')}` });
  }
  const accepted = [...candidates.entries()].filter(([key]) => !reasons.has(key)).map(([, t]) => t);
  // Before a table is published, its sequences hand out node-interleaved values (or it is refused).
  const sequences = await interleaveSequences(conns, accepted);
  refusedEverywhere.push(...sequences.refused);
  const refusedKeys = new Set(sequences.refused.map(tableKey));
  const ready = accepted.filter((t) => !refusedKeys.has(tableKey(t)));
  const results = new Map<string, AddTablesResult>();
  for (const [node, sql] of conns) {
    const result = await addTables(sql, ready);
    results.set(node, { ...result, refused: [...result.refused, ...refusedEverywhere], sequences: sequences.byNode.get(node) ?? [] });
  }
  return results;
}

/** `pgmesh tables add`: the tables on every node of the configuration, or on none. */
export async function addClusterTables(
  config: ClusterConfig,
  logger: Logger,
  tables: readonly TableRef[],
): Promise<Record<string, AddTablesResult>> {
  requireUserTables(tables);
  return withNodes(config, logger, async (conns) => {
    await requireEveryLocalNode(config, conns);
    return Object.fromEntries(await addTablesEverywhere(conns, tables));
  });
}

async function requireEveryLocalNode(config: ClusterConfig, conns: ReadonlyMap<string, Sql>): Promise<void> {
  const problems: string[] = [];
  for (const node of config.nodes) {
    await requireLocalNode(conns.get(node.name) as Sql, node.name).catch((error: unknown) => problems.push(errorMessage(error)));
  }
  if (problems.length > 0) throw new PgmeshError('NOT_INITIALIZED', problems.join('\n'));
}

/**
 * `pgmesh tables remove`: the tables leave replication on every node of the configuration (every node is reached
 * before any changes). Their rows stay on every node, as they are; from then on each node's writes to them stay there.
 */
export async function removeClusterTables(
  config: ClusterConfig,
  logger: Logger,
  tables: readonly TableRef[],
): Promise<Record<string, RemoveTablesResult>> {
  requireUserTables(tables);
  return withNodes(config, logger, async (conns) => {
    await requireEveryLocalNode(config, conns);
    const results: Record<string, RemoveTablesResult> = {};
    for (const node of config.nodes) results[node.name] = await removeTables(conns.get(node.name) as Sql, tables);
    return results;
  });
}

/** `pgmesh schema diff`: every node's schema compared; the lines that not every node has. */
export async function clusterSchemaDiff(config: ClusterConfig, logger: Logger): Promise<{ fingerprints: Record<string, string>; differences: SchemaDifference[] }> {
  return withNodes(config, logger, async (conns) => {
    const dumps = new Map<string, SchemaDump>();
    for (const [node, sql] of conns) dumps.set(node, await readSchemaDump(sql));
    const fingerprints = Object.fromEntries([...dumps].map(([node, dump]) => [node, schemaFingerprintOf(dump)]));
    return { fingerprints, differences: diffSchemaDumps(dumps) };
  });
}

export interface LinkStatus {
  readonly from: string;
  readonly to: string;
  /** A walsender is streaming the slot (the subscriber's agent is connected). */
  readonly streaming: boolean;
  readonly slotStatus: string;
  /** The share (0-1) of max_slot_wal_keep_size the slot's retained WAL takes; null when there is no limit. */
  readonly walLimitUsed: number | null;
  /** WAL the publisher has written that the subscriber has not confirmed durable. */
  readonly lagBytes: number | null;
  readonly appliedXacts: number | null;
  readonly lastAppliedAt: string | null;
  readonly lastRemoteCommit: string | null;
  /** The publisher's clock minus the subscriber's, as the subscriber's agent last measured it. */
  readonly clockSkewMs: number | null;
  /** The skew is past tuning.clockSkewWarnMs: last-update-wins may pick the wrong winner. */
  readonly clockSkewWarning: boolean;
  readonly conflicts: number | null;
  readonly pausedReason: string | null;
  /** Transactions of this link applied again in place after a deadlock, serialization failure or lock timeout. */
  readonly applyRetries: number | null;
  /** A transaction of this link is being retried now: since when (its first failure) and why. */
  readonly retrying: { readonly since: string; readonly reason: string } | null;
  /** The apply session of this link waits for a lock now (read from pg_stat_activity and pg_locks). */
  readonly lockWait: LockWait | null;
}

/** What the apply session of a link waits for, and who holds it (the sessions pg_blocking_pids names). */
export interface LockWait {
  readonly pid: number;
  /** The table, when the lock names one (a row lock or a table lock); null when it waits for a transaction only. */
  readonly table: string | null;
  readonly since: string | null;
  readonly blockedBy: readonly { readonly pid: number; readonly state: string | null; readonly since: string | null; readonly applicationName: string | null }[];
}

export interface NodeStatus {
  readonly name: string;
  readonly endpoint: string;
  readonly reachable: boolean;
  readonly error: string | null;
  readonly serverVersion: string | null;
  readonly initialized: boolean;
  readonly replicatedTables: number | null;
  readonly openExceptions: number | null;
  /**
   * Sequences that feed replicated tables: how many hand out only this node's values, and those that do not (created
   * or altered after their table joined replication: "pgmesh tables add" for the table interleaves them).
   */
  readonly sequences: { readonly interleaved: number; readonly notInterleaved: readonly string[] } | null;
  /** A hash of the node's schema (see schema-dump.ts): equal on nodes whose schemas are alike. */
  readonly schemaFingerprint: string | null;
  /** What the node keeps so that row versions last (docs/conflicts.md, "Versions"); null before its agent made it. */
  readonly versionHorizon: VersionHorizonStatus | null;
  /**
   * Its pgmesh.membership row: joining / resyncing (with the copy's progress), member, removed; null for a node made
   * by cluster create (a member) or not reachable.
   */
  readonly membership: Membership | null;
  /** Why it needs "pgmesh node resync" (empty when it does not): src/membership/membership-status.ts. */
  readonly needsResync: readonly ResyncReason[];
  /** Per replicated table, the copy of a joining or resyncing node (rows and bytes so far); empty otherwise. */
  readonly copyTables: readonly TableCopy[];
}

export interface TableCopy {
  readonly relation: string;
  readonly state: string;
  readonly rowsEstimated: number | null;
  readonly rows: number;
  readonly bytes: number;
}

/** The per-table record of the node's copy (pgmesh.membership_table, where the catalog has it). */
async function readTableCopies(sql: Sql): Promise<TableCopy[]> {
  const exists = await sql.unsafe<{ ok: boolean }[]>(`SELECT to_regclass('pgmesh.membership_table') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return [];
  const rows = await sql.unsafe<{ relation: string; state: string; estimated: string | null; rows: string | null; bytes: string | null }[]>(
    `SELECT j ->> 'relation' AS relation, j ->> 'state' AS state, j ->> 'rows_estimated' AS estimated,
            j ->> 'rows_copied' AS rows, j ->> 'bytes_copied' AS bytes
       FROM pgmesh.membership_table t, to_jsonb(t) j ORDER BY 1`,
  );
  return rows.map((r) => ({
    relation: r.relation,
    state: r.state,
    rowsEstimated: r.estimated === null ? null : Number(r.estimated),
    rows: Number(r.rows ?? 0),
    bytes: Number(r.bytes ?? 0),
  }));
}

export interface VersionHorizonStatus {
  readonly slot: string;
  /** The slot's wal_status ('missing' when it is gone, 'lost' when invalidated). */
  readonly slotStatus: string;
  /** Versions written up to this time may be forgotten here; later ones are kept. Null until every peer was heard. */
  readonly stableTs: string | null;
  /** Versions written since this time are kept: stableTs, or when the slot was made. */
  readonly keptSince: string | null;
  /** How many xids old the oldest commit timestamp kept for it is. */
  readonly heldXids: number | null;
  /** WAL the slot keeps on the node. */
  readonly retainedBytes: number | null;
}

export interface ClusterStatus {
  readonly at: string;
  readonly nodes: readonly NodeStatus[];
  readonly links: readonly LinkStatus[];
  /** Slots that hold WAL for a node that is not a member (yet): what a failed node add or resync leaves. */
  readonly leftoverSlots: readonly LeftoverSlot[];
}

interface NodeFacts {
  status: NodeStatus;
  /** pgmesh's slots of the node's database, by the node each streams to. */
  slots: Map<string, { active: boolean; walStatus: string | null; lagBytes: number | null; walLimitUsed: number | null }>;
  progress: Map<string, PeerProgress>;
  /** For the membership assessment; undefined when the node could not be read. */
  member: MemberFacts | undefined;
}

interface PeerProgress {
  endLsn: string;
  appliedXacts: number;
  appliedAt: string | null;
  remoteCommit: string | null;
  skewMs: number | null;
  conflicts: number;
  pausedReason: string | null;
  applyRetries: number;
  retrying: LinkStatus['retrying'];
  lockWait: LockWait | null;
}

/** The apply sessions of this node that wait for a lock, by peer (their application_name is "pgmesh apply <peer>"). */
const LOCK_WAITS_SQL = `
SELECT substr(a.application_name, length('pgmesh apply ') + 1) AS peer, a.pid,
       ${isoTimestampSql('coalesce(w.waitstart, a.state_change)')} AS since,
       (SELECT n.nspname || '.' || c.relname
          FROM pg_catalog.pg_locks l
          JOIN pg_catalog.pg_class c ON c.oid = l.relation
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE l.pid = a.pid AND (NOT l.granted OR l.locktype = 'tuple')
         ORDER BY l.granted LIMIT 1) AS relation,
       (SELECT coalesce(json_agg(json_build_object('pid', b.pid, 'state', b.state, 'applicationName', b.application_name,
                                                   'since', ${isoTimestampSql('b.state_change')}) ORDER BY b.pid), '[]')::text
          FROM pg_catalog.pg_stat_activity b WHERE b.pid = ANY (pg_catalog.pg_blocking_pids(a.pid))) AS blockers
  FROM pg_catalog.pg_stat_activity a
  LEFT JOIN LATERAL (SELECT l.waitstart FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1) w ON true
 WHERE a.datname = pg_catalog.current_database() AND a.application_name LIKE 'pgmesh apply %' AND a.wait_event_type = 'Lock'`;

/** `opened` gets the node's connection, left open until every node has been read (see clusterStatus). */
async function readNode(node: NodeConfig, logger: Logger, opened: Map<string, Sql>): Promise<NodeFacts> {
  const sql = openSql(node.dsn, { node: node.name, applicationName: 'pgmesh status', logger, max: 1, connectTimeoutS: 5 });
  opened.set(node.name, sql);
  const base = { name: node.name, endpoint: describeEndpoint(node.dsn) };
  let reached: { version: string | null; initialized: boolean } | undefined;
  try {
    const info = await sql.unsafe<{ version: string; initialized: boolean; wal: string }[]>(
      `SELECT current_setting('server_version') AS version, to_regclass('pgmesh.local_node') IS NOT NULL AS initialized,
              pg_catalog.pg_current_wal_insert_lsn()::text AS wal`,
    );
    const initialized = info[0]?.initialized === true;
    reached = { version: info[0]?.version ?? null, initialized };
    const slots = new Map<string, { active: boolean; walStatus: string | null; lagBytes: number | null; walLimitUsed: number | null }>();
    // safe_wal_size: how much more WAL the slot may hold before max_slot_wal_keep_size invalidates it (NULL: no limit).
    for (const row of await sql.unsafe<{ slot_name: string; active: boolean; wal_status: string | null; lag: string | null; retained: string | null; safe: string | null }[]>(
      `SELECT slot_name, active, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text AS lag,
              pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text AS retained, safe_wal_size::text AS safe
         FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'pgmesh\\_%' AND database = current_database()`,
    )) {
      // By subscriber: the slot's name depends on when its link was made (src/cluster/link-names.ts).
      const subscriber = slotSubscriber(row.slot_name);
      if (subscriber === null) continue;
      const retained = row.retained === null ? null : Number(row.retained);
      const safe = row.safe === null ? null : Math.max(0, Number(row.safe));
      const walLimitUsed = retained === null || safe === null ? null : retained + safe === 0 ? 1 : retained / (retained + safe);
      slots.set(subscriber, { active: row.active, walStatus: row.wal_status, lagBytes: row.lag === null ? null : Number(row.lag), walLimitUsed });
    }
    const slotHealth: SlotHealth[] = await readSlotHealth(sql);
    const membership = initialized ? ((await readMembership(sql)) ?? null) : null;
    const copying = membership?.state === 'joining' || membership?.state === 'resyncing';
    const copyTables = copying ? await readTableCopies(sql) : [];
    const progress = new Map<string, PeerProgress>();
    let tables: number | null = null;
    let openExceptions: number | null = null;
    let sequences: NodeStatus['sequences'] = null;
    let versionHorizon: VersionHorizonStatus | null = null;
    const schemaFingerprint = schemaFingerprintOf(await readSchemaDump(sql));
    if (initialized) {
      const waits = new Map<string, LockWait>();
      for (const row of await sql.unsafe<{ peer: string; pid: number; since: string | null; relation: string | null; blockers: string }[]>(LOCK_WAITS_SQL)) {
        waits.set(row.peer, { pid: row.pid, table: row.relation, since: row.since, blockedBy: JSON.parse(row.blockers) as LockWait['blockedBy'] });
      }
      const retries = new Map<string, { applyRetries: number; retrying: LinkStatus['retrying'] }>();
      for (const row of await sql.unsafe<{ peer: string; retries: string; since: string | null; sqlstate: string | null }[]>(
        `SELECT peer, apply_retries::text AS retries, ${isoTimestampSql('retry_since')} AS since, retry_sqlstate AS sqlstate FROM pgmesh.apply_progress`,
      )) {
        retries.set(row.peer, {
          applyRetries: Number(row.retries),
          retrying: row.since === null ? null : { since: row.since, reason: APPLY_RETRY_REASONS[row.sqlstate ?? ''] ?? row.sqlstate ?? 'unknown' },
        });
      }
      for (const row of await sql.unsafe<
        { peer: string; end_lsn: string; applied_xacts: string; applied_at: string | null; remote_commit_ts: string | null; skew: string | null; conflicts: string; paused_reason: string | null; paused: boolean }[]
      >(
        `SELECT p.peer, p.end_lsn::text, p.applied_xacts::text, ${isoTimestampSql('p.applied_at')} AS applied_at,
                ${isoTimestampSql('p.remote_commit_ts')} AS remote_commit_ts, c.skew_ms::text AS skew,
                (SELECT count(*) FROM pgmesh.conflict f WHERE f.peer = p.peer)::text AS conflicts,
                p.paused_reason, p.paused_at IS NOT NULL AS paused
           FROM pgmesh.progress p LEFT JOIN pgmesh.peer_clock c USING (peer)`,
      )) {
        progress.set(row.peer, {
          endLsn: row.end_lsn,
          appliedXacts: Number(row.applied_xacts),
          appliedAt: row.applied_at,
          remoteCommit: row.remote_commit_ts,
          skewMs: row.skew === null ? null : Number(row.skew),
          conflicts: Number(row.conflicts),
          pausedReason: row.paused ? (row.paused_reason ?? 'paused') : null,
          applyRetries: retries.get(row.peer)?.applyRetries ?? 0,
          retrying: retries.get(row.peer)?.retrying ?? null,
          lockWait: waits.get(row.peer) ?? null,
        });
      }
      const t = await sql.unsafe<{ n: string; e: string }[]>(
        `SELECT (SELECT count(*) FROM pg_catalog.pg_publication_tables WHERE pubname = 'pgmesh')::text AS n,
                (SELECT count(*) FROM pgmesh.exception WHERE state = 'open')::text AS e`,
      );
      tables = Number(t[0]?.n ?? 0);
      openExceptions = Number(t[0]?.e ?? 0);
      versionHorizon = await readVersionHorizon(sql);
      const feeding = await readSequenceStatus(sql);
      sequences = { interleaved: feeding.filter((f) => f.interleaved).length, notInterleaved: feeding.filter((f) => !f.interleaved).map((f) => f.sequence) };
    }
    return {
      status: {
        ...base,
        reachable: true,
        error: null,
        serverVersion: info[0]?.version ?? null,
        initialized,
        replicatedTables: tables,
        openExceptions,
        sequences,
        schemaFingerprint,
        membership,
        needsResync: [],
        copyTables,
        versionHorizon,
      },
      slots,
      progress,
      member: initialized
        ? {
            name: node.name,
            membership: membership?.state,
            walLsn: info[0]?.wal ?? '0/0',
            slots: slotHealth,
            progress: new Map([...progress].map(([peer, p]) => [peer, p.endLsn])),
            acked: new Map(),
          }
        : undefined,
    };
  } catch (error) {
    // A server that answered and then failed a query is not UNREACHABLE: say what failed instead.
    const code = sqlState(error);
    const message = !reached
      ? connectionError(error, node.name, node.dsn).message
      : code === SQLSTATE.undefinedTable || code === SQLSTATE.undefinedColumn
        ? `node ${node.name}: its pgmesh catalog is older than this pgmesh (${errorMessage(error)}); run "pgmesh init --node ${node.name}" to upgrade it`
        : `node ${node.name}: reading its status failed: ${errorMessage(error)}`;
    return {
      status: {
        ...base,
        reachable: reached !== undefined,
        error: message,
        serverVersion: reached?.version ?? null,
        initialized: reached?.initialized ?? false,
        replicatedTables: null,
        openExceptions: null,
        sequences: null,
        schemaFingerprint: null,
        versionHorizon: null,
        membership: null,
        needsResync: [],
        copyTables: [],
      },
      slots: new Map(),
      progress: new Map(),
      member: undefined,
    };
  }
}

async function readVersionHorizon(sql: Sql): Promise<VersionHorizonStatus | null> {
  const rows = await sql.unsafe<{ slot: string; wal_status: string | null; stable_ts: string | null; since: string | null; held: string | null; retained: string | null }[]>(
    `SELECT v.slot_name AS slot, CASE WHEN s.slot_name IS NULL THEN 'missing' ELSE coalesce(s.wal_status, 'ok') END AS wal_status,
            ${isoTimestampSql('v.stable_ts')} AS stable_ts, ${isoTimestampSql('coalesce(v.stable_ts, v.created_at)')} AS since,
            age(s.catalog_xmin)::text AS held,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint::text AS retained
       FROM pgmesh.version_horizon v LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = v.slot_name`,
  );
  const row = rows[0];
  if (!row) return null;
  return {
    slot: row.slot,
    slotStatus: row.wal_status ?? 'missing',
    stableTs: row.stable_ts,
    keptSince: row.since,
    heldXids: row.held === null ? null : Number(row.held),
    retainedBytes: row.retained === null ? null : Number(row.retained),
  };
}

export async function clusterStatus(config: ClusterConfig, logger: Logger): Promise<ClusterStatus> {
  const opened = new Map<string, Sql>();
  try {
    return await readCluster(config, logger, opened);
  } finally {
    await Promise.all([...opened.values()].map((sql) => sql.end({ timeout: 1 }).catch(() => undefined)));
  }
}

async function readCluster(config: ClusterConfig, logger: Logger, opened: Map<string, Sql>): Promise<ClusterStatus> {
  const facts = await Promise.all(config.nodes.map((n) => readNode(n, logger, opened)));
  // Each node's WAL position again, now that every node's progress has been read: a peer's progress for a node is
  // then at or below the node's position unless the node's WAL went back (restored), never because of the order of
  // the reads under load.
  const members = await Promise.all(
    facts.map(async (f): Promise<MemberFacts | undefined> => {
      const sql = opened.get(f.status.name);
      if (!f.member || !sql) return undefined;
      // And how far it may have acknowledged each peer, read after the peers' slots (their confirmed positions).
      try {
        const rows = await sql.unsafe<{ wal: string }[]>(`SELECT pg_catalog.pg_current_wal_insert_lsn()::text AS wal`);
        const acked = new Map<string, { lsn: string; known: boolean }>();
        for (const peer of f.member.progress.keys()) {
          const floor = await ackFloor(sql, peer);
          acked.set(peer, { lsn: formatLsn(floor.lsn), known: floor.known });
        }
        return rows[0] ? { ...f.member, walLsn: rows[0].wal, acked } : undefined;
      } catch {
        return undefined;
      }
    }),
  );
  const links: LinkStatus[] = [];
  for (const from of facts) {
    for (const to of facts) {
      if (from === to) continue;
      const slot = from.slots.get(to.status.name);
      const progress = to.progress.get(from.status.name);
      links.push({
        from: from.status.name,
        to: to.status.name,
        streaming: slot?.active ?? false,
        slotStatus: !from.status.reachable ? 'unknown' : slot ? (slot.walStatus ?? 'ok') : 'missing',
        walLimitUsed: slot?.walLimitUsed ?? null,
        lagBytes: slot?.lagBytes ?? null,
        appliedXacts: progress?.appliedXacts ?? null,
        lastAppliedAt: progress?.appliedAt ?? null,
        lastRemoteCommit: progress?.remoteCommit ?? null,
        clockSkewMs: progress?.skewMs ?? null,
        clockSkewWarning: progress?.skewMs !== undefined && progress.skewMs !== null && Math.abs(progress.skewMs) > config.tuning.clockSkewWarnMs,
        conflicts: progress?.conflicts ?? null,
        pausedReason: progress?.pausedReason ?? null,
        applyRetries: progress?.applyRetries ?? null,
        retrying: progress?.retrying ?? null,
        lockWait: progress?.lockWait ?? null,
      });
    }
  }
  const assessed = assessMembership(members.filter((m) => m !== undefined), config.nodes.map((n) => n.name));
  const nodes = facts.map((f) => ({ ...f.status, needsResync: assessed.resync.get(f.status.name) ?? [] }));
  return { at: new Date().toISOString(), nodes, links, leftoverSlots: assessed.leftoverSlots };
}
