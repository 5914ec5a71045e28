/**
 * Row versions that last (catalog migration; docs/design.md, "Row versions"). A row's version is its xmin's commit
 * timestamp, and PostgreSQL truncates commit timestamps behind the oldest datfrozenxid of all databases. A version
 * may be forgotten (read as oldest) only once it is *stable*: older than everything any peer can still send here.
 * - The stable time S: every peer's changes up to S have been applied here (the horizon tombstone collection uses,
 *   from apply progress and the peers' keepalives), less a margin, and no open exception older than S.
 * - The stable xid H: every xid below H is finished, and those that committed have a timestamp at or before S. The
 *   agent moves H up by scanning commit timestamps from H (each xid once, in order).
 * - A logical slot of this node's own database (pgmesh__versions_<database oid>) whose catalog_xmin stays at or
 *   below H: a logical slot's catalog_xmin holds back the catalogs' relfrozenxid in every database, hence
 *   datfrozenxid, hence commit timestamp truncation (tests/integration/commit-ts-horizon.test.ts shows it on 16-18).
 *   Slots move by LSN, so the agent records checkpoints (an LSN, then an xid taken after it): advanced to a
 *   checkpoint's LSN, the slot's catalog_xmin is at most that xid (it is the oldest running xid of a
 *   running-transactions record before the LSN). The slot goes to the newest checkpoint whose xid is at or below H.
 * While a peer is not heard from, S stays, and the slot holds commit timestamps (and the WAL after its position),
 * like that peer's own slot here does.
 */

/** The slot's name: one per database (slot names are server-wide); a node name never starts with an underscore. */
export const VERSION_HORIZON_SLOT_SQL = `'pgmesh__versions_' || (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())`;

export const VERSION_HORIZON_MIGRATION = `
-- H and S (see src/cluster/version-horizon-sql.ts): every xid below stable_xid committed at or before stable_ts,
-- or not at all. One row, written by pgmesh.advance_version_horizon.
CREATE TABLE pgmesh.version_horizon (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  slot_name text NOT NULL,
  stable_xid xid8 NOT NULL,
  stable_ts timestamptz,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- LSNs the slot may be advanced to, each with an xid taken after it (at or above the catalog_xmin it would get).
CREATE TABLE pgmesh.version_checkpoint (
  lsn pg_lsn PRIMARY KEY,
  next_xid xid8 NOT NULL
);

-- The time up to which every peer's changes have been applied here: the newest applied commit or the peer's clock
-- reading when it had nothing more (its keepalives); NULL while some peer has given neither.
CREATE FUNCTION pgmesh.received_horizon() RETURNS timestamptz
LANGUAGE sql STABLE AS $fn$
  SELECT CASE WHEN count(*) FILTER (WHERE greatest(p.remote_commit_ts, h.caught_up_ts) IS NULL) = 0
              THEN min(greatest(p.remote_commit_ts, h.caught_up_ts)) END
    FROM pgmesh.progress p LEFT JOIN pgmesh.peer_horizon h USING (peer)
$fn$;

-- One step: makes sure the slot exists (again, if it was invalidated), moves S and H, advances the slot, records a
-- checkpoint. Scans at most max_scan xids (the next step goes on from there).
CREATE FUNCTION pgmesh.advance_version_horizon(margin interval, max_scan bigint)
RETURNS TABLE (slot_name text, created boolean, recreated boolean, stable_ts timestamptz, stable_xid xid8, advanced_to pg_lsn)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  slot text := ${VERSION_HORIZON_SLOT_SQL};
  existing record;
  has_slot boolean;
  was_created boolean := false;
  was_recreated boolean := false;
  received timestamptz;
  oldest_exception timestamptz;
  stable timestamptz;
  h bigint;
  upper bigint;
  found_xid bigint;
  target pg_lsn;
  here pg_lsn;
BEGIN
  -- Slots are created and advanced before this transaction takes an xid (a slot cannot be created after writes).
  PERFORM pg_catalog.pg_advisory_xact_lock(hashtext('pgmesh.version_horizon'));
  -- A node that left keeps nothing: a slot left behind would hold its commit timestamps (and catalogs) for ever.
  IF EXISTS (SELECT FROM pgmesh.membership m WHERE m.state = 'removed') THEN
    PERFORM pg_catalog.pg_drop_replication_slot(s.slot_name) FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
    RETURN;
  END IF;
  SELECT s.confirmed_flush_lsn, s.wal_status, to_jsonb(s) ->> 'invalidation_reason' AS invalidation
    INTO existing FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot;
  has_slot := FOUND;
  IF has_slot AND (existing.wal_status = 'lost' OR existing.invalidation IS NOT NULL
                   OR NOT EXISTS (SELECT FROM pgmesh.version_horizon v WHERE v.slot_name = slot)) THEN
    -- Invalidated (max_slot_wal_keep_size, idle timeout), it holds nothing any more: versions written since S may
    -- have been truncated (the caller warns). A slot without its row (restored from elsewhere) is started afresh.
    PERFORM pg_catalog.pg_drop_replication_slot(slot);
    was_recreated := true;
    has_slot := false;
  END IF;
  IF NOT has_slot THEN
    PERFORM pg_catalog.pg_create_logical_replication_slot(slot, 'pgoutput');
    was_created := NOT was_recreated;
    -- Transactions older than the slot were never held: start from what is finished now.
    DELETE FROM pgmesh.version_checkpoint;
    INSERT INTO pgmesh.version_horizon AS v (slot_name, stable_xid) VALUES (slot, pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()))
      ON CONFLICT (singleton) DO UPDATE SET slot_name = EXCLUDED.slot_name, stable_xid = EXCLUDED.stable_xid, stable_ts = NULL,
        created_at = clock_timestamp(), updated_at = clock_timestamp();
  ELSE
    received := pgmesh.received_horizon();
    SELECT min(e.remote_ts) INTO oldest_exception FROM pgmesh.exception e WHERE e.state = 'open';
    IF received IS NOT NULL THEN
      stable := least(received, oldest_exception) - margin;
      SELECT v.stable_xid::text::bigint INTO h FROM pgmesh.version_horizon v;
      upper := least(pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint, h + max_scan);
      -- Below the snapshot's xmin every xid is finished: a commit timestamp there is final (NULL: aborted, or
      -- already forgotten).
      SELECT g INTO found_xid
        FROM pg_catalog.generate_series(h, upper - 1) g
       WHERE pg_catalog.pg_xact_commit_timestamp(pg_catalog.xid(g::text::xid8)) > stable
       LIMIT 1;
      h := coalesce(found_xid, greatest(h, upper));
      SELECT max(c.lsn) INTO target FROM pgmesh.version_checkpoint c WHERE c.next_xid::text::bigint <= h;
      IF target IS NOT NULL AND target > existing.confirmed_flush_lsn THEN
        -- Advanced at most to the flushed WAL; what is left is taken at the next step.
        PERFORM pg_catalog.pg_replication_slot_advance(slot, target);
      END IF;
      UPDATE pgmesh.version_horizon v SET stable_xid = h::text::xid8, stable_ts = stable, updated_at = clock_timestamp();
      DELETE FROM pgmesh.version_checkpoint c
       WHERE c.lsn < (SELECT s.confirmed_flush_lsn FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = slot);
    END IF;
  END IF;
  -- The xid is taken after the LSN is read: it is at or above every xid running at that LSN.
  here := pg_catalog.pg_current_wal_insert_lsn();
  INSERT INTO pgmesh.version_checkpoint (lsn, next_xid) VALUES (here, pg_catalog.pg_current_xact_id()) ON CONFLICT DO NOTHING;
  RETURN QUERY SELECT slot, was_created, was_recreated, v.stable_ts, v.stable_xid, target FROM pgmesh.version_horizon v;
END
$fn$;

-- Drops the slot (node remove, after marking the node removed): waits for a step under way, and a later step sees
-- the node removed and makes none.
CREATE FUNCTION pgmesh.drop_version_horizon() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  PERFORM pg_catalog.pg_advisory_xact_lock(hashtext('pgmesh.version_horizon'));
  PERFORM pg_catalog.pg_drop_replication_slot(s.slot_name) FROM pg_catalog.pg_replication_slots s
    WHERE s.slot_name = ${VERSION_HORIZON_SLOT_SQL};
  RETURN FOUND;
END
$fn$;
`;
