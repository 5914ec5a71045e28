/**
 * Names of the replication slots and origins of pgmesh's links (docs/design.md, "Slots, origins and their names").
 *
 * Slots and replication origins belong to the PostgreSQL server, not to a database: every database of a server sees
 * the same ones. A pgmesh node is a database, and one server may hold several nodes (of one cluster or of several),
 * so a name made of node names only (`pgmesh_<node>`, the names before this release) is taken by the first database
 * that creates it; a second node on the server then finds another node's live slot or shares its origin, whose
 * progress would then be that of two streams. So each name carries the OID of the database that owns it, which is
 * unique on its server and never changes:
 * - the slot on publisher P for subscriber S: `pgmesh_<OID of P's database>_<S>`, on P's server;
 * - the origin on S tracking P: `pgmesh_<OID of S's database>_<P>`, and the replay origin `pgmeshr_<OID>_<P>`, on
 *   S's server.
 * An OID is at most 10 digits and a node name at most 40 characters, so a name is at most 59 bytes: within
 * PostgreSQL's 63 (NAMEDATALEN - 1) without shortening. Node names start with a letter, so `pgmesh_<digits>_<node>`
 * never reads as a node name of the old form, and the version horizon's slot (`pgmesh__versions_<OID>`) as neither.
 *
 * A link's names are recorded with it on the subscriber (pgmesh.peer.slot_name, origin_name, replay_origin_name):
 * links made before this release keep their old names (slots cannot be renamed, and an origin holds its progress),
 * and the catalog upgrade records those. Only the subscriber knows where a stream is; the publisher finds its slots
 * among those of its own database (pg_replication_slots.database), which are pgmesh's by that alone.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Queryable } from '../pg/connect.ts';
import { NODE_NAME_PATTERN } from '../pg/quote.ts';

/** The slot on the publisher whose database has this OID, streaming to `subscriber`. */
export function slotNameFor(publisherDatabaseOid: string, subscriber: string): string {
  return `pgmesh_${publisherDatabaseOid}_${subscriber}`;
}

/** The origin, in the database with this OID, that tracks how far `peer`'s stream is applied there. */
export function originNameFor(databaseOid: string, peer: string): string {
  return `pgmesh_${databaseOid}_${peer}`;
}

/** The origin an operator's replay of `peer`'s exceptions commits with: it reads as `peer` and is not re-published. */
export function replayOriginNameFor(databaseOid: string, peer: string): string {
  return `pgmeshr_${databaseOid}_${peer}`;
}

const SLOT_PATTERN = /^pgmesh_(?:[0-9]+_)?([a-z][a-z0-9_]*)$/;

/**
 * The subscriber a slot of this node's database streams to, from either naming (`pgmesh_<oid>_<node>`, or
 * `pgmesh_<node>` from before); null for any other name (the version horizon's slot, or not pgmesh's).
 */
export function slotSubscriber(slot: string): string | null {
  const node = SLOT_PATTERN.exec(slot)?.[1];
  return node !== undefined && NODE_NAME_PATTERN.test(node) ? node : null;
}

/** The OID of the database a connection is in, as text (an unsigned 32-bit number). */
export async function databaseOid(sql: Queryable): Promise<string> {
  const rows = await sql.unsafe<{ oid: string }[]>(
    `SELECT d.oid::pg_catalog.text AS oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()`,
  );
  const oid = rows[0]?.oid;
  if (oid === undefined) throw new PgmeshError('INTERNAL', 'the current database is not in pg_database');
  return oid;
}

export interface LinkNames {
  /** The slot on the peer that streams to this node; null until the link has one (a link made without a slot). */
  readonly slot: string | null;
  readonly origin: string;
  readonly replayOrigin: string;
}

/** The names recorded for this node's link from `peer`; undefined when there is no such link. */
export async function readLinkNames(sql: Queryable, peer: string): Promise<LinkNames | undefined> {
  const rows = await sql.unsafe<{ slot_name: string | null; origin_name: string; replay_origin_name: string }[]>(
    `SELECT slot_name, origin_name, replay_origin_name FROM pgmesh.peer WHERE node_name = $1`,
    [peer],
  );
  const row = rows[0];
  return row ? { slot: row.slot_name, origin: row.origin_name, replayOrigin: row.replay_origin_name } : undefined;
}

/** The names of every link of this node, by peer. */
export async function readAllLinkNames(sql: Queryable): Promise<Map<string, LinkNames>> {
  const rows = await sql.unsafe<{ node_name: string; slot_name: string | null; origin_name: string; replay_origin_name: string }[]>(
    `SELECT node_name, slot_name, origin_name, replay_origin_name FROM pgmesh.peer`,
  );
  return new Map(rows.map((r) => [r.node_name, { slot: r.slot_name, origin: r.origin_name, replayOrigin: r.replay_origin_name }]));
}

/**
 * On a publisher: the name of its slot for `subscriber`, the one it has in its own database (either naming: a link
 * made before keeps its slot) or, when it has none, the name a new one gets.
 */
export async function publisherSlotName(sql: Queryable, subscriber: string): Promise<string> {
  const oid = await databaseOid(sql);
  const fresh = slotNameFor(oid, subscriber);
  const rows = await sql.unsafe<{ slot_name: string }[]>(
    `SELECT s.slot_name::pg_catalog.text AS slot_name FROM pg_catalog.pg_replication_slots s
      WHERE s.database = pg_catalog.current_database() AND s.slot_name::pg_catalog.text IN ($1::pg_catalog.text, $2::pg_catalog.text)
      ORDER BY s.slot_name::pg_catalog.text = $1::pg_catalog.text DESC`,
    [fresh, `pgmesh_${subscriber}`],
  );
  return rows[0]?.slot_name ?? fresh;
}

/**
 * Migration: the names of each link, recorded on the subscriber, and the SQL that reads a commit's origin as a node
 * reading both namings. Links that exist at the upgrade were made with the old names: those are recorded.
 */
export const LINK_NAMES_MIGRATION = `
-- The names of this node's link from each peer (src/cluster/link-names.ts): the slot on the peer, the origin here
-- that tracks the stream, the origin replays of its exceptions commit with. A link keeps its names for its life.
ALTER TABLE pgmesh.peer
  ADD COLUMN slot_name text,
  ADD COLUMN origin_name text,
  ADD COLUMN replay_origin_name text;

-- Links made before: the old names, unique only per database (pgmesh_<node>); they stay until the link is made anew
-- (node remove and add, node resync).
UPDATE pgmesh.peer p
   SET slot_name = 'pgmesh_' || (SELECT l.node_name FROM pgmesh.local_node l),
       origin_name = 'pgmesh_' || p.node_name,
       replay_origin_name = 'pgmeshr_' || p.node_name;

ALTER TABLE pgmesh.peer
  ALTER COLUMN origin_name SET NOT NULL,
  ALTER COLUMN replay_origin_name SET NOT NULL;

-- Which node wrote a version. Origins: pgmesh_<oid>_<node> and pgmesh_<node> (a link's), pgmeshr_<oid>_<node> and
-- pgmeshr_<node> (replays, node add's copy), pgmeshl<id>_<node> (retired), pgmeshh_<id>_<n> (unknown). Node names
-- start with a letter, so stripping the digits and underscores after the prefix leaves the node under both namings:
-- no pattern match on the path every applied row takes. Not SET search_path: these are inlined into the apply
-- statements (a SET clause would stop that); every name in them is qualified.
CREATE OR REPLACE FUNCTION pgmesh.origin_node(roident oid, local_node text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
  SELECT CASE WHEN roident = 0 THEN local_node
    ELSE coalesce((SELECT CASE WHEN o.roname LIKE 'pgmesh\\_%' THEN pg_catalog.ltrim(pg_catalog.substr(o.roname, 8), '0123456789_')
                               WHEN o.roname LIKE 'pgmeshr\\_%' THEN pg_catalog.ltrim(pg_catalog.substr(o.roname, 9), '0123456789_')
                               WHEN o.roname ~ '^pgmeshl[0-9]+_' THEN pg_catalog.regexp_replace(o.roname, '^pgmeshl[0-9]+_', '')
                               WHEN o.roname LIKE 'pgmeshh\\_%' THEN '?' || o.roident
                               ELSE o.roname END
                   FROM pg_catalog.pg_replication_origin o WHERE o.roident = origin_node.roident), '?' || roident)
  END
$fn$;

CREATE OR REPLACE FUNCTION pgmesh.row_version(row_xmin xid, local_node text) RETURNS TABLE (ts timestamptz, node text)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $fn$
  SELECT coalesce(c.timestamp, '-infinity'::timestamptz),
         CASE WHEN c.roident = 0 THEN local_node
              WHEN o.roname LIKE 'pgmesh\\_%' THEN pg_catalog.ltrim(pg_catalog.substr(o.roname, 8), '0123456789_')
              WHEN o.roname LIKE 'pgmeshr\\_%' THEN pg_catalog.ltrim(pg_catalog.substr(o.roname, 9), '0123456789_')
              WHEN o.roname ~ '^pgmeshl[0-9]+_' THEN pg_catalog.regexp_replace(o.roname, '^pgmeshl[0-9]+_', '')
              WHEN o.roname LIKE 'pgmeshh\\_%' THEN '?' || c.roident
              ELSE coalesce(o.roname, '?' || c.roident) END
    FROM pg_catalog.pg_xact_commit_timestamp_origin(row_xmin) c
    LEFT JOIN pg_catalog.pg_replication_origin o ON o.roident = c.roident
$fn$;
`;
