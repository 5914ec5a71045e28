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

/** Origin used when an operator replays an exception of peer P: it keeps P's version and is not re-published. */
export function replayOriginName(peer: string): string {
  return `pgmeshr_${peer}`;
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
  /* 2: convergence: row versions, tombstones, conflicts, exceptions, table policies, delta columns */ `
-- Which node wrote a version: streaming origins are pgmesh_<node>, replay origins pgmeshr_<node>.
CREATE OR REPLACE FUNCTION pgmesh.origin_node(roident oid, local_node text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
  SELECT CASE WHEN roident = 0 THEN local_node
    ELSE coalesce((SELECT CASE WHEN o.roname LIKE 'pgmesh\\_%' THEN substr(o.roname, 8)
                               WHEN o.roname LIKE 'pgmeshr\\_%' THEN substr(o.roname, 9)
                               ELSE o.roname END
                   FROM pg_catalog.pg_replication_origin o WHERE o.roident = origin_node.roident), '?' || roident)
  END
$fn$;

-- The version (commit timestamp, node) of the transaction that wrote a tuple. Versions of rows from before
-- track_commit_timestamp, or whose commit timestamp was truncated, are the oldest possible.
-- A tuple written by a transaction still in progress (this apply transaction) has no timestamp either: oldest, so
-- later changes of the same transaction always apply.
-- Written as a one-row set-returning SQL function with no subqueries, so the planner inlines it into the apply
-- statements (a scalar function with a subquery would be planned again on every call).
CREATE FUNCTION pgmesh.row_version(row_xmin xid, local_node text) RETURNS TABLE (ts timestamptz, node text)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $fn$
  SELECT coalesce(c.timestamp, '-infinity'::timestamptz),
         CASE WHEN c.roident = 0 THEN local_node
              WHEN o.roname LIKE 'pgmesh\\_%' THEN substr(o.roname, 8)
              WHEN o.roname LIKE 'pgmeshr\\_%' THEN substr(o.roname, 9)
              ELSE coalesce(o.roname, '?' || c.roident) END
    FROM pg_catalog.pg_xact_commit_timestamp_origin(row_xmin) c
    LEFT JOIN pg_catalog.pg_replication_origin o ON o.roident = c.roident
$fn$;

-- Rows of tables with delta columns whose last applied change lost on the other columns keep the winning
-- version here (their xmin alone would say the older remote version), so versions stay the maximum of all
-- changes applied and every node compares the same versions.
CREATE TABLE pgmesh.version_override (
  relid oid NOT NULL,
  pkey text NOT NULL,
  row_xmin xid NOT NULL,
  ts timestamptz NOT NULL,
  node text NOT NULL,
  PRIMARY KEY (relid, pkey)
);

CREATE FUNCTION pgmesh.row_version_keyed(relid oid, pkey text, row_xmin xid, local_node text) RETURNS TABLE (ts timestamptz, node text)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $fn$
  SELECT coalesce(o.ts, v.ts), coalesce(o.node, v.node)
    FROM pgmesh.row_version(row_xmin, local_node) v
    LEFT JOIN pgmesh.version_override o ON o.relid = $1 AND o.pkey = $2 AND o.row_xmin = $3
$fn$;

-- Deleted rows. The tombstone's own xmin carries the delete's version: the local transaction for local deletes,
-- the apply transaction (remote commit timestamp and origin) for applied ones. The key is the jsonb array of the
-- primary key values, written in UTC and ISO styles so every node and session spells it the same.
CREATE TABLE pgmesh.tombstone (
  relid oid NOT NULL,
  pkey text NOT NULL,
  PRIMARY KEY (relid, pkey)
);

-- Statement-level trigger on every replicated table: local deletes leave tombstones. It does not fire in the
-- apply session (session_replication_role = replica), where tombstones are written by the apply statements.
CREATE FUNCTION pgmesh.record_deletes() RETURNS trigger
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
BEGIN
  INSERT INTO pgmesh.tombstone (relid, pkey)
  SELECT TG_RELID, (SELECT jsonb_agg(j -> k ORDER BY n)::text FROM unnest(TG_ARGV) WITH ORDINALITY AS a(k, n))
    FROM (SELECT to_jsonb(o) AS j FROM pgmesh_deleted o) d
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey;
  RETURN NULL;
END
$fn$;

-- Row-level trigger on every replicated table, for UPDATEs that change the primary key: the old key disappears
-- like a deleted row's, and peers apply such an update as the old key's delete (with a tombstone) and the new key's
-- write. Without a tombstone here too, an older change of the old key arriving later would bring the row back on
-- this node only. Like record_deletes it does not fire in the apply session.
CREATE FUNCTION pgmesh.record_key_change() RETURNS trigger
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
BEGIN
  INSERT INTO pgmesh.tombstone (relid, pkey)
  SELECT TG_RELID, (SELECT jsonb_agg(j -> k ORDER BY n)::text FROM unnest(TG_ARGV) WITH ORDINALITY AS a(k, n))
    FROM (SELECT to_jsonb(OLD) AS j) o
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey;
  RETURN NULL;
END
$fn$;

-- Raised by apply statements of tables whose conflict policy is 'pause': the transaction rolls back and the
-- agent pauses the peer until an operator has repaired the row and resumed it.
CREATE FUNCTION pgmesh.raise_conflict(peer text, relation text, pkey text, conflict_type text) RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION 'pgmesh: % on % key % from peer % (table policy: pause)', conflict_type, relation, pkey, peer
    USING ERRCODE = 'PM002', DETAIL = conflict_type;
END
$fn$;

-- Raised by the applier's end-of-transaction check of deferrable unique constraints, whose own check triggers do
-- not fire in the apply session (replica mode): the error PostgreSQL itself would have raised.
CREATE FUNCTION pgmesh.raise_unique_violation(constraint_name text, schema_name text, table_name text, detail text) RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION 'duplicate key value violates unique constraint "%"', constraint_name
    USING ERRCODE = 'unique_violation', DETAIL = detail, CONSTRAINT = constraint_name, SCHEMA = schema_name, TABLE = table_name;
END
$fn$;

CREATE TABLE pgmesh.conflict (
  id bigserial PRIMARY KEY,
  recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  peer text NOT NULL,
  relation text NOT NULL,
  pkey text NOT NULL,
  conflict_type text NOT NULL CHECK (conflict_type IN ('insert_exists', 'update_origin_differs', 'update_exists',
    'update_missing', 'delete_origin_differs', 'delete_missing', 'multiple_unique_conflicts')),
  resolution text NOT NULL CHECK (resolution IN ('apply_remote', 'keep_local', 'skip', 'exception', 'pause')),
  local_ts timestamptz,
  local_node text,
  local_row jsonb,
  remote_ts timestamptz NOT NULL,
  remote_node text NOT NULL,
  remote_row jsonb,
  remote_commit_lsn pg_lsn
);
CREATE INDEX ON pgmesh.conflict (recorded_at);
CREATE INDEX ON pgmesh.conflict (relation, pkey);

-- Changes that could not be applied (a secondary unique key taken, a check constraint, a bad value): kept whole
-- until an operator replays or discards them.
CREATE TABLE pgmesh.exception (
  id bigserial PRIMARY KEY,
  recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  peer text NOT NULL,
  relation text,
  change_kind text NOT NULL,
  pkey text,
  change jsonb NOT NULL,
  remote_ts timestamptz NOT NULL,
  remote_commit_lsn pg_lsn NOT NULL,
  sqlstate text,
  error text NOT NULL,
  conflict_type text,
  state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'replayed', 'discarded')),
  resolved_at timestamptz,
  resolution_note text
);
CREATE INDEX ON pgmesh.exception (state, id);

CREATE TABLE pgmesh.table_policy (
  relation_schema text NOT NULL,
  relation_name text NOT NULL,
  conflict_policy text NOT NULL DEFAULT 'last_update_wins'
    CHECK (conflict_policy IN ('last_update_wins', 'keep_local', 'apply_remote', 'pause')),
  exception_policy text NOT NULL DEFAULT 'skip_change'
    CHECK (exception_policy IN ('skip_change', 'skip_transaction', 'pause')),
  delta_columns text[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (relation_schema, relation_name)
);

-- A paused peer is not streamed until an operator resumes it ("pgmesh resume"). The transaction that paused it is
-- then applied once with resume_resolution instead of the pause policy (after the operator repaired the row, the
-- pause would otherwise come back: the repaired row is a newer local version, so still a conflict).
ALTER TABLE pgmesh.apply_progress
  ADD COLUMN paused_at timestamptz,
  ADD COLUMN paused_reason text,
  ADD COLUMN resume_resolution text CHECK (resume_resolution IN ('last_update_wins', 'keep_local', 'apply_remote'));

-- The peer's clock reading at which everything it had committed was applied here (from its keepalives); with the
-- last applied commit timestamp it bounds what the peer can still send, so older tombstones can go.
CREATE TABLE pgmesh.peer_horizon (
  peer text PRIMARY KEY,
  caught_up_ts timestamptz NOT NULL
);

-- Clock offset of each peer as this node's agent measured it (peer clock minus local clock); last-update-wins
-- trusts commit timestamps, so operators must see skew.
CREATE TABLE pgmesh.peer_clock (
  peer text PRIMARY KEY,
  skew_ms double precision NOT NULL,
  rtt_ms double precision NOT NULL,
  measured_at timestamptz NOT NULL
);

-- Removes tombstones (and stale version overrides) that no peer can still need: older than what every peer
-- has been applied up to, less a margin for commit timestamps that are not strictly in commit order.
CREATE FUNCTION pgmesh.gc_tombstones(margin interval) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
  horizon timestamptz;
  peers integer;
  removed bigint;
BEGIN
  SELECT min(greatest(p.remote_commit_ts, h.caught_up_ts)), count(*) FILTER (WHERE greatest(p.remote_commit_ts, h.caught_up_ts) IS NULL)
    INTO horizon, peers
    FROM pgmesh.apply_progress p LEFT JOIN pgmesh.peer_horizon h USING (peer);
  IF horizon IS NULL OR peers > 0 THEN
    RETURN 0;
  END IF;
  DELETE FROM pgmesh.tombstone t
   WHERE coalesce(pg_catalog.pg_xact_commit_timestamp(t.xmin), '-infinity') < horizon - margin;
  GET DIAGNOSTICS removed = ROW_COUNT;
  DELETE FROM pgmesh.version_override o
   WHERE o.ts < horizon - margin
     AND coalesce(pg_catalog.pg_xact_commit_timestamp(o.row_xmin), '-infinity') < horizon - margin;
  RETURN removed;
END
$fn$;
`,
  /* 3: the fast apply path */ `
-- Raises an error with a given SQLSTATE, from inside a SQL statement (a CASE branch calls it only when needed).
-- The apply statements use it for PM001 (the previous pipelined transaction did not commit) and PM004 (a fast-path
-- statement met a row it cannot decide alone: the transaction is applied again by the full statements).
CREATE FUNCTION pgmesh.raise_error(code text, message text, detail text) RETURNS text
LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = coalesce(detail, '');
END
$fn$;

-- Never holds a row: fast-path apply statements insert into it only to raise PM004, so that they return no rows.
CREATE TABLE pgmesh.fast_path_check (miss text);

-- Progress as a log: every applied transaction inserts its row in its own commit. (Updating one progress row per
-- transaction cost the apply session about 45 us: with asynchronous commit its dead versions cannot get hint bits
-- yet, so every lookup walks a chain of them; an insert costs about 10 us. bench/statement-costs.ts measures both.)
-- The newest row of a peer is where its stream resumes; older rows are folded now and then into
-- apply_progress.applied_xacts, which with the rows still here counts every applied transaction exactly once.
-- Seed rows (counted = false) mark where a link starts.
CREATE TABLE pgmesh.applied_xact (
  peer text NOT NULL,
  end_lsn pg_lsn NOT NULL,
  remote_commit_ts timestamptz,
  applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  counted boolean NOT NULL DEFAULT true,
  PRIMARY KEY (peer, end_lsn)
);
INSERT INTO pgmesh.applied_xact (peer, end_lsn, remote_commit_ts, applied_at, counted)
  SELECT peer, end_lsn, remote_commit_ts, coalesce(applied_at, now()), false FROM pgmesh.apply_progress;
-- Replaced by the applier's finish statement (the log row, a session variable for the predecessor check).
DROP FUNCTION pgmesh.finish_apply(text, pg_lsn, pg_lsn, timestamptz);
ALTER TABLE pgmesh.apply_progress DROP COLUMN end_lsn, DROP COLUMN remote_commit_ts, DROP COLUMN applied_at;

-- What operators and the agent read: per peer, the newest applied transaction and the count of all of them.
CREATE VIEW pgmesh.progress AS
SELECT p.peer, coalesce(l.end_lsn, '0/0'::pg_lsn) AS end_lsn, l.remote_commit_ts, l.applied_at,
       p.applied_xacts + coalesce((SELECT count(*) FROM pgmesh.applied_xact a WHERE a.peer = p.peer AND a.counted), 0) AS applied_xacts,
       p.paused_at, p.paused_reason, p.resume_resolution
  FROM pgmesh.apply_progress p
  LEFT JOIN LATERAL (SELECT a.end_lsn, a.remote_commit_ts, a.applied_at FROM pgmesh.applied_xact a
                      WHERE a.peer = p.peer ORDER BY a.end_lsn DESC LIMIT 1) l ON true;

-- Folds a peer's log rows older than its newest into the count (runs beside the apply session: it never touches
-- the newest row, where the stream resumes).
CREATE FUNCTION pgmesh.prune_applied(peer_name text) RETURNS bigint
LANGUAGE sql AS $fn$
  WITH gone AS (
    DELETE FROM pgmesh.applied_xact a
     WHERE a.peer = peer_name AND a.end_lsn < (SELECT max(b.end_lsn) FROM pgmesh.applied_xact b WHERE b.peer = peer_name)
    RETURNING a.counted
  ), counted AS (
    UPDATE pgmesh.apply_progress p SET applied_xacts = p.applied_xacts + (SELECT count(*) FROM gone WHERE gone.counted)
     WHERE p.peer = peer_name RETURNING 1
  )
  SELECT count(*) FROM gone
$fn$;

CREATE OR REPLACE FUNCTION pgmesh.gc_tombstones(margin interval) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
  horizon timestamptz;
  peers integer;
  removed bigint;
BEGIN
  SELECT min(greatest(p.remote_commit_ts, h.caught_up_ts)), count(*) FILTER (WHERE greatest(p.remote_commit_ts, h.caught_up_ts) IS NULL)
    INTO horizon, peers
    FROM pgmesh.progress p LEFT JOIN pgmesh.peer_horizon h USING (peer);
  IF horizon IS NULL OR peers > 0 THEN
    RETURN 0;
  END IF;
  DELETE FROM pgmesh.tombstone t
   WHERE coalesce(pg_catalog.pg_xact_commit_timestamp(t.xmin), '-infinity') < horizon - margin;
  GET DIAGNOSTICS removed = ROW_COUNT;
  DELETE FROM pgmesh.version_override o
   WHERE o.ts < horizon - margin
     AND coalesce(pg_catalog.pg_xact_commit_timestamp(o.row_xmin), '-infinity') < horizon - margin;
  RETURN removed;
END
$fn$;
`,
  /* membership: the state of a node that is joining (node add) */ `
-- A node being added (pgmesh node add) is 'joining' until its copy and every link are in place; its agent refuses to
-- start until then, so a half-joined node never looks healthy. Nodes made by "cluster create" have no row: members.
-- The copy's progress is here too, for status. A node that left (pgmesh node remove) is 'removed'.
CREATE TABLE pgmesh.membership (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  state text NOT NULL CHECK (state IN ('joining', 'member', 'removed')),
  source text NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  phase text,
  tables_total integer,
  tables_done integer NOT NULL DEFAULT 0,
  rows_copied bigint NOT NULL DEFAULT 0,
  bytes_copied bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);
`,
];

export const CATALOG_VERSION = MIGRATIONS.length;
