/**
 * Origins of nodes that left (catalog migration). A row's version names its node through the replication origin id
 * in its commit record (pg_xact_commit_timestamp_origin), read back by pgmesh.origin_node / pgmesh.row_version from
 * pg_replication_origin. Dropping a node's origins (node remove, a resync or a failed add undone) would leave its
 * rows with an id that names nobody ('?<id>', which can differ between nodes), and the next origin created would take
 * the id, so that those rows would read as written by that node (whose changes the same-peer rule then lets win).
 * So an origin is retired, not just dropped: in the same transaction a placeholder takes its id, named
 * pgmeshl<id>_<node> and read as <node>. A placeholder has no progress (it is never set up or advanced), so it holds
 * no replication state entry (max_replication_slots / max_active_replication_origins). Free ids found below the old
 * one on the way get placeholders too (pgmeshh_<id>_<n>, read as '?<id>', as before), so the loop ends on the old id.
 */
export const RETIRED_ORIGINS_MIGRATION = `
CREATE OR REPLACE FUNCTION pgmesh.origin_node(roident oid, local_node text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
  SELECT CASE WHEN roident = 0 THEN local_node
    ELSE coalesce((SELECT CASE WHEN o.roname LIKE 'pgmesh\\_%' THEN substr(o.roname, 8)
                               WHEN o.roname LIKE 'pgmeshr\\_%' THEN substr(o.roname, 9)
                               WHEN o.roname ~ '^pgmeshl[0-9]+_' THEN regexp_replace(o.roname, '^pgmeshl[0-9]+_', '')
                               WHEN o.roname LIKE 'pgmeshh\\_%' THEN '?' || o.roident
                               ELSE o.roname END
                   FROM pg_catalog.pg_replication_origin o WHERE o.roident = origin_node.roident), '?' || roident)
  END
$fn$;

CREATE OR REPLACE FUNCTION pgmesh.row_version(row_xmin xid, local_node text) RETURNS TABLE (ts timestamptz, node text)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $fn$
  SELECT coalesce(c.timestamp, '-infinity'::timestamptz),
         CASE WHEN c.roident = 0 THEN local_node
              WHEN o.roname LIKE 'pgmesh\\_%' THEN substr(o.roname, 8)
              WHEN o.roname LIKE 'pgmeshr\\_%' THEN substr(o.roname, 9)
              WHEN o.roname ~ '^pgmeshl[0-9]+_' THEN regexp_replace(o.roname, '^pgmeshl[0-9]+_', '')
              WHEN o.roname LIKE 'pgmeshh\\_%' THEN '?' || c.roident
              ELSE coalesce(o.roname, '?' || c.roident) END
    FROM pg_catalog.pg_xact_commit_timestamp_origin(row_xmin) c
    LEFT JOIN pg_catalog.pg_replication_origin o ON o.roident = c.roident
$fn$;

-- Drops origin (of node) and keeps its id taken by a placeholder that reads as node. Fails like
-- pg_replication_origin_drop while a session uses the origin (the caller waits and tries again).
CREATE FUNCTION pgmesh.retire_origin(origin text, node text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  old_id oid;
  new_id oid;
  n integer := 0;
BEGIN
  SELECT o.roident INTO old_id FROM pg_replication_origin o WHERE o.roname = origin;
  IF old_id IS NULL THEN
    RETURN;
  END IF;
  PERFORM pg_replication_origin_drop(origin);
  LOOP
    -- pg_replication_origin_create takes the lowest free id: the old one, unless a lower one is free.
    SELECT min(i) INTO new_id FROM generate_series(1, old_id::integer) i
     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin o WHERE o.roident = i);
    IF new_id = old_id THEN
      PERFORM pg_replication_origin_create(format('pgmeshl%s_%s', old_id, node));
      RETURN;
    END IF;
    n := n + 1;
    PERFORM pg_replication_origin_create(format('pgmeshh_%s_%s', old_id, n));
  END LOOP;
END
$fn$;
`;
