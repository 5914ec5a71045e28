/**
 * The catalog side of `pgmesh ddl --lock` (src/ddl/ddl-lock.ts, docs/ddl.md, "Changes that must not race"): a write
 * fence on every replicated table.
 *
 * Why not LOCK TABLE: a table lock held on a node stops the apply sessions too, and the lock needs them to go on
 * (every node must apply what the others sent before the lock, then the schema change itself). The fence is a
 * statement trigger, and triggers do not fire in apply sessions (session_replication_role = replica): it stops the
 * node's own writers only.
 *
 * How: the lock holds, on every node, a session advisory lock per table it changes (key ddl_lock_key(table)), or the
 * one for every replicated table (ddl_lock_key(0)). Each local write statement takes the same keys shared, without
 * waiting, until its transaction ends. So taking the lock waits for the transactions that are writing those tables
 * (their writes are then in the WAL before the lock's catch-up marker), and from then on a write fails at once with
 * SQLSTATE 55P03. It fails rather than waits: a writer waiting inside its statement would hold the table's lock, and
 * the schema change, which needs that table exclusively, would wait for it in turn. A lock whose session ends (the
 * command is killed, a node's connection drops) is gone with it: nothing stays locked behind.
 */

/** Keys of pgmesh's advisory locks for the fence: 'pgm' in the high 32 bits, the table's OID (0: all) in the low. */
export const DDL_LOCK_MIGRATION = `
CREATE FUNCTION pgmesh.ddl_lock_key(rel oid) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT (7366509::bigint << 32) | rel::bigint $fn$;

-- The fence (see src/ddl/ddl-lock-sql.ts): fails a local write to a table that "pgmesh ddl --lock" holds.
CREATE FUNCTION pgmesh.ddl_fence() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF NOT pg_try_advisory_xact_lock_shared(pgmesh.ddl_lock_key(0))
     OR NOT pg_try_advisory_xact_lock_shared(pgmesh.ddl_lock_key(TG_RELID)) THEN
    RAISE EXCEPTION 'pgmesh: %.% is locked for a cluster-wide schema change', TG_TABLE_SCHEMA, TG_TABLE_NAME
      USING ERRCODE = '55P03',
            DETAIL = '"pgmesh ddl --lock" refuses writes to the tables it changes, on every node, until the change has reached every node.',
            HINT = 'Retry the transaction in a moment.';
  END IF;
  RETURN NULL;
END
$fn$;

CREATE FUNCTION pgmesh.install_ddl_fence(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  capture text := current_setting('pgmesh.ddl_capture', true);
BEGIN
  PERFORM set_config('pgmesh.ddl_capture', 'off', true);
  EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_ddl_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.ddl_fence()', rel);
  PERFORM set_config('pgmesh.ddl_capture', coalesce(capture, ''), true);
END
$fn$;

-- The triggers that keep a claim on a unique value a local update or delete lets go of (docs/conflicts.md), as the
-- table's unique indexes are now: created, changed or dropped. Called by join_table, and after DDL on a replicated
-- table (so a unique index added later gets them without "tables add").
CREATE FUNCTION pgmesh.sync_unique_release(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  keys text[];
  args text;
  ucols text[];
  capture text := current_setting('pgmesh.ddl_capture', true);
BEGIN
  SELECT array_agg(a.attname::text ORDER BY k.n) INTO keys
    FROM pg_index i
    JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON true
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = rel AND i.indisprimary;
  IF keys IS NULL THEN
    RETURN;
  END IF;
  SELECT string_agg(quote_literal(k), ', ') INTO args FROM unnest(keys) k;
  -- Only unique indexes resolved by version: immediate, plain columns, no predicate, NULLs distinct.
  SELECT array_agg(DISTINCT a.attname::text) INTO ucols
    FROM pg_index i
    JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON k.n <= i.indnkeyatts
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = rel AND i.indisunique AND NOT i.indisprimary AND i.indimmediate AND NOT i.indnullsnotdistinct
     AND i.indpred IS NULL AND i.indexprs IS NULL;
  PERFORM set_config('pgmesh.ddl_capture', 'off', true);
  IF ucols IS NULL THEN
    EXECUTE format('DROP TRIGGER IF EXISTS pgmesh_unique_release_update ON %s', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS pgmesh_unique_release_delete ON %s', rel);
  ELSE
    EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_unique_release_update AFTER UPDATE OF %s ON %s
                      FOR EACH ROW WHEN (ROW(%s) IS DISTINCT FROM ROW(%s)) EXECUTE FUNCTION pgmesh.record_unique_release(%s)',
                   (SELECT string_agg(quote_ident(c), ', ' ORDER BY c) FROM unnest(ucols) c), rel,
                   (SELECT string_agg('OLD.' || quote_ident(c), ', ' ORDER BY c) FROM unnest(ucols) c),
                   (SELECT string_agg('NEW.' || quote_ident(c), ', ' ORDER BY c) FROM unnest(ucols) c), args);
    EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_unique_release_delete AFTER DELETE ON %s
                      FOR EACH ROW EXECUTE FUNCTION pgmesh.record_unique_release(%s)', rel, args);
  END IF;
  PERFORM set_config('pgmesh.ddl_capture', coalesce(capture, ''), true);
END
$fn$;

-- join_table as before (src/ddl/capture-sql.ts), with the unique-release triggers from sync_unique_release and the
-- write fence of "pgmesh ddl --lock".
CREATE OR REPLACE FUNCTION pgmesh.join_table(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  keys text[];
  args text;
  capture text := current_setting('pgmesh.ddl_capture', true);
  agent text;
  part regclass;
BEGIN
  SELECT array_agg(a.attname::text ORDER BY k.n) INTO keys
    FROM pg_index i
    JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON true
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = rel AND i.indisprimary;
  IF keys IS NULL THEN
    RAISE EXCEPTION 'pgmesh: table % has no primary key; pgmesh needs one to find the same row on every node', rel
      USING ERRCODE = 'PM006', HINT = format('ALTER TABLE %s ADD PRIMARY KEY (...)', rel);
  END IF;
  PERFORM set_config('pgmesh.ddl_capture', 'off', true);
  FOR part IN SELECT c.oid::regclass FROM pg_class c
               WHERE (c.oid = rel OR c.oid IN (SELECT t.relid FROM pg_partition_tree(rel) t))
                 AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f' LOOP
    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
  END LOOP;
  IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                  WHERE p.pubname = 'pgmesh' AND pr.prrelid = rel) THEN
    EXECUTE format('ALTER PUBLICATION pgmesh ADD TABLE %s', rel);
  END IF;
  SELECT string_agg(quote_literal(k), ', ') INTO args FROM unnest(keys) k;
  EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_record_deletes AFTER DELETE ON %s
                    REFERENCING OLD TABLE AS pgmesh_deleted FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.record_deletes(%s)', rel, args);
  EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_record_key_change AFTER UPDATE OF %s ON %s
                    FOR EACH ROW WHEN (ROW(%s) IS DISTINCT FROM ROW(%s)) EXECUTE FUNCTION pgmesh.record_key_change(%s)',
                 (SELECT string_agg(quote_ident(k), ', ') FROM unnest(keys) k), rel,
                 (SELECT string_agg('OLD.' || quote_ident(k), ', ') FROM unnest(keys) k),
                 (SELECT string_agg('NEW.' || quote_ident(k), ', ') FROM unnest(keys) k), args);
  EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_record_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.record_truncate()', rel);
  PERFORM pgmesh.sync_unique_release(rel);
  PERFORM pgmesh.install_ddl_fence(rel);
  FOR agent IN SELECT role_name FROM pgmesh.agent_role LOOP
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel), agent);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON %s TO %I', rel, agent);
  END LOOP;
  PERFORM set_config('pgmesh.ddl_capture', coalesce(capture, ''), true);
END
$fn$;

SELECT pgmesh.install_ddl_fence(pr.prrelid::regclass)
  FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
 WHERE p.pubname = 'pgmesh';
`;
