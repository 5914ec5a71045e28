/**
 * Who a peer is (docs/security.md, "Whom the agent streams from"). A connection string says where to connect, not
 * whom: an entry edited to point at a database of another pgmesh cluster (or another database of the same server)
 * would stream that database's changes into this one, and the slot there may well have the expected name.
 *
 * So each link records the peer's identity when it is made (`cluster create`, `node add`): the server's system
 * identifier, the database's name, and the pgmesh cluster id of the peer's catalog; the peer's node name is the
 * link's key. The agent checks all four on every connect, on the replication connection itself (IDENTIFY_SYSTEM and
 * the peer's pgmesh.local_node), and streams nothing from a peer that differs. Links made before identities were
 * recorded take the first identity the agent sees (trust on first use, logged as a warning).
 */
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { Queryable } from '../pg/connect.ts';

export interface PeerIdentity {
  /** pg_control_system().system_identifier, as text (an int8). */
  readonly systemIdentifier: string;
  readonly database: string;
  /** pgmesh.local_node.cluster_id of the peer (null: a catalog from before cluster ids). */
  readonly clusterId: string | null;
  /** pgmesh.local_node.node_name of the peer (null: no pgmesh catalog there). */
  readonly nodeName: string | null;
}

/** The identity of the node a plain (SQL) connection reaches: at link time. */
export async function readPeerIdentity(sql: Queryable): Promise<PeerIdentity> {
  const rows = await sql.unsafe<{ sysid: string; db: string; cluster_id: string | null; node_name: string | null }[]>(
    `SELECT (pg_catalog.pg_control_system()).system_identifier::pg_catalog.text AS sysid, pg_catalog.current_database()::pg_catalog.text AS db,
            (SELECT n.cluster_id::pg_catalog.text FROM pgmesh.local_node n) AS cluster_id, (SELECT n.node_name FROM pgmesh.local_node n) AS node_name`,
  );
  const row = rows[0];
  if (!row) throw new PgmeshError('INTERNAL', 'reading the identity of a node returned no row');
  return { systemIdentifier: row.sysid, database: row.db, clusterId: row.cluster_id, nodeName: row.node_name };
}

/**
 * The cluster id of a set of nodes being linked: the one they have, a new one when none has any. Refuses nodes of
 * different clusters: a configuration that mixes them is a mistake, and linking them would merge their data.
 */
export async function ensureClusterId(nodes: ReadonlyMap<string, Queryable>): Promise<string> {
  const ids = new Map<string, string>();
  for (const [name, sql] of nodes) {
    const rows = await sql.unsafe<{ id: string | null }[]>(`SELECT cluster_id::pg_catalog.text AS id FROM pgmesh.local_node`);
    const id = rows[0]?.id;
    if (id) ids.set(name, id);
  }
  const distinct = [...new Set(ids.values())];
  if (distinct.length > 1) {
    const list = [...ids].map(([name, id]) => `${name}: ${id}`).join(', ');
    throw new PgmeshError(
      'PEER_MISMATCH',
      `the nodes of the configuration belong to different pgmesh clusters (cluster ids ${list}); check each node's connection string: linking them would mix the data of two clusters`,
    );
  }
  const id = distinct[0] ?? (await newClusterId(nodes));
  for (const sql of nodes.values()) await sql.unsafe(`UPDATE pgmesh.local_node SET cluster_id = $1::pg_catalog.text::pg_catalog.uuid WHERE cluster_id IS NULL`, [id]);
  return id;
}

async function newClusterId(nodes: ReadonlyMap<string, Queryable>): Promise<string> {
  const first = [...nodes.values()][0];
  if (!first) throw new PgmeshError('INTERNAL', 'no node to make a cluster id on');
  const rows = await first.unsafe<{ id: string }[]>(`SELECT pg_catalog.gen_random_uuid()::pg_catalog.text AS id`);
  return rows[0]?.id as string;
}

interface RecordedIdentity {
  readonly system_identifier: string | null;
  readonly database_name: string | null;
  readonly cluster_id: string | null;
}

/** What differs between the identity recorded for `peer` and the one seen; empty when they match. */
export function identityDifferences(peer: string, recorded: RecordedIdentity, seen: PeerIdentity): string[] {
  const differences: string[] = [];
  if (seen.nodeName !== peer) differences.push(seen.nodeName === null ? 'it has no pgmesh node there' : `it is node ${seen.nodeName}, not ${peer}`);
  if (recorded.system_identifier !== null && recorded.system_identifier !== seen.systemIdentifier) {
    differences.push(`its server's system identifier is ${seen.systemIdentifier}, not ${recorded.system_identifier}`);
  }
  if (recorded.database_name !== null && recorded.database_name !== seen.database) differences.push(`its database is ${seen.database}, not ${recorded.database_name}`);
  if (recorded.cluster_id !== null && recorded.cluster_id !== seen.clusterId) {
    differences.push(`it belongs to pgmesh cluster ${seen.clusterId ?? '(none)'}, not ${recorded.cluster_id}`);
  }
  return differences;
}

/**
 * Checks that the peer reached is the one linked, before anything is streamed; records the identity of a link made
 * before identities were (trust on first use). Throws PEER_MISMATCH with what differs and what to do.
 */
export async function verifyPeerIdentity(catalog: Queryable, localNode: string, peer: string, seen: PeerIdentity, logger: Logger): Promise<void> {
  const rows = await catalog.unsafe<RecordedIdentity[]>(
    `SELECT system_identifier, database_name, cluster_id::pg_catalog.text AS cluster_id FROM pgmesh.peer WHERE node_name = $1`,
    [peer],
  );
  const recorded = rows[0];
  // No link at all: the caller's slot check says what to do.
  if (!recorded) return;
  const differences = identityDifferences(peer, recorded, seen);
  if (differences.length > 0) {
    throw new PgmeshError(
      'PEER_MISMATCH',
      `the connection string of ${peer} reaches another node than the one ${localNode} was linked with: ${differences.join('; ')}. Nothing is streamed from it. Fix ${peer}'s connection string (in the configuration file or PGMESH_DSN_${peer.toUpperCase()}) and reload the agent; if ${peer} was really moved or restored elsewhere, link it again (pgmesh node resync ${peer}) or run pgmesh cluster create again`,
      { context: { peer, node: localNode } },
    );
  }
  if (recorded.system_identifier === null) {
    await catalog.unsafe(`SELECT pgmesh.record_peer_identity($1, $2, $3, $4::pg_catalog.text::pg_catalog.uuid)`, [
      peer,
      seen.systemIdentifier,
      seen.database,
      seen.clusterId,
    ]);
    logger.warn(
      { peer, systemIdentifier: seen.systemIdentifier, database: seen.database, clusterId: seen.clusterId },
      'recorded the identity of a peer linked before identities were checked (trust on first use); from now on the agent streams only from this server and database',
    );
  }
}

/** The identity columns pgmesh.peer gets, and the function the agent records a first identity with. */
export const PEER_IDENTITY_MIGRATION = `
-- The pgmesh cluster this node belongs to: made by "cluster create", copied by "node add" (src/cluster/peer-identity.ts).
ALTER TABLE pgmesh.local_node ADD COLUMN cluster_id uuid;

-- Who each peer is, recorded when the link is made (or, for a link made before, at the agent's first connect).
ALTER TABLE pgmesh.peer
  ADD COLUMN system_identifier text,
  ADD COLUMN database_name text,
  ADD COLUMN cluster_id uuid,
  ADD COLUMN identity_recorded_at timestamptz,
  ADD COLUMN identity_source text CHECK (identity_source IN ('link', 'first connect'));

-- Trust on first use for links made before identities were recorded: fills an identity that is not there, never
-- changes one (that takes the installing role: cluster create, node add, node resync).
CREATE FUNCTION pgmesh.record_peer_identity(peer text, system_identifier text, database_name text, cluster uuid) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
  UPDATE pgmesh.peer p
     SET system_identifier = $2, database_name = $3, cluster_id = $4, identity_recorded_at = pg_catalog.now(), identity_source = 'first connect'
   WHERE p.node_name = $1 AND p.system_identifier IS NULL
  RETURNING true
$fn$;
REVOKE ALL ON FUNCTION pgmesh.record_peer_identity(text, text, text, uuid) FROM PUBLIC;
`;
