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

/**
 * What DDL did here, for the apply side (docs/ddl.md, "Racing schema changes"):
 * - pgmesh.ddl_log keeps the replicated tables and columns that DDL on this node took away (dropped or renamed),
 *   whether it was run here or applied from a peer. A peer that sends one of them is behind this node: its change is
 *   applied without it at once (Applier.bind), instead of stopping the stream for tuning.schemaWaitMs as for a table
 *   or column that has not arrived yet. A name that comes back (added again) leaves the log.
 * - After DDL on a replicated table, its unique-release triggers follow its unique indexes (sync_unique_release):
 *   a unique index or constraint added later gets them without "pgmesh tables add".
 * Both run for DDL of local sessions (event triggers, top level only) and for DDL applied from a peer (apply_ddl,
 * where event triggers do not fire).
 */
export const DDL_LOG_MIGRATION = `
CREATE TABLE pgmesh.ddl_log (
  schema_name text NOT NULL,
  table_name text NOT NULL,
  -- '' for the table itself.
  column_name text NOT NULL,
  gone_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schema_name, table_name, column_name)
);

-- The names of the replicated tables and their columns, as peers' relation messages spell them.
CREATE FUNCTION pgmesh.replicated_names() RETURNS TABLE (schema_name text, table_name text, column_name text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT n.nspname::text, c.relname::text, coalesce(a.attname::text, '')
    FROM pg_publication p
    JOIN pg_publication_rel pr ON pr.prpubid = p.oid
    JOIN pg_class c ON c.oid = pr.prrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN LATERAL (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                       UNION ALL SELECT NULL) a ON true
   WHERE p.pubname = 'pgmesh'
$fn$;

-- Before a statement that can take names away: the names there are now.
CREATE FUNCTION pgmesh.ddl_names_before() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT coalesce(jsonb_agg(jsonb_build_array(r.schema_name, r.table_name, r.column_name)), '[]') FROM pgmesh.replicated_names() r
$fn$;

-- After it: names gone since "before" enter the log, names there now leave it; tables are the replicated ones the
-- statement changed (their unique-release triggers follow their indexes).
CREATE FUNCTION pgmesh.ddl_note(before jsonb, tables oid[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  rel oid;
BEGIN
  IF before IS NOT NULL THEN
    INSERT INTO pgmesh.ddl_log AS l (schema_name, table_name, column_name)
    SELECT b ->> 0, b ->> 1, b ->> 2 FROM jsonb_array_elements(before) b
    EXCEPT SELECT * FROM pgmesh.replicated_names()
    ON CONFLICT (schema_name, table_name, column_name) DO UPDATE SET gone_at = now();
  END IF;
  DELETE FROM pgmesh.ddl_log l USING pgmesh.replicated_names() n
   WHERE (l.schema_name, l.table_name, l.column_name) = (n.schema_name, n.table_name, n.column_name);
  FOREACH rel IN ARRAY coalesce(tables, '{}') LOOP
    IF EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                WHERE p.pubname = 'pgmesh' AND pr.prrelid = rel) THEN
      PERFORM pgmesh.sync_unique_release(rel::regclass);
    END IF;
  END LOOP;
END
$fn$;

-- The tables a DDL statement changed, from pg_event_trigger_ddl_commands() (here) or a message's commands (applied).
CREATE FUNCTION pgmesh.ddl_tables(commands jsonb) RETURNS oid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT coalesce(array_agg(DISTINCT CASE WHEN c ->> 'type' = 'index' THEN i.indrelid ELSE r END), '{}')
    FROM jsonb_array_elements(commands) c
    CROSS JOIN LATERAL to_regclass(c ->> 'identity') r
    LEFT JOIN pg_index i ON i.indexrelid = r
   WHERE c ->> 'type' IN ('table', 'index') AND r IS NOT NULL
$fn$;

-- Event triggers of local DDL (run by a client, not nested in a function: pgmesh's own DDL is nested).
CREATE FUNCTION pgmesh.ddl_note_start() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  ctx text;
BEGIN
  GET DIAGNOSTICS ctx = PG_CONTEXT;
  IF strpos(ctx, E'\\n') > 0 THEN
    RETURN;
  END IF;
  PERFORM set_config('pgmesh.ddl_names_before',
                     CASE WHEN tg_tag LIKE 'ALTER %' OR tg_tag LIKE 'DROP %' THEN pgmesh.ddl_names_before()::text ELSE '' END, true);
END
$fn$;

CREATE FUNCTION pgmesh.ddl_note_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  ctx text;
  before text := current_setting('pgmesh.ddl_names_before', true);
BEGIN
  GET DIAGNOSTICS ctx = PG_CONTEXT;
  IF strpos(ctx, E'\\n') > 0 THEN
    RETURN;
  END IF;
  PERFORM set_config('pgmesh.ddl_names_before', '', true);
  PERFORM pgmesh.ddl_note(nullif(before, '')::jsonb,
    pgmesh.ddl_tables((SELECT coalesce(jsonb_agg(jsonb_build_object('type', d.object_type, 'identity', d.object_identity)), '[]')
                         FROM pg_event_trigger_ddl_commands() d)));
END
$fn$;

CREATE EVENT TRIGGER pgmesh_ddl_note_start ON ddl_command_start EXECUTE FUNCTION pgmesh.ddl_note_start();
CREATE EVENT TRIGGER pgmesh_ddl_note_end ON ddl_command_end EXECUTE FUNCTION pgmesh.ddl_note_end();

-- apply_ddl as before (src/ddl/capture-sql.ts), with pgmesh.ddl_note around the statement.
CREATE OR REPLACE FUNCTION pgmesh.apply_ddl(peer text, remote_ts timestamptz, remote_lsn pg_lsn, statement text, problem text, message jsonb)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  identity text;
  code text := CASE WHEN problem IS NOT NULL THEN 'PM008' END;
  error text := problem;
  detail text;
  sequences_before oid[] := ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind = 'S');
  names_before jsonb := CASE WHEN message ->> 'tag' LIKE 'ALTER %' OR message ->> 'tag' LIKE 'DROP %' THEN pgmesh.ddl_names_before() END;
BEGIN
  IF statement IS NOT NULL THEN
    BEGIN
      PERFORM set_config('search_path', message ->> 'search_path', true);
      EXECUTE format('SET LOCAL ROLE %I', message ->> 'role');
      EXECUTE statement;
      SET LOCAL ROLE NONE;
      PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, error = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
      error := error || CASE WHEN coalesce(detail, '') <> '' THEN ' (' || detail || ')' ELSE '' END;
    END;
  END IF;
  IF code IS NOT NULL THEN
    INSERT INTO pgmesh.exception (peer, relation, change_kind, change, remote_ts, remote_commit_lsn, sqlstate, error)
    VALUES (peer, NULL, 'ddl', jsonb_build_object('statement', statement, 'search_path', message -> 'search_path',
                                                  'role', message -> 'role', 'tag', message -> 'tag', 'query', message -> 'query'),
            remote_ts, remote_lsn, code, error);
  END IF;
  FOR identity IN SELECT jsonb_array_elements_text(message -> 'joined') LOOP
    IF to_regclass(identity) IS NOT NULL THEN
      PERFORM pgmesh.join_table(identity::regclass);
    END IF;
  END LOOP;
  PERFORM pgmesh.interleave_new_sequences(ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind = 'S' AND c.oid <> ALL (sequences_before)));
  PERFORM pgmesh.ddl_note(CASE WHEN code IS NULL THEN names_before END, pgmesh.ddl_tables(message -> 'commands'));
  RETURN code IS NULL;
END
$fn$;
`;

/**
 * An ALTER SEQUENCE (or ALTER TABLE ... ALTER COLUMN ... SET INCREMENT BY / RESTART of an identity column) that
 * changes the step, the START or the position of an interleaved sequence is refused at the origin
 * (docs/sequences.md): each node's sequence has a slot of its own, and the same step or value replayed on every node
 * would make them hand out the same values. Told by the sequence before and after the statement (ddl_command_start,
 * ddl_command_end). pgmesh's own changes to sequences run with capture off or nested in its functions, and are not
 * checked.
 */
export const SEQUENCE_GUARD_MIGRATION = `
-- Step, START and position of the interleaved sequences (a restart changes the position, or only is_called).
CREATE FUNCTION pgmesh.interleaved_sequence_state() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  state jsonb := '{}';
  s record;
  position jsonb;
BEGIN
  FOR s IN SELECT i.seqrelid, q.seqincrement, q.seqstart FROM pgmesh.interleaved_sequence i JOIN pg_sequence q ON q.seqrelid = i.seqrelid LOOP
    EXECUTE format('SELECT jsonb_build_array(last_value, is_called) FROM %s', s.seqrelid::regclass) INTO position;
    state := state || jsonb_build_object(s.seqrelid::text, jsonb_build_array(s.seqincrement, s.seqstart, position));
  END LOOP;
  RETURN state;
END
$fn$;

CREATE FUNCTION pgmesh.ddl_sequence_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  ctx text;
  before jsonb;
  after jsonb;
  s record;
BEGIN
  IF tg_tag NOT IN ('ALTER SEQUENCE', 'ALTER TABLE') OR current_setting('pgmesh.ddl_capture', true) = 'off' THEN
    RETURN;
  END IF;
  GET DIAGNOSTICS ctx = PG_CONTEXT;
  IF strpos(ctx, E'\\n') > 0 THEN
    RETURN;
  END IF;
  IF tg_event = 'ddl_command_start' THEN
    PERFORM set_config('pgmesh.ddl_sequences_before', pgmesh.interleaved_sequence_state()::text, true);
    RETURN;
  END IF;
  before := nullif(current_setting('pgmesh.ddl_sequences_before', true), '')::jsonb;
  after := pgmesh.interleaved_sequence_state();
  -- An identity column's sequence changed by ALTER TABLE is listed as a sequence too.
  FOR s IN SELECT i.seqrelid::regclass AS seq, i.step, i.first_value, i.node_slot
             FROM pgmesh.interleaved_sequence i
            WHERE i.seqrelid IN (SELECT d.objid FROM pg_event_trigger_ddl_commands() d WHERE d.object_type = 'sequence')
              AND (before -> i.seqrelid::text) IS DISTINCT FROM (after -> i.seqrelid::text) LOOP
    RAISE EXCEPTION 'pgmesh: % would break the interleaving of sequence %', tg_tag, s.seq
      USING ERRCODE = 'PM007',
            DETAIL = format('On this node (slot %s) it steps by %s from %s, and every node''s sequence has a slot of its own: a step, START or RESTART replayed on every node would make them hand out the same values.', s.node_slot, s.step, s.first_value),
            HINT = 'Change INCREMENT, START or RESTART of an interleaved sequence on each node yourself, with SET LOCAL pgmesh.ddl_capture = off, each in its own slot (docs/sequences.md); its other options (CACHE, MAXVALUE, OWNED BY, ...) replicate.';
  END LOOP;
END
$fn$;

-- Event triggers of an event fire in the order of their names: this one before pgmesh_ddl_command_end, which
-- interleaves the sequences a statement created or changed (so it would hide the change on this node only).
CREATE EVENT TRIGGER pgmesh_ddl_check_sequences_start ON ddl_command_start EXECUTE FUNCTION pgmesh.ddl_sequence_guard();
CREATE EVENT TRIGGER pgmesh_ddl_check_sequences ON ddl_command_end EXECUTE FUNCTION pgmesh.ddl_sequence_guard();
`;

/**
 * The fence without a secret (docs/security.md, "Lock spaces"): an advisory lock needs no privilege, so any role that
 * held a fence key (ddl_lock_key is fixed and public) made every local write to the replicated tables fail with
 * 55P03. A write now fails only when a session of "pgmesh ddl --lock" holds or awaits the key: each one records its
 * process (pid and start time, so a reused pid is not mistaken for it) in pgmesh.ddl_fence_session, which only
 * pgmesh's roles can write. A key held by anyone else is ignored by writers. Checked only when the key is not free
 * (the try-lock fails): a write outside a schema change costs what it did.
 * Someone else's lock can still make "pgmesh ddl --lock" itself wait (and time out, naming that process): it cannot
 * stop the node's writes.
 */
export const DDL_FENCE_HOLDER_MIGRATION = `
CREATE TABLE pgmesh.ddl_fence_session (
  pid integer PRIMARY KEY,
  backend_start timestamptz NOT NULL
);

-- Whether a recorded "pgmesh ddl --lock" session holds or waits for the fence key of rel (0: every table).
CREATE FUNCTION pgmesh.ddl_fence_held(rel oid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT EXISTS (
    SELECT 1 FROM pg_locks l
      JOIN pgmesh.ddl_fence_session s ON s.pid = l.pid
      JOIN pg_stat_activity a ON a.pid = l.pid AND a.backend_start = s.backend_start
     WHERE l.locktype = 'advisory' AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
       AND l.classid = (pgmesh.ddl_lock_key(rel) >> 32)::oid AND l.objid = rel AND l.objsubid = 1 AND l.mode = 'ExclusiveLock')
$fn$;
REVOKE ALL ON FUNCTION pgmesh.ddl_fence_held(oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgmesh.ddl_fence() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  fenced boolean := false;
BEGIN
  -- Both keys are tried (a failed try takes nothing); a key that is not free fences only if pgmesh holds it.
  IF NOT pg_try_advisory_xact_lock_shared(pgmesh.ddl_lock_key(0)) THEN
    fenced := pgmesh.ddl_fence_held(0);
  END IF;
  IF NOT fenced AND NOT pg_try_advisory_xact_lock_shared(pgmesh.ddl_lock_key(TG_RELID)) THEN
    fenced := pgmesh.ddl_fence_held(TG_RELID);
  END IF;
  IF fenced THEN
    RAISE EXCEPTION 'pgmesh: %.% is locked for a cluster-wide schema change', TG_TABLE_SCHEMA, TG_TABLE_NAME
      USING ERRCODE = '55P03',
            DETAIL = '"pgmesh ddl --lock" refuses writes to the tables it changes, on every node, until the change has reached every node.',
            HINT = 'Retry the transaction in a moment.';
  END IF;
  RETURN NULL;
END
$fn$;
`;
