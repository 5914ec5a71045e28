/**
 * The catalog migration of DDL replication (docs/ddl.md): the event triggers that capture DDL run by local sessions
 * as transactional logical messages, the function that makes a table join replication, and the function that
 * applies a captured statement in an apply session.
 *
 * Capture happens in the server: the event trigger knows the statement's command tag, its objects
 * (pg_event_trigger_ddl_commands), the role and the search_path, and can refuse the statement before it commits.
 * It cannot split a query string into statements: the apply side does that with PostgreSQL's own parser
 * (src/ddl/statements.ts), and the message tells it which DDL statement of the string fired the trigger.
 */

/** The prefix of pgmesh's DDL messages (pg_logical_emit_message). */
export const DDL_MESSAGE_PREFIX = 'pgmesh.ddl';

/**
 * Local setting that turns capture off for the rest of a transaction (SET LOCAL) or a session: pgmesh's own
 * administration, and operators who want a change on one node only. Honoured only for roles that may change
 * pgmesh.ddl_settings; DDL of any other role with it off is refused (pgmesh.ddl_capture_guard, capture-trust-sql.ts).
 */
export const DDL_CAPTURE_SETTING = 'pgmesh.ddl_capture';

export const DDL_CAPTURE_MIGRATION = `
-- DDL replication settings of this node; every node should have the same (docs/ddl.md).
CREATE TABLE pgmesh.ddl_settings (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  capture boolean NOT NULL DEFAULT true,
  tables_without_primary_key text NOT NULL DEFAULT 'refuse' CHECK (tables_without_primary_key IN ('refuse', 'local'))
);
INSERT INTO pgmesh.ddl_settings DEFAULT VALUES;

-- Makes a table a replicated one on this node: in the publication, with the triggers that leave tombstones for
-- local deletes and key changes (see record_deletes). The one entry point for "pgmesh tables add" and for tables
-- created by DDL (on the node that ran it, and on every node that applies it). Idempotent.
CREATE FUNCTION pgmesh.join_table(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  keys text[];
  args text;
  capture text := current_setting('pgmesh.ddl_capture', true);
  agent text;
  part regclass;
  ucols text[];
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
  -- What pgmesh does here is the same on every node: it is not captured as DDL to replicate.
  PERFORM set_config('pgmesh.ddl_capture', 'off', true);
  -- Updates and deletes log the whole old row, out-of-line values included: pgoutput leaves out an out-of-line value
  -- an update did not change, and peers take it from the old row so the update can win whole (docs/design.md,
  -- "Out-of-line values"). Partitions too: each logs its own rows.
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
  -- A local update that changes a value of a unique index (other than the primary key), or a local delete, lets go
  -- of the value: the old row's version is kept as a claim on it (pgmesh.unique_claim, docs/conflicts.md), so that an
  -- older row taking the value later gives way as it would have had it arrived before. Only on tables with such
  -- indexes (immediate, plain columns, no predicate, NULLs distinct: the ones resolved by version).
  SELECT array_agg(DISTINCT a.attname::text) INTO ucols
    FROM pg_index i
    JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON k.n <= i.indnkeyatts
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = rel AND i.indisunique AND NOT i.indisprimary AND i.indimmediate AND NOT i.indnullsnotdistinct
     AND i.indpred IS NULL AND i.indexprs IS NULL;
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
  -- The roles agents connect as may apply its changes (the TS side grants the rest when a role is set up).
  FOR agent IN SELECT role_name FROM pgmesh.agent_role LOOP
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel), agent);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON %s TO %I', rel, agent);
  END LOOP;
  PERFORM set_config('pgmesh.ddl_capture', coalesce(capture, ''), true);
END
$fn$;

-- Sequences just created by a DDL statement (created) that feed replicated tables (a new table's serial or identity
-- column, a serial column added) hand out this node's values at once: step maxNodes, from the first value of this
-- node's slot above the sequence's last value (ADD COLUMN ... serial has used values for the existing rows). Called
-- where DDL runs: by ddl_command_end on the origin and by apply_ddl on every node that applies it, so each node
-- interleaves with its own slot. A sequence with no room left or counting down stays as it is: status warns about it
-- and "pgmesh tables add" explains (docs/sequences.md).
CREATE FUNCTION pgmesh.interleave_new_sequences(created oid[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  l pgmesh.local_node;
  s record;
  next bigint;
  start bigint;
  done integer := 0;
  capture text := current_setting('pgmesh.ddl_capture', true);
BEGIN
  SELECT * INTO l FROM pgmesh.local_node;
  IF l IS NULL THEN
    RETURN 0;
  END IF;
  PERFORM set_config('pgmesh.ddl_capture', 'off', true);
  FOR s IN SELECT st.seqrelid, st.sequence_name, st.feeds, st.last_value, q.seqstart, q.seqmax
             FROM pgmesh.sequence_status st
             JOIN pg_sequence q ON q.seqrelid = st.seqrelid
             JOIN pg_class c ON c.oid = st.seqrelid
            WHERE NOT st.interleaved AND st.increment > 0 AND st.seqrelid = ANY (created) LOOP
    next := coalesce(s.last_value, s.seqstart - 1) + 1;
    start := next + mod(mod(l.node_slot - next, l.max_nodes) + l.max_nodes, l.max_nodes);
    CONTINUE WHEN start > s.seqmax;
    EXECUTE format('ALTER SEQUENCE %s INCREMENT BY %s START WITH %s RESTART WITH %s', s.sequence_name, l.max_nodes, start, start);
    INSERT INTO pgmesh.interleaved_sequence AS i (seqrelid, sequence_name, node_slot, step, first_value, feeds, restarted_at, checked_at)
    VALUES (s.seqrelid, s.sequence_name, l.node_slot, l.max_nodes, start, s.feeds, now(), now())
    ON CONFLICT (seqrelid) DO UPDATE SET sequence_name = EXCLUDED.sequence_name, node_slot = EXCLUDED.node_slot, step = EXCLUDED.step,
      first_value = EXCLUDED.first_value, feeds = EXCLUDED.feeds, restarted_at = EXCLUDED.restarted_at, checked_at = EXCLUDED.checked_at;
    done := done + 1;
  END LOOP;
  PERFORM set_config('pgmesh.ddl_capture', coalesce(capture, ''), true);
  RETURN done;
END
$fn$;

-- sql_drop fires before ddl_command_end for a statement that drops objects, and only it can list them: it notes
-- whether everything the statement drops is local to this node (temporary, or pgmesh's own catalog).
CREATE FUNCTION pgmesh.ddl_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  local_only boolean;
BEGIN
  SELECT coalesce(bool_and(d.is_temporary OR d.schema_name = 'pgmesh' OR d.object_type = 'subscription'), true) INTO local_only
    FROM pg_event_trigger_dropped_objects() d WHERE d.original;
  PERFORM set_config('pgmesh.ddl_drop_local', CASE WHEN local_only THEN 'on' ELSE 'off' END, true);
END
$fn$;

-- ddl_command_end fires once for each DDL statement, after it ran and before its transaction commits. It runs as
-- pgmesh (it emits logical messages and joins new tables to the publication), with the user's search_path and
-- role recorded first: the user's search_path is read, then replaced by a safe one for the function's own work and
-- restored at the end (a SET clause would hide the user's). Event triggers do not fire in apply sessions
-- (session_replication_role = replica), so applied DDL is never captured again.
CREATE FUNCTION pgmesh.ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
  user_path text := pg_catalog.current_setting('search_path');
  drop_local text := pg_catalog.current_setting('pgmesh.ddl_drop_local', true);
  ctx text;
  nested boolean;
  commands jsonb;
  total integer;
  replicable integer;
  settings pgmesh.ddl_settings;
  statement_key text;
  previous text;
  ordinal integer := 1;
  joined jsonb := '[]';
  kept_local jsonb := '[]';
  has_rows boolean;
  t record;
BEGIN
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  PERFORM set_config('pgmesh.ddl_drop_local', '', true);
  -- Called from a function, a procedure, a DO block (or pgmesh's own join_table): the error context has one line
  -- per level of nesting.
  GET DIAGNOSTICS ctx = PG_CONTEXT;
  nested := strpos(ctx, E'\\n') > 0;
  -- Which DDL statement of the query string this is: the trigger fires once per top-level DDL statement, and a string
  -- can hold several. Every one counts, also those not replicated, since the apply side counts the DDL statements of
  -- the string. Counted per query string and statement start (a string sent again counts from 1 again).
  IF NOT nested THEN
    statement_key := md5(statement_timestamp()::text || current_query());
    previous := current_setting('pgmesh.ddl_statement', true);
    IF split_part(previous, '/', 1) = statement_key THEN
      ordinal := split_part(previous, '/', 2)::integer + 1;
    END IF;
    PERFORM set_config('pgmesh.ddl_statement', statement_key || '/' || ordinal, false);
  END IF;
  SELECT * INTO settings FROM pgmesh.ddl_settings;
  IF current_setting('pgmesh.ddl_capture', true) = 'off' OR NOT coalesce(settings.capture, true) THEN
    PERFORM set_config('search_path', user_path, true);
    RETURN;
  END IF;

  -- Objects that are local to this node are never replicated: temporary ones, pgmesh's catalog, its publication,
  -- subscriptions, and what an extension's script creates (the CREATE EXTENSION itself replicates).
  SELECT coalesce(jsonb_agg(jsonb_build_object('tag', c.command_tag, 'type', c.object_type, 'schema', c.schema_name,
                                               'identity', c.object_identity) ORDER BY c.n) FILTER (WHERE c.replicable), '[]'),
         count(*), count(*) FILTER (WHERE c.replicable)
    INTO commands, total, replicable
    FROM (SELECT d.*, row_number() OVER () AS n,
                 NOT d.in_extension AND d.object_type <> 'subscription'
                 AND NOT (d.object_type = 'publication' AND d.object_identity = 'pgmesh')
                 AND coalesce(d.schema_name NOT LIKE 'pg\\_temp%' AND d.schema_name <> 'pgmesh', true) AS replicable
            FROM pg_event_trigger_ddl_commands() d) c;
  IF (total > 0 AND replicable = 0) OR (total = 0 AND drop_local = 'on') THEN
    PERFORM set_config('search_path', user_path, true);
    RETURN;
  END IF;

  -- DDL run by a function, a procedure or a DO block: the query string holds the call, not the DDL, and what the
  -- code did cannot be replayed statement by statement.
  IF nested THEN
    RAISE EXCEPTION 'pgmesh: % inside a function, procedure or DO block cannot be replicated', tg_tag
      USING ERRCODE = 'PM007',
            DETAIL = 'pgmesh replays DDL statements from the query text that the client sent; this statement was run by code called from it.',
            HINT = 'Run the DDL statements directly (a migration script can hold several in one string), or SET LOCAL pgmesh.ddl_capture = off to change this node only.';
  END IF;

  -- CREATE TABLE AS and SELECT INTO: each node would compute its own rows from its own data at that moment.
  IF tg_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
    FOR t IN SELECT d.objid FROM pg_event_trigger_ddl_commands() d WHERE d.object_type = 'table' LOOP
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t.objid::regclass) INTO has_rows;
      IF has_rows THEN
        RAISE EXCEPTION 'pgmesh: % with rows cannot be replicated: every node would compute its own rows', tg_tag
          USING ERRCODE = 'PM007',
                HINT = 'Create the table with CREATE TABLE (or CREATE TABLE ... AS ... WITH NO DATA), then fill it with INSERT ... SELECT: the inserted rows replicate.';
      END IF;
    END LOOP;
  END IF;

  -- New tables join replication in this same transaction, so rows written after the CREATE are published.
  FOR t IN SELECT d.objid::regclass AS rel, d.object_identity AS identity,
                  EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = d.objid AND i.indisprimary) AS has_pk
             FROM pg_event_trigger_ddl_commands() d JOIN pg_class c ON c.oid = d.objid
            WHERE d.object_type = 'table' AND d.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
              AND c.relpersistence = 'p' AND NOT c.relispartition AND NOT d.in_extension
              AND d.schema_name <> 'pgmesh' LOOP
    IF t.has_pk THEN
      PERFORM pgmesh.join_table(t.rel);
      joined := joined || to_jsonb(t.identity);
    ELSIF settings.tables_without_primary_key = 'local' THEN
      kept_local := kept_local || to_jsonb(t.identity);
    ELSE
      RAISE EXCEPTION 'pgmesh: table % has no primary key, so it cannot be replicated', t.identity
        USING ERRCODE = 'PM006',
              DETAIL = 'pgmesh finds the same row on every node by its primary key.',
              HINT = 'Give the table a primary key, or set pgmesh.ddl_settings.tables_without_primary_key to ''local'' on every node to keep such tables on the node that has them (docs/ddl.md).';
    END IF;
  END LOOP;

  PERFORM pgmesh.interleave_new_sequences(ARRAY(SELECT d.objid FROM pg_event_trigger_ddl_commands() d WHERE d.object_type = 'sequence'));
  PERFORM pg_logical_emit_message(true, 'pgmesh.ddl', jsonb_build_object(
    'version', 1,
    'query', current_query(),
    'ordinal', ordinal,
    'tag', tg_tag,
    'search_path', user_path,
    'role', CASE WHEN current_setting('role') = 'none' THEN session_user::text ELSE current_setting('role') END,
    'server_version_num', current_setting('server_version_num')::integer,
    'commands', commands,
    'joined', joined,
    'kept_local', kept_local)::text);
  PERFORM set_config('search_path', user_path, true);
END
$fn$;

CREATE EVENT TRIGGER pgmesh_ddl_sql_drop ON sql_drop EXECUTE FUNCTION pgmesh.ddl_sql_drop();
CREATE EVENT TRIGGER pgmesh_ddl_command_end ON ddl_command_end EXECUTE FUNCTION pgmesh.ddl_command_end();

-- Runs one captured statement in an apply session, inside the applied transaction, as the role that ran it at the
-- origin and with its search_path; then joins the tables the origin joined. A statement that fails here is rolled
-- back alone (the block is a subtransaction) and kept in pgmesh.exception with its text; the transaction goes on.
CREATE FUNCTION pgmesh.apply_ddl(peer text, remote_ts timestamptz, remote_lsn pg_lsn, statement text, problem text, message jsonb)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  identity text;
  code text := CASE WHEN problem IS NOT NULL THEN 'PM008' END;
  error text := problem;
  detail text;
  -- The sequences there are before the statement: those it creates get this node's values (interleave_new_sequences).
  sequences_before oid[] := ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind = 'S');
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
  -- Joined even when the statement failed here (the table may exist already): the origin publishes its changes.
  FOR identity IN SELECT jsonb_array_elements_text(message -> 'joined') LOOP
    IF to_regclass(identity) IS NOT NULL THEN
      PERFORM pgmesh.join_table(identity::regclass);
    END IF;
  END LOOP;
  PERFORM pgmesh.interleave_new_sequences(ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind = 'S' AND c.oid <> ALL (sequences_before)));
  RETURN code IS NULL;
END
$fn$;
`;
