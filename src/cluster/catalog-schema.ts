/**
 * The pgmesh catalog: a schema `pgmesh` on every node, local to that node (never published, never replicated).
 * Migrations run in order inside one transaction; `pgmesh.catalog_version` records the last one applied.
 */

export const CATALOG_SCHEMA = 'pgmesh';
export const PUBLICATION = 'pgmesh';

/** Slot on peer P that streams P's changes to subscriber L: `pgmesh_<L>`. */
export function slotName(subscriber: string): string {
  return `pgmesh_${subscriber}`;
}

/** Replication origin on L that tracks how far L has applied peer P's stream: `pgmesh_<P>`. */
export function originName(peer: string): string {
  return `pgmesh_${peer}`;
}

export const MIGRATIONS: readonly string[] = [
  /* 1: identity, peers, apply progress, last-update-wins helpers */ `
CREATE SCHEMA pgmesh;
COMMENT ON SCHEMA pgmesh IS 'pgmesh catalog (local to this node, not replicated)';

CREATE TABLE pgmesh.catalog_version (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  version integer NOT NULL
);

CREATE TABLE pgmesh.local_node (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  node_name text NOT NULL,
  node_slot integer NOT NULL CHECK (node_slot >= 1),
  max_nodes integer NOT NULL CHECK (max_nodes >= node_slot),
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Peers this node streams from and to. The connection string is kept without its password.
CREATE TABLE pgmesh.peer (
  node_name text PRIMARY KEY,
  node_slot integer NOT NULL,
  endpoint text NOT NULL,
  added_at timestamptz NOT NULL DEFAULT now()
);

-- One row per peer, written by every applied transaction from that peer in the same local commit, so that a
-- transaction whose changes were all rejected still advances progress, and so that pipelined transactions can
-- check that their predecessor committed.
CREATE TABLE pgmesh.apply_progress (
  peer text PRIMARY KEY,
  end_lsn pg_lsn NOT NULL DEFAULT '0/0',
  remote_commit_ts timestamptz,
  applied_xacts bigint NOT NULL DEFAULT 0,
  applied_at timestamptz
);

-- The node that wrote a row version: the local node for local commits, the peer for applied ones.
CREATE FUNCTION pgmesh.origin_node(roident oid, local_node text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
  SELECT CASE WHEN roident = 0 THEN local_node
    ELSE coalesce((SELECT CASE WHEN o.roname LIKE 'pgmesh\\_%' THEN substr(o.roname, 8) ELSE o.roname END
                   FROM pg_catalog.pg_replication_origin o WHERE o.roident = origin_node.roident), '?' || roident)
  END
$fn$;

-- Last-update-wins: does a remote version (commit timestamp, node) beat the version of the local row with this xmin?
-- A row written earlier in the same apply transaction always loses to later changes of that transaction.
-- Rows older than track_commit_timestamp or behind the freeze horizon have no timestamp: they count as oldest.
-- Node names compare in byte order (COLLATE "C") so every node breaks ties the same way.
CREATE FUNCTION pgmesh.remote_wins(row_xmin xid, remote_ts timestamptz, remote_node text, local_node text)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
  SELECT CASE WHEN row_xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()) THEN true ELSE
    (SELECT (coalesce(c.timestamp, '-infinity'::timestamptz), pgmesh.origin_node(c.roident, local_node) COLLATE "C")
            < (remote_ts, remote_node COLLATE "C")
     FROM pg_catalog.pg_xact_commit_timestamp_origin(row_xmin) c)
  END
$fn$;

-- Last step of every applied transaction: make deferred constraint errors surface now, record progress (only if the
-- previous transaction from this peer committed: transactions are pipelined), and mark the commit as replaying the
-- remote one, so that it carries the remote commit timestamp and origin LSN.
CREATE FUNCTION pgmesh.finish_apply(peer_name text, prev_lsn pg_lsn, end_lsn pg_lsn, commit_ts timestamptz)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  SET CONSTRAINTS ALL IMMEDIATE;
  UPDATE pgmesh.apply_progress p
     SET end_lsn = finish_apply.end_lsn, remote_commit_ts = commit_ts,
         applied_xacts = p.applied_xacts + 1, applied_at = clock_timestamp()
   WHERE p.peer = peer_name AND p.end_lsn = prev_lsn;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pgmesh: progress of peer % is not at %; the previous transaction did not commit', peer_name, prev_lsn
      USING ERRCODE = 'PM001';
  END IF;
  PERFORM pg_catalog.pg_replication_origin_xact_setup(end_lsn, commit_ts);
END
$fn$;
`,
];

export const CATALOG_VERSION = MIGRATIONS.length;
