/**
 * What DDL capture trusts, and what it ships (docs/security.md, docs/ddl.md):
 * - Only the statements of the query string that can be DDL travel to peers, never the whole string (it can hold
 *   ALTER ROLE ... PASSWORD, or rows). The origin cannot run PostgreSQL's parser from SQL, so pgmesh.ddl_candidates
 *   splits the string with a scanner of its own (strings, quoted names, dollar quotes, comments, BEGIN ATOMIC
 *   bodies) and keeps every statement that may fire ddl_command_end: it leaves out only statements that never do
 *   (row changes, SET, transaction control, roles, databases, tablespaces, event triggers). The peer parses the
 *   candidates with the real parser (src/ddl/statements.ts) and counts the DDL among them, which is the count the
 *   origin made over the whole string, since no statement left out fires the trigger.
 * - Which DDL statement of the string fired the trigger is counted in pgmesh.ddl_statement_counter, a table only
 *   pgmesh writes, instead of a setting any session could change.
 * - Turning capture off (pgmesh.ddl_capture = off) is refused to roles that may not change pgmesh.ddl_settings: any
 *   role can set the setting, and DDL left on one node is silent schema drift.
 */
import { MESSAGE_AUTH_MIGRATION } from './message-auth-sql.ts';

const CANDIDATES = `
-- The statements of a query string that may be DDL, as a JSON array of their texts (see src/ddl/capture-trust-sql.ts).
CREATE FUNCTION pgmesh.ddl_candidates(query text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  tok text;
  up text;
  pos integer := 1;
  state text := 'code';
  dollar_tag text;
  depth integer := 0;
  atomic integer := 0;
  backslashes boolean := current_setting('standard_conforming_strings') = 'off';
  start integer := 1;
  words text[] := '{}';
  has_into boolean := false;
  prev text := '';
  last text := '';
  result jsonb := '[]';
  w text;
  k integer;
BEGIN
  -- Every character belongs to one token, in order; tokens that change the scanner's state stand alone.
  FOR tok IN SELECT m.t[1] FROM regexp_matches(query || E'\\n;', '(\\$[A-Za-z_][A-Za-z_0-9]*\\$|\\$\\$|--|/\\*|\\*/|''''|''|"|\\\\.|;|[A-Za-z_][A-Za-z_0-9]*|[^''"$;A-Za-z_\\\\/*-]+|.)', 'g')
                           WITH ORDINALITY AS m(t, n) ORDER BY m.n LOOP
    IF state = 'code' THEN
      IF tok = ';' AND atomic = 0 THEN
        -- A statement ends: kept when it may fire ddl_command_end.
        w := words[1];
        k := CASE WHEN words[2] = 'OR' AND words[3] = 'REPLACE' THEN 4 ELSE 2 END;
        IF (w IN ('CREATE', 'ALTER', 'DROP')
              AND NOT (coalesce(words[k], '') IN ('ROLE', 'GROUP', 'DATABASE', 'TABLESPACE', 'SYSTEM', 'EVENT')
                       OR (words[k] = 'USER' AND coalesce(words[k + 1], '') <> 'MAPPING')))
           OR w IN ('COMMENT', 'GRANT', 'REVOKE', 'SECURITY', 'IMPORT', 'REFRESH', 'REINDEX')
           OR (w IN ('SELECT', 'WITH') AND has_into) THEN
          result := result || to_jsonb(substr(query, start, pos - start));
        END IF;
        start := pos + 1;
        words := '{}';
        has_into := false;
      ELSIF tok = '''' THEN
        state := CASE WHEN backslashes OR upper(last) = 'E' THEN 'equote' ELSE 'quote' END;
      ELSIF tok = '"' THEN
        state := 'ident';
      ELSIF tok = '--' THEN
        state := 'line';
      ELSIF tok = '/*' THEN
        state := 'comment';
        depth := 1;
      ELSIF left(tok, 1) = '$' AND length(tok) > 1 AND right(tok, 1) = '$' AND last !~ '[A-Za-z_0-9]$' THEN
        -- A dollar quote (after a name it would be part of the name: a$$ is one identifier).
        state := 'dollar';
        dollar_tag := tok;
      ELSIF tok ~ '^[A-Za-z_]' THEN
        up := upper(tok);
        IF array_length(words, 1) IS NULL OR array_length(words, 1) < 6 THEN
          words := words || up;
        END IF;
        has_into := has_into OR up = 'INTO';
        -- A function body in BEGIN ATOMIC ... END holds statements of its own; CASE ... END nests inside it.
        IF words[1] = 'CREATE' AND up = 'ATOMIC' AND upper(prev) = 'BEGIN' THEN
          atomic := 1;
        ELSIF atomic > 0 AND up = 'CASE' THEN
          atomic := atomic + 1;
        ELSIF atomic > 0 AND up = 'END' THEN
          atomic := atomic - 1;
        END IF;
      END IF;
      -- prev: the last token but blanks (BEGIN before ATOMIC).
      IF tok !~ '^\\s+$' THEN
        prev := tok;
      END IF;
    ELSIF state IN ('quote', 'equote') THEN
      -- '' inside a string is a quote; a run of quotes toggles by its parity, which the tokens keep.
      IF tok = '''' OR (state = 'quote' AND tok = '\\''') THEN
        state := 'code';
        prev := '''';
      END IF;
    ELSIF state = 'ident' THEN
      IF tok = '"' THEN
        state := 'code';
        prev := '"';
      END IF;
    ELSIF state = 'dollar' THEN
      IF tok = dollar_tag THEN
        state := 'code';
        prev := tok;
      END IF;
    ELSIF state = 'line' THEN
      IF strpos(tok, E'\\n') > 0 OR strpos(tok, E'\\r') > 0 THEN
        state := 'code';
      END IF;
    ELSIF state = 'comment' THEN
      IF tok = '/*' THEN
        depth := depth + 1;
      ELSIF tok = '*/' THEN
        depth := depth - 1;
        IF depth = 0 THEN
          state := 'code';
        END IF;
      END IF;
    END IF;
    pos := pos + length(tok);
    last := tok;
  END LOOP;
  RETURN result;
END
$fn$;

-- Which DDL statement of its query string each session's last DDL was (see ddl_command_end). One row per backend;
-- unlogged: it means nothing after a restart.
CREATE UNLOGGED TABLE pgmesh.ddl_statement_counter (
  backend integer PRIMARY KEY,
  statement_key text NOT NULL,
  ordinal integer NOT NULL,
  statements jsonb
);
REVOKE ALL ON pgmesh.ddl_statement_counter FROM PUBLIC;
`;

const CAPTURE_GUARD = `
-- Refuses DDL run with capture off by a role that may not turn capture off for the whole node (UPDATE on
-- pgmesh.ddl_settings: superusers, the catalog owner, which pgmesh's own functions run as, and roles the operator
-- grants it). Not SECURITY DEFINER: current_user is the role that runs the DDL, also inside functions it calls. The
-- table is found by OID: its name would need USAGE on schema pgmesh, which the role lacks.
CREATE FUNCTION pgmesh.ddl_capture_guard() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF current_setting('pgmesh.ddl_capture', true) = 'off'
     AND NOT coalesce((SELECT has_table_privilege(c.oid, 'UPDATE') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = 'pgmesh' AND c.relname = 'ddl_settings'), false) THEN
    RAISE EXCEPTION 'pgmesh: role % may not keep DDL on this node only (pgmesh.ddl_capture is off)', current_user
      USING ERRCODE = '42501',
            DETAIL = 'DDL that is not replicated makes this node''s schema differ from its peers''; only roles that may change pgmesh.ddl_settings may turn capture off.',
            HINT = 'RESET pgmesh.ddl_capture and run the statement again: it replicates to every node. To change one node only, ask the operator.';
  END IF;
END
$fn$;
-- Named to fire before pgmesh_ddl_check_sequences and pgmesh_ddl_command_end (event triggers fire by name).
CREATE EVENT TRIGGER pgmesh_ddl_capture_guard ON ddl_command_end EXECUTE FUNCTION pgmesh.ddl_capture_guard();
`;

const CAPTURE = `
-- ddl_command_end as before (src/ddl/capture-sql.ts), shipping the DDL candidates of the query string with their count
-- from pgmesh.ddl_statement_counter, signed (see the top of src/ddl/capture-trust-sql.ts).
CREATE OR REPLACE FUNCTION pgmesh.ddl_command_end() RETURNS event_trigger
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
  candidates jsonb;
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
    -- In a table only pgmesh writes (a setting would be the user's to change); rolled back with the statement.
    INSERT INTO pgmesh.ddl_statement_counter AS c (backend, statement_key, ordinal)
    VALUES (pg_backend_pid(), statement_key, 1)
    ON CONFLICT (backend) DO UPDATE
      SET ordinal = CASE WHEN c.statement_key = EXCLUDED.statement_key THEN c.ordinal + 1 ELSE 1 END,
          statements = CASE WHEN c.statement_key = EXCLUDED.statement_key THEN c.statements END,
          statement_key = EXCLUDED.statement_key
    RETURNING c.ordinal, c.statements INTO ordinal, candidates;
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
  -- The statements of the string that may be DDL, worked out once per string (the peer picks the ordinal-th DDL
  -- statement among them); never the whole string, which may hold passwords or rows.
  IF candidates IS NULL THEN
    candidates := pgmesh.ddl_candidates(current_query());
    UPDATE pgmesh.ddl_statement_counter c SET statements = candidates WHERE c.backend = pg_backend_pid();
  END IF;
  -- Signed under the cluster key (pgmesh.signed_message): peers act only on messages pgmesh wrote.
  PERFORM pg_logical_emit_message(true, 'pgmesh.ddl', pgmesh.signed_message('pgmesh.ddl', jsonb_build_object(
    'version', 2,
    'statements', candidates,
    'ordinal', ordinal,
    'tag', tg_tag,
    'search_path', user_path,
    'role', CASE WHEN current_setting('role') = 'none' THEN session_user::text ELSE current_setting('role') END,
    'server_version_num', current_setting('server_version_num')::integer,
    'commands', commands,
    'joined', joined,
    'kept_local', kept_local)::text));
  PERFORM set_config('search_path', user_path, true);
END
$fn$;
`;

export const CAPTURE_TRUST_MIGRATION = MESSAGE_AUTH_MIGRATION + CANDIDATES + CAPTURE_GUARD + CAPTURE;
