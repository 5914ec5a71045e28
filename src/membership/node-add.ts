/**
 * `pgmesh node add`: a new node joins a running cluster, online, while every node keeps taking writes, with no row
 * lost, none applied twice and delta columns exactly once. docs/design.md ("Membership") says why each step is where
 * it is; in short:
 *
 *   1. checks: settings everywhere, the new node's schema against the source's, its tables empty
 *   2. the new node gets the catalog, the publication, its outbound slots (one per existing node), and is 'joining'
 *   3. every existing node X other than the source S gets a slot for the new node N (consistent point C_X), and then
 *      emits a marker transaction; S applies X's stream past the marker, so past C_X
 *   4. S creates its slot for N with an exported snapshot (consistent point C_S)
 *   5. in that snapshot: S's progress for each X (L_X >= C_X), and every replicated table, tombstones and table
 *      policies are copied, each row with its version
 *   6. N's stream from X starts at L_X and from S at C_S (progress rows and origins); every existing node gets N as
 *      a peer; N becomes 'member'
 *
 * Run again after any failure (the process killed, a server gone): it undoes what the last attempt left and starts
 * over. Until step 6 has finished the new node is 'joining' and its agent refuses to start.
 */
import { shareClusterKey } from '../ddl/message-auth.ts';
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import { connectionError, openSql, type ReservedSql, type Sql } from '../pg/connect.ts';
import { describeEndpoint } from '../pg/dsn.ts';
import { quoteLiteral, qualifiedName } from '../pg/quote.ts';
import { ReplicationConnection } from '../pg/replication-connection.ts';
import { queryInSnapshot } from '../pg/copy-stream.ts';
import { textArrayLiteral } from '../pg/text-array.ts';
import type { ClusterConfig, NodeConfig } from '../config/config.ts';
import { databaseOid, publisherSlotName, readAllLinkNames, replayOriginNameFor, type LinkNames } from '../cluster/link-names.ts';
import {
  addTables,
  ensurePeer,
  ensureSlotFor,
  initNode,
  initProblems,
  listReplicatedTables,
  readLocalNode,
  requireLocalNode,
  validateNodeName,
} from '../cluster/node-admin.ts';
import { checkServerFacts, formatProblems, readServerFacts } from '../cluster/server-checks.ts';
import { NODE_NAME_PATTERN } from '../pg/quote.ts';
import { dropSlotIfExists, dropSlotsFor, unlinkPeer } from './links.ts';
import { readMembership, resetCopyProgress, setMembership, writeCopyProgress, type JoinProgress } from './membership-state.ts';
import { readSlotHealth } from './slot-health.ts';
import { copyTombstones, copyUniqueClaims } from './table-copy.ts';
import { copyParallelism, copyTables, relationName, type TableJob } from './copy-tables.ts';
import { alignReplicaIdentity, diffTableShapes, readTableShapes, type TableShape } from './table-shapes.ts';
import { interleaveSequences } from '../cluster/sequences.ts';
import { ensureClusterId, readPeerIdentity } from '../cluster/peer-identity.ts';

export interface AddNodeOptions {
  readonly name: string;
  readonly dsn: string;
  /** The node whose data is copied; the first node of the configuration by default. */
  readonly from?: string | undefined;
  /** How long the source may take to apply every other node's changes past their new slots. */
  readonly catchUpTimeoutMs?: number | undefined;
  readonly onProgress?: ((progress: JoinProgress) => void) | undefined;
}

export interface AddNodeResult {
  readonly name: string;
  readonly source: string;
  readonly nodeSlot: number;
  /** The node was already a member: nothing was done. */
  readonly alreadyMember: boolean;
  readonly tables: number;
  readonly rows: number;
  readonly bytes: number;
  readonly copySeconds: number;
}

const DEFAULT_CATCH_UP_MS = 300_000;
const JOIN_MARKER_PREFIX = 'pgmesh.join';

/** One connection to every existing node, and one to the node that (re)joins. */
export interface JoinConnections {
  readonly existing: ReadonlyMap<string, Sql>;
  readonly joining: Sql;
}
type Conns = JoinConnections;

/**
 * How a node comes into the cluster: a new node ('joining', node add) or a node that was in it and is copied anew
 * ('resyncing', node resync: src/membership/node-resync.ts). Both take the same path; a resync keeps the node's slot
 * number and replaces its rows whatever they are.
 */
export interface JoinPlan {
  readonly state: 'joining' | 'resyncing';
  /** Runs after every check and before anything changes (a resync drains what the node wrote, or needs --force). */
  readonly beforeChanges?: ((conns: JoinConnections) => Promise<void>) | undefined;
}

export async function addNode(config: ClusterConfig, logger: Logger, options: AddNodeOptions): Promise<AddNodeResult> {
  return joinNode(config, logger, options, { state: 'joining' });
}

/** The path shared by node add and node resync (see the top of this file). */
export async function joinNode(config: ClusterConfig, logger: Logger, options: AddNodeOptions, plan: JoinPlan): Promise<AddNodeResult> {
  validateNodeName(options.name);
  const existing = config.nodes.filter((n) => n.name !== options.name);
  if (existing.length === 0) {
    throw new PgmeshError('CONFIG_INVALID', `the configuration has no node other than ${options.name} to add it to; list the cluster's nodes in it`);
  }
  const source = existing.find((n) => n.name === (options.from ?? existing[0]?.name));
  if (!source) {
    throw new PgmeshError('UNKNOWN_NODE', `--from ${options.from}: no such node in the configuration (nodes: ${existing.map((n) => n.name).join(', ')})`);
  }
  const log = logger.child({ joining: options.name });
  const conns = await connectAll(existing, { name: options.name, dsn: options.dsn }, log);
  try {
    // One add of this node at a time: the lock is held by this session until it ends (or its process dies).
    const locked = await conns.joining.unsafe<{ ok: boolean }[]>(`SELECT pg_try_advisory_lock(hashtext('pgmesh.join')) AS ok`);
    if (!locked[0]?.ok) {
      throw new PgmeshError('APPLY_FAILED', `another "pgmesh node add" or "node resync" of ${options.name} is running; wait for it to finish`);
    }
    return await join(config, conns, existing, source, options, plan, log);
  } finally {
    await Promise.all([conns.joining, ...conns.existing.values()].map((s) => s.end({ timeout: 2 }).catch(() => undefined)));
  }
}

/** The connection to an existing node (every node of the configuration has one). */
function memberSql(conns: Conns, name: string): Sql {
  const sql = conns.existing.get(name);
  if (!sql) throw new PgmeshError('INTERNAL', `no connection to node ${name}`);
  return sql;
}

async function connectAll(existing: readonly NodeConfig[], joining: NodeConfig, logger: Logger): Promise<Conns> {
  const open = (node: NodeConfig) => openSql(node.dsn, { node: node.name, applicationName: 'pgmesh node add', logger, max: 1 });
  const conns: Conns = { existing: new Map(existing.map((n) => [n.name, open(n)])), joining: open(joining) };
  const all = [...existing, joining];
  const failures = await Promise.all(
    all.map((node) => {
      const sql = node === joining ? conns.joining : memberSql(conns, node.name);
      return sql.unsafe('SELECT 1').then(
        () => undefined,
        (error: unknown) => connectionError(error, node.name, node.dsn),
      );
    }),
  );
  const problems = failures.filter((f) => f !== undefined);
  if (problems.length > 0) {
    await Promise.all([conns.joining, ...conns.existing.values()].map((s) => s.end({ timeout: 1 }).catch(() => undefined)));
    throw new PgmeshError(problems.every((p) => p.code === 'AUTH_FAILED') ? 'AUTH_FAILED' : 'CONNECTION_FAILED', problems.map((p) => p.message).join('\n'));
  }
  return conns;
}

async function join(
  config: ClusterConfig,
  conns: Conns,
  existing: readonly NodeConfig[],
  source: NodeConfig,
  options: AddNodeOptions,
  plan: JoinPlan,
  log: Logger,
): Promise<AddNodeResult> {
  const name = options.name;
  const sourceSql = memberSql(conns, source.name);
  const { nodeSlot, retry, alreadyMember } = await checkMembers(config, conns, existing, name, plan.state === 'resyncing');
  if (alreadyMember) {
    return { name, source: source.name, nodeSlot, alreadyMember: true, tables: 0, rows: 0, bytes: 0, copySeconds: 0 };
  }

  // 1. Every problem of every node at once, before anything changes.
  const problems: string[] = [];
  for (const node of existing) {
    const facts = await readServerFacts(memberSql(conns, node.name));
    const found = checkServerFacts(facts, existing.length);
    if (found.length > 0) problems.push(formatProblems(node.name, found));
  }
  const initOptions = { nodeName: name, nodeSlot, maxNodes: config.maxNodes, expectedPeers: existing.length };
  problems.push(...(await initProblems(conns.joining, initOptions)).map((p) => p.message));
  problems.push(...(await sourceStreamProblems(conns, existing, source.name)));
  const tables = await listReplicatedTables(sourceSql);
  const sourceShapes = await readTableShapes(sourceSql, tables);
  const targetShapes = await readTableShapes(conns.joining, tables);
  const differences = diffTableShapes(sourceShapes, targetShapes, { source: source.name, target: name });
  if (differences.length > 0) {
    problems.push(
      `the schema of ${name} differs from ${source.name}'s (create the replicated tables on ${name} as they are on ${source.name}, ` +
        `for example with pg_dump --schema-only, then run node add again):\n  ${differences.join('\n  ')}`,
    );
  } else if (!retry) {
    for (const shape of targetShapes.values()) {
      const rows = await conns.joining.unsafe<{ any: boolean }[]>(`SELECT EXISTS (SELECT 1 FROM ONLY ${shape.qualified}) AS any`);
      if (rows[0]?.any) {
        problems.push(`table ${shape.schema}.${shape.name} on ${name} holds rows; a joining node's replicated tables must be empty (node add copies them from ${source.name}): empty it and run node add again`);
      }
    }
  }
  if (problems.length > 0) throw new PgmeshError(differences.length > 0 ? 'SCHEMA_MISMATCH' : 'SERVER_SETTINGS', problems.join('\n'));
  await plan.beforeChanges?.(conns);

  // 2. The joining node: catalog, 'joining', and nothing left of an earlier attempt.
  await initNode(conns.joining, initOptions);
  // The cluster's key, so that its peers accept the messages it writes and it accepts theirs (docs/security.md).
  await shareClusterKey(memberSql(conns, source.name), [{ name, sql: conns.joining }]);
  // A catalog installed earlier (pgmesh init) may carry another slot number: the one chosen here is free.
  await conns.joining.unsafe(`UPDATE pgmesh.local_node SET node_slot = $1::text::int, max_nodes = greatest(max_nodes, $1::text::int)`, [String(nodeSlot)]);
  await setMembership(conns.joining, { state: plan.state, source: source.name, phase: 'preparing', tablesTotal: tables.length });
  log.info({ source: source.name, retry }, 'node add: preparing');
  // The node's own slots first: ending the streams they serve (a resync: the other nodes' agents stream from it)
  // releases the other nodes' apply sessions for it, whose origins are dropped next.
  for (const slot of await conns.joining.unsafe<{ slot_name: string }[]>(
    `SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'pgmesh\\_%' AND database = current_database()`,
  )) {
    await dropSlotIfExists(conns.joining, slot.slot_name, { terminate: true, node: name });
  }
  for (const node of existing) {
    const sql = memberSql(conns, node.name);
    await dropSlotsFor(sql, name, { terminate: true, node: node.name });
    await unlinkPeer(sql, name, node.name);
  }
  for (const peer of await conns.joining.unsafe<{ node_name: string }[]>(`SELECT node_name FROM pgmesh.peer`)) {
    await unlinkPeer(conns.joining, peer.node_name, name);
  }
  if (retry && targetShapes.size > 0) {
    await conns.joining.unsafe(`TRUNCATE ${[...targetShapes.values()].map((s) => s.qualified).join(', ')}`);
  }
  await conns.joining.unsafe(`TRUNCATE pgmesh.tombstone, pgmesh.version_override, pgmesh.unique_claim`);
  await addTables(conns.joining, tables);
  // Delta columns need the old row in the stream (pgmesh tables delta sets REPLICA IDENTITY FULL): the same here.
  await alignReplicaIdentity(conns.joining, sourceShapes, targetShapes);

  // Its links from every existing node (progress set at step 6), and its own slots before anything is copied, so
  // that whatever is written on it from now on reaches the others.
  const slots = await readNodeSlots(conns, existing);
  // The cluster's id, copied to the new node (made now for a cluster created before ids were), before any link
  // records it.
  const clusterId = await ensureClusterId(conns.existing);
  await conns.joining.unsafe(`UPDATE pgmesh.local_node SET cluster_id = $1::pg_catalog.text::pg_catalog.uuid`, [clusterId]);
  for (const node of existing) {
    await ensurePeer(conns.joining, {
      name: node.name,
      nodeSlot: slots.get(node.name) ?? 0,
      endpoint: describeEndpoint(node.dsn),
      identity: await readPeerIdentity(memberSql(conns, node.name)),
      // The slot for it there is made at step 3 (the source's at step 4) under this name.
      slot: await publisherSlotName(memberSql(conns, node.name), name),
    });
    await ensureSlotFor(conns.joining, node.name);
  }

  // 3. Slots for the new node on the other nodes, then the source past each of them.
  await setMembership(conns.joining, { phase: 'waiting for the source to catch up' });
  const markers = new Map<string, Lsn>();
  for (const node of existing) {
    if (node.name === source.name) continue;
    const sql = memberSql(conns, node.name);
    await ensureSlotFor(sql, name);
    const rows = await sql.unsafe<{ lsn: string }[]>(`SELECT pgmesh.emit_message($1, $2)::text AS lsn`, [JOIN_MARKER_PREFIX, name]);
    markers.set(node.name, parseLsn(rows[0]?.lsn ?? '0/0'));
  }
  await waitForSourceCatchUp(sourceSql, source.name, markers, options.catchUpTimeoutMs ?? DEFAULT_CATCH_UP_MS);

  // 4 and 5. The source's slot and its snapshot; the copy from that snapshot.
  const started = Date.now();
  const copied = await copyFromSnapshot(config, conns, source, existing, name, [...sourceShapes.values()], options, log);

  // Its sequences hand out its own slot's values, above every value in use on any node (the copied rows included);
  // the other nodes' are already interleaved and stay as they are.
  await interleaveSequences(new Map([...conns.existing, [name, conns.joining]]), tables);

  // 6. Every existing node streams from the new one; the new node is a member.
  const identity = await readPeerIdentity(conns.joining);
  for (const node of existing) {
    await ensurePeer(memberSql(conns, node.name), {
      name,
      nodeSlot,
      endpoint: describeEndpoint(options.dsn),
      identity,
      slot: await publisherSlotName(conns.joining, node.name),
    });
  }
  await setMembership(conns.joining, { state: 'member', phase: 'done', finished: true });
  log.info({ source: source.name, rows: copied.rows, bytes: copied.bytes }, 'node add: done');
  return {
    name,
    source: source.name,
    nodeSlot,
    alreadyMember: false,
    tables: tables.length,
    rows: copied.rows,
    bytes: copied.bytes,
    copySeconds: (Date.now() - started) / 1000,
  };
}

/**
 * Whether the node is new, joining again after a failed attempt, or already a member; and its slot number (for
 * interleaved sequences: one above every slot the cluster has used). The existing nodes must be members linked
 * with each other.
 */
async function checkMembers(
  config: ClusterConfig,
  conns: Conns,
  existing: readonly NodeConfig[],
  name: string,
  resync: boolean,
): Promise<{ nodeSlot: number; retry: boolean; alreadyMember: boolean }> {
  const problems: string[] = [];
  let highest = 0;
  for (const node of existing) {
    const sql = memberSql(conns, node.name);
    try {
      const local = await requireLocalNode(sql, node.name);
      highest = Math.max(highest, local.nodeSlot);
      const state = await readMembership(sql);
      if (state?.state === 'joining') problems.push(`node ${node.name} is itself still joining; finish "pgmesh node add ${node.name}" first`);
      if (state?.state === 'resyncing') problems.push(`node ${node.name} is itself being resynced; finish "pgmesh node resync ${node.name}" first`);
      const peers = await sql.unsafe<{ node_name: string; node_slot: number }[]>(`SELECT node_name, node_slot FROM pgmesh.peer`);
      for (const p of peers) if (p.node_name !== name) highest = Math.max(highest, p.node_slot);
      const linked = new Set(peers.map((p) => p.node_name));
      const missing = existing.filter((o) => o.name !== node.name && !linked.has(o.name)).map((o) => o.name);
      if (missing.length > 0) problems.push(`node ${node.name} is not linked with ${missing.join(', ')}; run "pgmesh cluster create" first`);
    } catch (error) {
      problems.push(errorMessage(error));
    }
  }
  if (problems.length > 0) throw new PgmeshError('NOT_INITIALIZED', problems.join('\n'));
  const local = await readLocalNode(conns.joining);
  if (!local) {
    if (resync) throw new PgmeshError('NOT_INITIALIZED', `${name} has no pgmesh catalog, so it was never a member: add it with "pgmesh node add ${name}"`);
    return { nodeSlot: highest + 1, retry: false, alreadyMember: false };
  }
  if (local.nodeName !== name) {
    throw new PgmeshError('ALREADY_INITIALIZED', `the server given for ${name} is already pgmesh node ${local.nodeName}; check the connection string`);
  }
  // A resync replaces the node's rows, whatever state it is in; it keeps its slot number (its sequences' values).
  if (resync) return { nodeSlot: local.nodeSlot, retry: true, alreadyMember: false };
  const state = await readMembership(conns.joining);
  // A node that did not finish joining, or that left: its tables hold (some of) the cluster's rows, replaced anew.
  if (state?.state === 'joining' || state?.state === 'resyncing' || state?.state === 'removed') return { nodeSlot: local.nodeSlot, retry: true, alreadyMember: false };
  // Initialized ("pgmesh init", or an attempt that stopped before it was marked joining) but linked with nobody:
  // a new node like any other (its tables are checked to be empty).
  const ownPeers = await conns.joining.unsafe(`SELECT 1 FROM pgmesh.peer LIMIT 1`);
  const knownBy = await Promise.all(
    existing.map(async (node) => (await memberSql(conns, node.name).unsafe(`SELECT 1 FROM pgmesh.peer WHERE node_name = $1`, [name])).length > 0),
  );
  if (!state && ownPeers.length === 0 && !knownBy.some(Boolean)) return { nodeSlot: highest + 1, retry: false, alreadyMember: false };
  const linkedEverywhere = await Promise.all(
    existing.map(async (node) => {
      const rows = await memberSql(conns, node.name).unsafe(`SELECT 1 FROM pgmesh.peer WHERE node_name = $1`, [name]);
      return rows.length > 0;
    }),
  );
  if (linkedEverywhere.every(Boolean)) return { nodeSlot: local.nodeSlot, retry: false, alreadyMember: true };
  throw new PgmeshError(
    'ALREADY_INITIALIZED',
    `${name} already has a pgmesh catalog but is not a member of this cluster; to add it with its data replaced by the cluster's, remove the pgmesh schema on it (DROP SCHEMA pgmesh CASCADE) and run node add again`,
  );
}

/**
 * The source must hold every other node's changes: its stream from each of them must be whole (the slot for it on
 * every other node not invalidated), or the copy would miss what it missed.
 */
async function sourceStreamProblems(conns: Conns, existing: readonly NodeConfig[], source: string): Promise<string[]> {
  const problems: string[] = [];
  for (const node of existing) {
    if (node.name === source) continue;
    const slots = await readSlotHealth(memberSql(conns, node.name), source);
    const lost = slots.find((s) => s.invalidated !== null);
    if (lost) {
      problems.push(
        `${source} has lost part of ${node.name}'s changes (slot ${lost.slot} on ${node.name}: ${lost.invalidated}), so it cannot be the source; copy from another node with --from, and resync ${source} afterwards`,
      );
    }
  }
  return problems;
}

async function readNodeSlots(conns: Conns, existing: readonly NodeConfig[]): Promise<Map<string, number>> {
  const slots = new Map<string, number>();
  for (const node of existing) {
    const local = await readLocalNode(memberSql(conns, node.name));
    if (local) slots.set(node.name, local.nodeSlot);
  }
  return slots;
}

/** Waits until the source has applied each node's stream past that node's marker (so past its new slot's start). */
async function waitForSourceCatchUp(sourceSql: Sql, sourceName: string, markers: ReadonlyMap<string, Lsn>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const behind = new Map(markers);
  while (behind.size > 0) {
    for (const [peer, marker] of behind) {
      const rows = await sourceSql.unsafe<{ end_lsn: string }[]>(`SELECT end_lsn::text FROM pgmesh.progress WHERE peer = $1`, [peer]);
      const at = rows[0] ? parseLsn(rows[0].end_lsn) : undefined;
      if (at !== undefined && at > marker) behind.delete(peer);
    }
    if (behind.size === 0) return;
    if (Date.now() > deadline) {
      const list = [...behind.entries()].map(([peer, lsn]) => `${peer} (up to ${formatLsn(lsn)})`).join(', ');
      throw new PgmeshError(
        'APPLY_FAILED',
        `${sourceName} has not applied the changes of ${list} within ${Math.round(timeoutMs / 1000)} s; is the agent of ${sourceName} running and streaming from them (pgmesh status)? Then run node add again`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

interface Copied {
  readonly rows: number;
  readonly bytes: number;
}

async function copyFromSnapshot(
  config: ClusterConfig,
  conns: Conns,
  source: NodeConfig,
  existing: readonly NodeConfig[],
  name: string,
  shapes: readonly TableShape[],
  options: AddNodeOptions,
  log: Logger,
): Promise<Copied> {
  const workers = copyParallelism(config.tuning.copyParallelism, shapes.length);
  // The new node's links (made at step 2): the slot on the source that the copy's snapshot comes from, and the
  // origins the copied rows' versions and each stream's start are recorded with.
  const links = await readAllLinkNames(conns.joining);
  const link = (peer: string): LinkNames => {
    const found = links.get(peer);
    if (!found?.slot) throw new PgmeshError('INTERNAL', `${name} has no link from ${peer} recorded before the copy`);
    return found;
  };
  const joiningOid = await databaseOid(conns.joining);
  const replication = await ReplicationConnection.open(source.dsn, source.name, `pgmesh node add ${name}`, log);
  const openTarget = () =>
    openSql(options.dsn, {
      node: name,
      applicationName: `pgmesh copy from ${source.name}`,
      logger: log,
      max: 1,
      // Replica mode: no user triggers, no foreign key checks (tables in any order), as in apply sessions.
      parameters: { session_replication_role: 'replica', synchronous_commit: 'off' },
    });
  // One pool per worker: the driver reserves a connection only from one it has opened.
  const targetPool = openTarget();
  const targetPools = [targetPool, ...Array.from({ length: workers - 1 }, openTarget)];
  let targetSession: ReservedSql | undefined;
  try {
    const { consistentPoint, snapshotName } = await replication.createSlotExportingSnapshot(link(source.name).slot as string);
    // Every read of the source is in the snapshot, each on a connection of its own that is closed after it (no
    // session to the source outlives a query: the driver writes to the socket of a reserved connection that the
    // server closed, and throws where nothing can catch it).
    const snapshot = { dsn: source.dsn, node: source.name, snapshotName, applicationName: `pgmesh copy to ${name}`, logger: log };
    // The driver hands out a reserved connection only from an open one (reserving on a pool that has not connected
    // yet waits forever): connect first.
    await targetPool.unsafe('SELECT 1');
    targetSession = await targetPool.reserve();
    log.info({ source: source.name, consistentPoint: formatLsn(consistentPoint) }, 'node add: copying from the snapshot');

    // What the snapshot holds of each other node's stream: everything up to the newest applied transaction.
    const others = existing.filter((n) => n.name !== source.name).map((n) => n.name);
    const progress = await queryInSnapshot<{ peer: string; end_lsn: string; remote_commit_ts: string | null }>(
      snapshot,
      `SELECT peer, end_lsn::text, remote_commit_ts::text FROM pgmesh.progress`,
    );
    const starts = new Map<string, { lsn: Lsn; ts: string | null }>();
    for (const peer of others) {
      const row = progress.find((p) => p.peer === peer);
      if (!row) throw new PgmeshError('NOT_INITIALIZED', `${source.name} has no progress for ${peer}; run "pgmesh cluster create" first`);
      starts.set(peer, { lsn: parseLsn(row.end_lsn), ts: row.remote_commit_ts });
    }
    // The horizon: no change that can still reach the new node is older, less a margin (commit timestamps are not
    // strictly in commit order, clocks differ). Without a commit timestamp for some peer, every row is exact.
    const marginMs = Math.max(config.tuning.tombstoneMarginMs, config.tuning.conflictWindowMs);
    const timestamps = [...starts.values()].map((s) => s.ts);
    const clock = await queryInSnapshot<{ now: string; horizon: string | null; wal: string }>(
      snapshot,
      `SELECT now()::text AS now, pg_catalog.pg_current_wal_insert_lsn()::text AS wal,
              (least(now(), ${timestamps.map((t) => (t === null ? 'NULL' : `${quoteLiteral(t)}::timestamptz`)).join(', ') || 'NULL'})
                - interval '${marginMs} milliseconds')::text AS horizon`,
    );
    const sourceNow = clock[0]?.now ?? null;
    const horizon = timestamps.some((t) => t === null) ? undefined : (clock[0]?.horizon ?? undefined);
    const policies = await queryInSnapshot<{ row: string }>(
      snapshot,
      `SELECT to_jsonb(p)::text AS row FROM pgmesh.table_policy p
        WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables t
                       WHERE t.pubname = 'pgmesh' AND t.schemaname = p.relation_schema AND t.tablename = p.relation_name)`,
    );
    const overrides = await queryInSnapshot<{ schema: string; name: string }>(
      snapshot,
      `SELECT DISTINCT n.nspname AS schema, c.relname AS name
         FROM pgmesh.version_override o JOIN pg_catalog.pg_class c ON c.oid = o.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`,
    );
    const withOverrides = new Set(overrides.map((o) => qualifiedName(o.schema, o.name)));

    const members = new Set(existing.map((n) => n.name));
    const originFor = (node: string) =>
      members.has(node) ? link(node).origin : NODE_NAME_PATTERN.test(node) ? replayOriginNameFor(joiningOid, node) : node;
    const target = targetSession;
    await target.unsafe(`DELETE FROM pgmesh.table_policy`);
    for (const p of policies) {
      await target.unsafe(`INSERT INTO pgmesh.table_policy SELECT * FROM jsonb_populate_record(NULL::pgmesh.table_policy, $1::text::jsonb)`, [p.row]);
    }
    const jobs = await estimateRows(memberSql(conns, source.name), shapes);
    await resetCopyProgress(conns.joining, jobs.map((j) => ({ relation: relationName(j.shape), rowsEstimated: j.rowsEstimated })));
    await setMembership(conns.joining, { phase: 'copying', tablesTotal: shapes.length, tablesDone: 0, rows: 0, bytes: 0 });
    const sessions = [target];
    for (const pool of targetPools.slice(1)) {
      await pool.unsafe('SELECT 1');
      sessions.push(await pool.reserve());
    }
    log.info({ tables: shapes.length, parallel: sessions.length }, 'node add: copying tables');
    const base = { snapshot, withOverrides, sourceNode: source.name, horizon };
    const sourceOrigins = [link(source.name).origin, link(source.name).replayOrigin];
    const copied = await copyTables(jobs, {
      sessions,
      base,
      originFor: (worker) => (node) => (node === source.name ? (sourceOrigins[worker] ?? link(node).origin) : originFor(node)),
      record: (tables, progress) => {
        options.onProgress?.(progress);
        writeCopyProgress(conns.joining, tables, progress).catch((error) => log.debug({ err: errorMessage(error) }, 'progress update failed'));
      },
    }).finally(() => {
      for (const session of sessions.slice(1)) session.release();
    });
    const done = { rows: copied.rows, bytes: copied.bytes };
    await copyTombstones({ ...base, target, originFor, onProgress: () => undefined });
    await copyUniqueClaims({ ...base, target, originFor, onProgress: () => undefined });

    // Where each stream to the new node starts: after what the snapshot holds.
    for (const [peer, start] of starts) {
      await target.unsafe(`SELECT pg_catalog.pg_replication_origin_advance($1, $2::text::pg_lsn)`, [link(peer).origin, formatLsn(start.lsn)]);
    }
    await target.unsafe(`SELECT pg_catalog.pg_replication_origin_advance($1, $2::text::pg_lsn)`, [link(source.name).origin, formatLsn(consistentPoint)]);
    await target.unsafe(`BEGIN`);
    const seed = async (peer: string, lsn: Lsn, ts: string | null) => {
      await target.unsafe(`DELETE FROM pgmesh.applied_xact WHERE peer = $1`, [peer]);
      await target.unsafe(
        `INSERT INTO pgmesh.applied_xact (peer, end_lsn, remote_commit_ts, counted) VALUES ($1, $2::text::pg_lsn, $3::text::timestamptz, false)`,
        [peer, formatLsn(lsn), ts],
      );
    };
    for (const [peer, start] of starts) await seed(peer, start.lsn, start.ts);
    await seed(source.name, consistentPoint, sourceNow);
    await target.unsafe(`COMMIT`);

    // The source's own transactions in the snapshot may have committed asynchronously: on its disk before the new
    // node relies on them (a crash of the source would otherwise lose rows that the new node keeps).
    await waitForFlush(memberSql(conns, source.name), parseLsn(clock[0]?.wal ?? '0/0'));
    return done;
  } finally {
    targetSession?.release();
    await replication.close();
    await Promise.all(targetPools.map((pool) => pool.end({ timeout: 2 }).catch(() => undefined)));
  }
}

async function waitForFlush(sql: Sql, lsn: Lsn): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const rows = await sql.unsafe<{ ok: boolean }[]>(`SELECT pg_catalog.pg_current_wal_flush_lsn() >= $1::text::pg_lsn AS ok`, [formatLsn(lsn)]);
    if (rows[0]?.ok) return;
    if (Date.now() > deadline) throw new PgmeshError('APPLY_FAILED', `the source did not flush its WAL up to ${formatLsn(lsn)} within 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The source's estimate of each table's rows (pg_class.reltuples; null when never analyzed), for the ETA. */
async function estimateRows(sourceSql: Sql, shapes: readonly TableShape[]): Promise<TableJob[]> {
  const rows = await sourceSql.unsafe<{ relation: string; estimate: string | null }[]>(
    `SELECT t.relation, CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint::text END AS estimate
       FROM unnest($1::text[]) AS t(relation) JOIN pg_catalog.pg_class c ON c.oid = t.relation::regclass`,
    [textArrayLiteral(shapes.map((s) => s.qualified))],
  );
  const byRelation = new Map(rows.map((r) => [r.relation, r.estimate === null ? null : Number(r.estimate)]));
  return shapes.map((shape) => ({ shape, rowsEstimated: byRelation.get(shape.qualified) ?? null }));
}
