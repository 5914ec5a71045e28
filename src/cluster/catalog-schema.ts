/**
 * The pgmesh catalog: a schema `pgmesh` on every node, local to that node (never published, never replicated).
 * Migrations run in order inside one transaction; `pgmesh.catalog_version` records the last one applied.
 */

import { DDL_CAPTURE_MIGRATION } from '../ddl/capture-sql.ts';
import { CAPTURE_TRUST_MIGRATION } from '../ddl/capture-trust-sql.ts';
import { DDL_LOCK_MIGRATION, DDL_LOG_MIGRATION, SEQUENCE_GUARD_MIGRATION, DDL_FENCE_HOLDER_MIGRATION } from '../ddl/ddl-lock-sql.ts';
import { APPLY_LOCK_MIGRATION, TRUNCATE_LOCK_MIGRATION, TRUNCATE_MIGRATION } from './truncate-sql.ts';
import { VERSION_HORIZON_MIGRATION } from './version-horizon-sql.ts';
import { RETIRED_ORIGINS_MIGRATION } from './retired-origins-sql.ts';
import { SEQUENCE_STATUS_MIGRATION } from './sequence-status-sql.ts';
import { PEER_IDENTITY_MIGRATION } from './peer-identity.ts';
import { DDL_AS_OWNER_MIGRATION } from '../ddl/ddl-as-owner-sql.ts';
import { KEY_JSON_MIGRATION } from './key-json-sql.ts';
import { OWNER_CODE_MIGRATION } from './owner-code-sql.ts';
import { LINK_NAMES_MIGRATION } from './link-names.ts';
import { PROBE_FIXES_MIGRATION } from './probe-fixes-sql.ts';

export const CATALOG_SCHEMA = 'pgmesh';
export const PUBLICATION = 'pgmesh';

// Names of slots and origins: src/cluster/link-names.ts (unique per server: they carry the database's OID).

/**
 * Catalog functions executable by every role: pgmesh.snowflake_id() (for column defaults), and the functions of
 * pgmesh's row triggers, which PostgreSQL checks for the role that makes or attaches a partition of a replicated table
 * (probe-fixes-sql.ts says why that is safe).
 * Every other function of the catalog is executable only by agent roles and superusers (initNode revokes the rest).
 */
export const PUBLIC_FUNCTIONS: readonly string[] = ['snowflake_id', 'record_key_change', 'record_unique_release'];

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
  /* 4: node-interleaved sequences, snowflake ids (docs/sequences.md) */ `
-- Which columns each sequence feeds: serial and identity columns (the sequence depends on the column) and columns
-- whose default calls nextval() of it (the default depends on the sequence).
CREATE VIEW pgmesh.sequence_feed AS
SELECT d.objid AS seqrelid, d.refobjid AS relid, d.refobjsubid::int2 AS attnum
  FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
   AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
UNION
SELECT d.refobjid, ad.adrelid, ad.adnum
  FROM pg_catalog.pg_attrdef ad
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
   AND d.refclassid = 'pg_catalog.pg_class'::regclass
  JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S';

-- What pgmesh did to each sequence of a replicated table on this node: it hands out first_value, then every
-- step-th value (step = the cluster's maxNodes, negative for a descending sequence).
CREATE TABLE pgmesh.interleaved_sequence (
  seqrelid oid PRIMARY KEY,
  sequence_name text NOT NULL,
  node_slot integer NOT NULL,
  step bigint NOT NULL,
  first_value bigint NOT NULL,
  feeds text[] NOT NULL,
  restarted_at timestamptz NOT NULL,
  checked_at timestamptz NOT NULL
);

-- Every sequence that feeds a replicated table, and whether it still hands out only this node's values (someone may
-- have altered it since, or it was created after its table joined replication).
CREATE VIEW pgmesh.sequence_status AS
WITH used AS (
  SELECT f.seqrelid, array_agg(DISTINCT format('%s.%s.%s', rn.nspname, r.relname, a.attname) ORDER BY format('%s.%s.%s', rn.nspname, r.relname, a.attname)) AS feeds
    FROM pgmesh.sequence_feed f
    JOIN pg_catalog.pg_class r ON r.oid = f.relid
    JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = f.relid AND a.attnum = f.attnum
   WHERE f.relid IN (SELECT pr.prrelid FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                      WHERE p.pubname = 'pgmesh')
   GROUP BY f.seqrelid
), state AS (
  SELECT u.seqrelid, u.feeds, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.relname) AS sequence_name,
         q.seqincrement AS increment, q.seqmin, q.seqmax, q.seqstart,
         CASE WHEN pg_catalog.has_sequence_privilege(s.oid, 'SELECT,USAGE') THEN pg_catalog.pg_sequence_last_value(s.oid) END AS last_value
    FROM used u JOIN pg_catalog.pg_class s ON s.oid = u.seqrelid JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
    JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
)
SELECT st.seqrelid, st.sequence_name, st.feeds, st.increment, st.last_value,
       abs(st.increment) = l.max_nodes AND mod(mod(coalesce(st.last_value, i.first_value, st.seqstart), l.max_nodes) + l.max_nodes, l.max_nodes)
         = mod(l.node_slot, l.max_nodes) AS interleaved,
       i.first_value, i.restarted_at,
       CASE WHEN st.increment > 0 THEN greatest(0, (st.seqmax - coalesce(st.last_value, st.seqstart - st.increment)) / st.increment)
            ELSE greatest(0, (coalesce(st.last_value, st.seqstart - st.increment) - st.seqmin) / -st.increment) END AS values_left
  FROM state st CROSS JOIN pgmesh.local_node l
  LEFT JOIN pgmesh.interleaved_sequence i ON i.seqrelid = st.seqrelid AND i.sequence_name = st.sequence_name;

-- Snowflake ids: 64-bit, sortable by time, unique across nodes without coordination. Bit layout, from the top:
--   1 bit 0 (ids are positive), 41 bits milliseconds since 2025-01-01 00:00 UTC (until 2094),
--   10 bits node slot - 1 (maxNodes is at most 1024), 12 bits counter within the millisecond.
-- The time and counter bits are one value kept in a sequence, never smaller than the last one handed out: the next
-- id takes the clock's millisecond with counter 0, or the last value + 1 if that is not smaller. So a clock that
-- goes back, or more than 4096 ids in a millisecond, borrow from the following milliseconds (ids stay unique and
-- increasing; their time runs ahead until the clock catches up). A sequence survives crashes and never goes back.
CREATE SEQUENCE pgmesh.snowflake_state AS bigint MINVALUE 0 MAXVALUE 9007199254740991 START WITH 0 NO CYCLE;

-- The read-and-advance of the sequence must not interleave with another session's (a setval could go back), so it
-- runs under a session advisory lock held for microseconds, released even when the call is cancelled in between.
-- A transaction-level lock would make every transaction that takes an id wait for the previous one to end.
CREATE FUNCTION pgmesh.snowflake_id_at(clock timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  tick bigint := (floor(extract(epoch FROM clock) * 1000)::bigint - 1735689600000) << 12;
  slot integer;
  state bigint;
  locked boolean := false;
BEGIN
  SELECT l.node_slot INTO slot FROM pgmesh.local_node l;
  IF slot IS NULL OR slot > 1024 THEN
    RAISE EXCEPTION 'pgmesh.snowflake_id: this node has no slot from 1 to 1024 (run "pgmesh init" for it)' USING ERRCODE = 'PM005';
  END IF;
  IF tick < 0 THEN
    RAISE EXCEPTION 'pgmesh.snowflake_id: the clock (%) is before the id epoch 2025-01-01', clock USING ERRCODE = 'PM005';
  END IF;
  BEGIN
    PERFORM pg_advisory_lock(hashtext('pgmesh.snowflake'));
    locked := true;
    state := nextval('pgmesh.snowflake_state');
    IF state < tick THEN
      PERFORM setval('pgmesh.snowflake_state', tick);
      state := tick;
    END IF;
    locked := false;
    PERFORM pg_advisory_unlock(hashtext('pgmesh.snowflake'));
  EXCEPTION WHEN OTHERS OR query_canceled THEN
    IF locked THEN
      PERFORM pg_advisory_unlock(hashtext('pgmesh.snowflake'));
    END IF;
    RAISE;
  END;
  RETURN ((state >> 12) << 22) | ((slot - 1)::bigint << 12) | (state & 4095);
END
$fn$;
-- Taking ids at a chosen time moves the sequence for everyone: only for tests and operators.
REVOKE ALL ON FUNCTION pgmesh.snowflake_id_at(timestamptz) FROM PUBLIC;

CREATE FUNCTION pgmesh.snowflake_id() RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT pgmesh.snowflake_id_at(clock_timestamp())
$fn$;
`,
  /* 5: what runs on users' tables runs as pgmesh; agent roles */ `
-- The triggers on replicated tables fire in the sessions of whoever writes the table: they run as the catalog's
-- owner (SECURITY DEFINER), so a role with only its own table privileges can delete rows and change keys, and with a
-- search_path pinned to pg_catalog, so that role's objects cannot stand in for the ones the functions use.
-- (Which roles may execute pgmesh's functions at all is set by initNode after every upgrade: nobody by default.)
CREATE OR REPLACE FUNCTION pgmesh.record_deletes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
BEGIN
  INSERT INTO pgmesh.tombstone (relid, pkey)
  SELECT TG_RELID, (SELECT pg_catalog.jsonb_agg(j -> k ORDER BY n)::text
                      FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS a(k, n))
    FROM (SELECT pg_catalog.to_jsonb(o) AS j FROM pgmesh_deleted o) d
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey;
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgmesh.record_key_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
BEGIN
  INSERT INTO pgmesh.tombstone (relid, pkey)
  SELECT TG_RELID, (SELECT pg_catalog.jsonb_agg(j -> k ORDER BY n)::text
                      FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS a(k, n))
    FROM (SELECT pg_catalog.to_jsonb(OLD) AS j) o
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey;
  RETURN NULL;
END
$fn$;

-- Roles that agents connect as ("pgmesh cluster create --agent-role"): they get the privileges the agent needs, and
-- again after every catalog upgrade and every "tables add".
CREATE TABLE pgmesh.agent_role (
  role_name text PRIMARY KEY
);
`,
  /* 6: DDL replication: capture by event triggers, the join of new tables, apply (src/ddl/capture-sql.ts) */ DDL_CAPTURE_MIGRATION,
  /* 7: TRUNCATE by version: a tombstone for the whole table (src/cluster/truncate-sql.ts) */ TRUNCATE_MIGRATION,
  /* 8: replicated tables log their whole old row (REPLICA IDENTITY FULL), out-of-line values included */ `
-- pgoutput leaves out an out-of-line (TOAST) value that an update did not change; the old row under REPLICA
-- IDENTITY FULL carries it, so peers can apply the update whole where the row is missing or differs (docs/design.md,
-- "Out-of-line values"). Tables that an earlier pgmesh replicates get it here; "tables add" sets it on new ones.
DO $do$
DECLARE
  r record;
BEGIN
  -- The tables added to the publication, and their partitions (each publishes its own changes).
  FOR r IN WITH published AS (SELECT pr.prrelid AS rel FROM pg_catalog.pg_publication_rel pr
                                JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'pgmesh')
           SELECT c.oid::regclass AS rel FROM pg_catalog.pg_class c
            WHERE (c.oid IN (SELECT rel FROM published)
                   OR c.oid IN (SELECT t.relid FROM published, LATERAL pg_catalog.pg_partition_tree(published.rel) t))
              AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
  LOOP
    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', r.rel);
  END LOOP;
END
$do$;
`,
  /* 9: no silent truncation of applied values */ `
-- Raised by the apply statements for a value that a cast to the local column's type would cut (a string longer than
-- varchar(n), more decimals than numeric(p,s)'s scale): the change goes to the exception table instead. STABLE, so
-- that an index condition can hold the check; the value (never shown: it may be private) is an argument so that the
-- planner cannot call it ahead of time with constants only.
CREATE FUNCTION pgmesh.value_cut(code text, relation oid, column_name text, value_text text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
  RAISE EXCEPTION USING ERRCODE = code, MESSAGE = format(
    'pgmesh: a value does not fit column %I (%s) of %s here and would be cut; widen the column, then replay the exception',
    column_name,
    (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a WHERE a.attrelid = relation AND a.attname = column_name),
    relation::regclass);
END
$fn$;
`,
  /* 10: secondary unique keys converge: claims on unique values, evicted rows' tombstones, restore */ `
-- A tombstone normally carries the version of the transaction that wrote it (its xmin). A row evicted by a newer
-- row that took its unique value keeps its own version instead (ts, node): older writes of its key stay dropped,
-- newer ones come back and are judged again. Written by the current transaction, a tombstone is oldest (later
-- changes of a transaction always win), like a row.
ALTER TABLE pgmesh.tombstone ADD COLUMN ts timestamptz, ADD COLUMN node text;

CREATE FUNCTION pgmesh.tombstone_version(tomb_xmin xid, tomb_ts timestamptz, tomb_node text, local_node text)
RETURNS TABLE (ts timestamptz, node text)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $fn$
  SELECT CASE WHEN tomb_ts IS NULL OR tomb_xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()) THEN v.ts ELSE tomb_ts END,
         CASE WHEN tomb_ts IS NULL OR tomb_xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()) THEN v.node ELSE tomb_node END
    FROM pgmesh.row_version(tomb_xmin, local_node) v
$fn$;

-- The newest version that held a value of a unique index (other than the primary key) and no longer holds it, or
-- never held it here: a row that let go of it (update, delete, eviction), or a remote write that was not applied.
-- With the row holding the value now, it tells the newest write that ever took the value: an older row that takes
-- it, whenever it arrives, gives way (docs/conflicts.md). Version: (ts, node), or the writing transaction's when
-- NULL (local writes, whose commit timestamp is not known yet). Removed with the tombstones.
CREATE TABLE pgmesh.unique_claim (
  relid oid NOT NULL,
  indexid oid NOT NULL,
  value text NOT NULL,
  pkey text NOT NULL,
  ts timestamptz,
  node text,
  PRIMARY KEY (relid, indexid, value)
);

CREATE FUNCTION pgmesh.claim_version(claim_xmin xid, claim_ts timestamptz, claim_node text, local_node text)
RETURNS TABLE (ts timestamptz, node text)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $fn$
  SELECT coalesce(claim_ts, v.ts), CASE WHEN claim_ts IS NULL THEN v.node ELSE claim_node END
    FROM pgmesh.row_version(claim_xmin, local_node) v
$fn$;

-- Changes of the current apply transaction that the unique-key resolution has already decided (they lost): the
-- apply statement that follows leaves them out and removes their rows here. Never holds a committed row.
CREATE TABLE pgmesh.resolved_change (
  relid oid NOT NULL,
  pkey text NOT NULL,
  PRIMARY KEY (relid, pkey)
);

-- When a conflict's losing row was written back by "pgmesh conflicts restore".
ALTER TABLE pgmesh.conflict ADD COLUMN restored_at timestamptz;
-- The applier counts the conflicts of a transaction from the log when the reply that carried them was lost (a later
-- statement of the same message failed).
CREATE INDEX ON pgmesh.conflict (peer, remote_commit_lsn);

-- Local deletes (and key changes) replace an evicted row's tombstone: its own version no longer applies. Like every
-- trigger function on users' tables, they run as the catalog's owner with a pinned search_path (a role with only its
-- own table privileges can write the table).
CREATE OR REPLACE FUNCTION pgmesh.record_deletes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
BEGIN
  INSERT INTO pgmesh.tombstone (relid, pkey)
  SELECT TG_RELID, (SELECT pg_catalog.jsonb_agg(j -> k ORDER BY n)::text
                      FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS a(k, n))
    FROM (SELECT pg_catalog.to_jsonb(o) AS j FROM pgmesh_deleted o) d
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey, ts = NULL, node = NULL;
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgmesh.record_key_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
BEGIN
  INSERT INTO pgmesh.tombstone (relid, pkey)
  SELECT TG_RELID, (SELECT pg_catalog.jsonb_agg(j -> k ORDER BY n)::text
                      FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS a(k, n))
    FROM (SELECT pg_catalog.to_jsonb(OLD) AS j) o
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey, ts = NULL, node = NULL;
  RETURN NULL;
END
$fn$;

-- Row-level trigger on replicated tables with unique indexes besides the primary key: a local update that changes a
-- unique value, or a local delete, lets go of the old values; each is claimed with the old row's version (the
-- trigger's arguments are the primary key columns). Like the other triggers it does not fire in the apply session,
-- whose statements record claims themselves. The value is spelled as the apply statements spell it: the jsonb
-- array of the index's column values, in UTC and ISO styles.
CREATE FUNCTION pgmesh.record_unique_release() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
DECLARE
  old_row jsonb := to_jsonb(OLD);
  new_row jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(NEW) END;
  key text := (SELECT jsonb_agg(old_row -> a.k ORDER BY a.i)::text FROM unnest(TG_ARGV) WITH ORDINALITY AS a(k, i));
  v_ts timestamptz;
  v_node text;
BEGIN
  -- A row written earlier in this transaction: the claim takes this transaction's version (left NULL).
  IF OLD.xmin IS DISTINCT FROM pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()) THEN
    SELECT v.ts, v.node INTO v_ts, v_node
      FROM pgmesh.row_version_keyed(TG_RELID, key, OLD.xmin, (SELECT node_name FROM pgmesh.local_node)) v;
  END IF;
  INSERT INTO pgmesh.unique_claim AS c (relid, indexid, value, pkey, ts, node)
  SELECT TG_RELID, q.indexid, q.old_value, key, v_ts, v_node
    FROM (SELECT i.indexrelid AS indexid,
                 (SELECT jsonb_agg(old_row -> a.attname ORDER BY k.pos)::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE k.pos <= i.indnkeyatts) AS old_value,
                 (SELECT jsonb_agg(new_row -> a.attname ORDER BY k.pos)::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE k.pos <= i.indnkeyatts) AS new_value,
                 (SELECT bool_or(old_row -> a.attname = 'null'::jsonb) FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE k.pos <= i.indnkeyatts) AS has_null
            FROM pg_catalog.pg_index i
           WHERE i.indrelid = TG_RELID AND i.indisunique AND NOT i.indisprimary AND i.indimmediate AND NOT i.indnullsnotdistinct
             AND i.indpred IS NULL AND i.indexprs IS NULL) q
   WHERE NOT q.has_null AND q.old_value IS DISTINCT FROM q.new_value
  ON CONFLICT (relid, indexid, value) DO UPDATE SET pkey = EXCLUDED.pkey, ts = EXCLUDED.ts, node = EXCLUDED.node
   WHERE EXCLUDED.ts IS NULL
      OR (SELECT (cv.ts, cv.node COLLATE "C") < (EXCLUDED.ts, EXCLUDED.node COLLATE "C")
            FROM pgmesh.claim_version(c.xmin, c.ts, c.node, (SELECT node_name FROM pgmesh.local_node)) cv);
  RETURN NULL;
END
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
   WHERE coalesce(t.ts, pg_catalog.pg_xact_commit_timestamp(t.xmin), '-infinity') < horizon - margin;
  GET DIAGNOSTICS removed = ROW_COUNT;
  DELETE FROM pgmesh.unique_claim c
   WHERE coalesce(c.ts, pg_catalog.pg_xact_commit_timestamp(c.xmin), '-infinity') < horizon - margin;
  DELETE FROM pgmesh.version_override o
   WHERE o.ts < horizon - margin
     AND coalesce(pg_catalog.pg_xact_commit_timestamp(o.row_xmin), '-infinity') < horizon - margin;
  RETURN removed;
END
$fn$;
`,
  /* 11: tombstone collection keeps what open exceptions need */ `
-- An open exception may be replayed later with its change's version: the tombstones and unique-value claims of its
-- table must still be there to judge it as it would have been judged, so they are kept while the table has one.
CREATE FUNCTION pgmesh.has_open_exception(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT EXISTS (SELECT 1 FROM pgmesh.exception e, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = rel AND e.state = 'open' AND e.relation = n.nspname || '.' || c.relname)
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
   WHERE coalesce(t.ts, pg_catalog.pg_xact_commit_timestamp(t.xmin), '-infinity') < horizon - margin
     AND NOT pgmesh.has_open_exception(t.relid);
  GET DIAGNOSTICS removed = ROW_COUNT;
  DELETE FROM pgmesh.unique_claim c
   WHERE coalesce(c.ts, pg_catalog.pg_xact_commit_timestamp(c.xmin), '-infinity') < horizon - margin
     AND NOT pgmesh.has_open_exception(c.relid);
  DELETE FROM pgmesh.version_override o
   WHERE o.ts < horizon - margin
     AND coalesce(pg_catalog.pg_xact_commit_timestamp(o.row_xmin), '-infinity') < horizon - margin
     AND NOT pgmesh.has_open_exception(o.relid);
  RETURN removed;
END
$fn$;
`,
  /* 12: membership: the state of a node that is joining (node add) */ `
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
  /* 13: row versions that last: a slot holds commit timestamps newer than the stable horizon (src/cluster/version-horizon-sql.ts) */ VERSION_HORIZON_MIGRATION,
  /* 14: transactions retried in place (deadlocks, serialization failures, lock timeouts), for status */ `
-- The agent counts each transaction of a peer that it applied again in place after a deadlock, a serialization
-- failure or a lock timeout; retry_since and retry_sqlstate say that one is being retried now (cleared by the next
-- transaction that commits). Written beside the apply session, on the agent's catalog connection.
ALTER TABLE pgmesh.apply_progress
  ADD COLUMN apply_retries bigint NOT NULL DEFAULT 0,
  ADD COLUMN retry_since timestamptz,
  ADD COLUMN retry_sqlstate text;
`,
  /* 15: a peer's TRUNCATE takes its tables' apply locks: apply sessions serialise on keys (src/apply/key-lock.ts) */ TRUNCATE_LOCK_MIGRATION,
  /* 16: membership: 'resyncing', a member brought back to the cluster's state (node resync) */ `
-- A member whose stream from some peer was cut (its slot invalidated) or that was restored from an old backup is copied
-- anew (pgmesh node resync); like a joining node, its agent refuses to start until the resync has finished.
ALTER TABLE pgmesh.membership DROP CONSTRAINT membership_state_check;
ALTER TABLE pgmesh.membership ADD CONSTRAINT membership_state_check CHECK (state IN ('joining', 'resyncing', 'member', 'removed'));
`,
  /* 17: acknowledged positions: a keepalive position is recorded here before it is acknowledged to the peer */ `
-- Every position this node acknowledges to a peer is at or below the greater of its progress for that peer and the
-- position recorded here (keepalive positions, which carry no transaction). A peer's slot whose confirmed position is
-- past both means this node lost state it had acknowledged (restored from a backup): it needs a resync.
CREATE TABLE pgmesh.peer_ack (
  peer text PRIMARY KEY,
  acked_lsn pg_lsn NOT NULL
);
`,
  /* 18: the write fence of "pgmesh ddl --lock"; join_table's unique-release triggers as a function of their own (src/ddl/ddl-lock-sql.ts) */ DDL_LOCK_MIGRATION,
  /* 19: a log of the names DDL took away here, for the schema wait; unique-release triggers follow DDL (src/ddl/ddl-lock-sql.ts) */ DDL_LOG_MIGRATION,
  /* 20: ALTER SEQUENCE that would break interleaving refused at the origin (src/ddl/ddl-lock-sql.ts) */ SEQUENCE_GUARD_MIGRATION,
  /* 21: membership_table: the copy's progress per table (node add), for status */ `
-- One row per replicated table while a node joins: rows and bytes copied so far, and the source's estimate of its
-- rows (pg_class.reltuples; NULL when never analyzed). Written anew by each node add attempt.
CREATE TABLE pgmesh.membership_table (
  relation text PRIMARY KEY,
  state text NOT NULL CHECK (state IN ('pending', 'copying', 'done')),
  rows_estimated bigint,
  rows_copied bigint NOT NULL DEFAULT 0,
  bytes_copied bigint NOT NULL DEFAULT 0,
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
`,
  /* 22: origins of nodes that left keep their ids, read as those nodes (src/cluster/retired-origins-sql.ts) */ RETIRED_ORIGINS_MIGRATION,
  /* 23: authenticated messages (cluster key, signed DDL messages and markers), only DDL statements shipped, a statement
     counter and a capture switch users cannot set, only tables a replayed statement created join (src/ddl/capture-trust-sql.ts) */ CAPTURE_TRUST_MIGRATION,
  /* 24: sequence_status.values_left without bigint overflow on a sequence never called yet (src/cluster/sequence-status-sql.ts) */ SEQUENCE_STATUS_MIGRATION,
  /* 25: the cluster id, and each peer's identity recorded at link time (src/cluster/peer-identity.ts) */ PEER_IDENTITY_MIGRATION,
  /* 26: the apply sessions' key and table locks as rows of pgmesh.apply_lock (src/cluster/truncate-sql.ts) */ APPLY_LOCK_MIGRATION,
  /* 27: the DDL fence counts only keys held by recorded "pgmesh ddl --lock" sessions (src/ddl/ddl-lock-sql.ts) */ DDL_FENCE_HOLDER_MIGRATION,
  /* 28: replayed DDL runs as its role with role changes impossible (src/ddl/ddl-as-owner-sql.ts) */ DDL_AS_OWNER_MIGRATION,
  /* 29: the definer triggers spell keys without calling casts that roles created (src/cluster/key-json-sql.ts) */ KEY_JSON_MIGRATION,
  /* 30: code of a table's owner that pgmesh's sessions would run with their rights is refused (src/cluster/owner-code-sql.ts) */ OWNER_CODE_MIGRATION,
  /* 31: slot and origin names unique per server (the database's OID in them), recorded per link; links made before
     keep their old names (src/cluster/link-names.ts) */ LINK_NAMES_MIGRATION,
  /* 32: what the attacker's probe found (src/cluster/probe-fixes-sql.ts):
     pgmesh's row triggers executable by every role, so that a table's owner can make a partition of it (they record
     nothing on tables pgmesh does not replicate); snowflake_id and the version horizon lock pgmesh tables instead of
     fixed advisory keys; refused messages do not hold the version horizon */ PROBE_FIXES_MIGRATION,
];

export const CATALOG_VERSION = MIGRATIONS.length;
