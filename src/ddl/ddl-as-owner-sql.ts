/**
 * Replayed DDL runs with the rights of the role that ran it on the origin, and no more (docs/security.md, "Whose
 * rights code runs with").
 *
 * A DDL statement can run code its role wrote: a column default or a CHECK evaluated over existing rows, an index
 * expression, a cast. Run in the apply session under `SET LOCAL ROLE`, that code could `RESET ROLE` and be the agent
 * again (a superuser, or a role that is a member of every table owner). PostgreSQL refuses every change of role
 * (`SET ROLE`, `RESET ROLE`, `SET SESSION AUTHORIZATION`, a function's own `SET role`) inside a SECURITY DEFINER
 * function, and in every call nested in one. So the statement is executed by a SECURITY DEFINER function owned by the
 * origin's role: its code runs as that role, and cannot leave it.
 *
 * The function is made for each statement in the session's own temporary schema (created while the session is that
 * role, so that it owns it), called, and dropped: the role cannot alter it before the call, and whatever it does to
 * it during the call has no later use. Its body checks anyway that it runs as that role and that a role change is
 * refused, and refuses to run the statement otherwise.
 *
 * The role's code can still change settings of the session with a plain SET, which outlives the function (even one
 * with a SET clause): every user-settable setting is read before and put back after, and the search_path is pinned
 * again before anything else runs.
 */

export const DDL_AS_OWNER_MIGRATION = `
-- Every setting of this session that a role could change (name -> value), for restore_session_settings: the
-- server's, and pgmesh's own custom settings (pg_settings does not list custom settings; pgmesh reads these).
CREATE FUNCTION pgmesh.session_settings() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT pg_catalog.jsonb_object_agg(s.name, s.setting)
    FROM (SELECT p.name, p.setting FROM pg_catalog.pg_settings p WHERE p.context IN ('user', 'superuser')
          UNION ALL
          SELECT c.name, pg_catalog.current_setting(c.name, true)
            FROM pg_catalog.unnest(ARRAY['pgmesh.applied_end', 'pgmesh.ddl_capture', 'pgmesh.ddl_drop_local', 'pgmesh.ddl_names_before',
                                         'pgmesh.ddl_sequences_before', 'pgmesh.ddl_statement']) AS c(name)) s
$fn$;

-- Puts back, for the session, every setting that differs from before (a plain SET by code that ran in between); one
-- of pgmesh's custom settings that was not set before is emptied. The search_path is pinned first:
-- until then everything is qualified, operators included (the code may have put a schema of its own first).
CREATE FUNCTION pgmesh.restore_session_settings(before jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  s record;
BEGIN
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false);
  FOR s IN SELECT a.key AS name, coalesce(before ->> a.key, '') AS value
             FROM pg_catalog.jsonb_each_text(pgmesh.session_settings()) a
            WHERE a.value IS DISTINCT FROM before ->> a.key LOOP
    PERFORM pg_catalog.set_config(s.name, s.value, false);
  END LOOP;
END
$fn$;

-- Runs one DDL statement as role_name, with role changes impossible (see src/ddl/ddl-as-owner-sql.ts). Then the
-- statement is checked as local DDL is (event triggers do not fire in the apply session): code it gave a replicated
-- table that pgmesh's sessions would run with their rights fails it, and it is kept as an exception
-- (pgmesh.check_owner_code, src/cluster/owner-code-sql.ts: a later migration of the same catalog upgrade, so there by
-- the time this runs).
CREATE FUNCTION pgmesh.run_ddl_as(role_name text, statement text, path text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  settings jsonb := pgmesh.session_settings();
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role_name) THEN
    RAISE EXCEPTION 'pgmesh: role % of a replicated DDL statement does not exist on this node', role_name
      USING ERRCODE = '42704', HINT = 'Create the role here as on the origin, then run the statement here yourself.';
  END IF;
  -- As the role: it owns the function (an agent may be allowed to SET ROLE without inheriting the role's rights).
  EXECUTE format('SET LOCAL ROLE %I', role_name);
  DROP FUNCTION IF EXISTS pg_temp.pgmesh_ddl_as_owner(text, text);
  EXECUTE format($def$
CREATE FUNCTION pg_temp.pgmesh_ddl_as_owner(statement text, path text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$def$, format($body$
DECLARE
  expected text := %L;
BEGIN
  IF current_user::text <> expected THEN
    RAISE EXCEPTION 'pgmesh: replayed DDL would run as %%, not as %%, the role that ran it', current_user, expected
      USING ERRCODE = '42501';
  END IF;
  BEGIN
    PERFORM pg_catalog.set_config('role', 'none', true);
    RAISE EXCEPTION 'pgmesh: replayed DDL would run where its code can change role' USING ERRCODE = 'PM012';
  EXCEPTION WHEN insufficient_privilege THEN
    NULL;
  END;
  PERFORM pg_catalog.set_config('search_path', path, true);
  EXECUTE statement;
END
$body$, role_name));
  SET LOCAL ROLE NONE;
  PERFORM pg_temp.pgmesh_ddl_as_owner(statement, path);
  PERFORM pgmesh.restore_session_settings(settings);
  EXECUTE format('SET LOCAL ROLE %I', role_name);
  DROP FUNCTION IF EXISTS pg_temp.pgmesh_ddl_as_owner(text, text);
  SET LOCAL ROLE NONE;
  PERFORM pgmesh.check_owner_code();
END
$fn$;

-- apply_ddl as before (src/ddl/ddl-lock-sql.ts), changed twice in one release: what it accepts and records (the
-- statements shipped are recorded with a failure, no query string any more, and only tables the statement created
-- here join replication: src/ddl/capture-trust-sql.ts), and how the statement runs (through run_ddl_as, not under SET
-- LOCAL ROLE in this session; a table it created joins only if pgmesh vouches for its code: owner_code_problem,
-- migration 30).
CREATE OR REPLACE FUNCTION pgmesh.apply_ddl(peer text, remote_ts timestamptz, remote_lsn pg_lsn, statement text, problem text, message jsonb)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  identity text;
  code text := CASE WHEN problem IS NOT NULL THEN 'PM008' END;
  error text := problem;
  detail text;
  sequences_before oid[] := ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind = 'S');
  -- Tables there are before the statement: only one it creates may join replication (see below).
  tables_before oid[] := ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p'));
  rel regclass;
  names_before jsonb := CASE WHEN message ->> 'tag' LIKE 'ALTER %' OR message ->> 'tag' LIKE 'DROP %' THEN pgmesh.ddl_names_before() END;
BEGIN
  IF statement IS NOT NULL THEN
    BEGIN
      PERFORM pgmesh.run_ddl_as(message ->> 'role', statement, message ->> 'search_path');
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, error = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
      error := error || CASE WHEN coalesce(detail, '') <> '' THEN ' (' || detail || ')' ELSE '' END;
    END;
  END IF;
  IF code IS NOT NULL THEN
    INSERT INTO pgmesh.exception (peer, relation, change_kind, change, remote_ts, remote_commit_lsn, sqlstate, error)
    VALUES (peer, NULL, 'ddl', jsonb_build_object('statement', statement, 'search_path', message -> 'search_path',
                                                  'role', message -> 'role', 'tag', message -> 'tag', 'statements', message -> 'statements'),
            remote_ts, remote_lsn, code, error);
  END IF;
  -- The tables the origin joined join here only if this statement created them here: a table that merely has the
  -- name (the statement failed, or IF NOT EXISTS found one) is this node's own, and publishing it would send its rows
  -- to every peer. It is kept as an exception instead, for the operator to add ("pgmesh tables add") if it is the same.
  FOR identity IN SELECT jsonb_array_elements_text(message -> 'joined') LOOP
    rel := to_regclass(identity);
    IF code IS NULL AND rel IS NOT NULL AND rel::oid <> ALL (tables_before) AND pgmesh.owner_code_problem(rel) IS NOT NULL THEN
      -- Code of its owner that pgmesh's sessions would run with their rights (src/cluster/owner-code-sql.ts).
      INSERT INTO pgmesh.exception (peer, relation, change_kind, change, remote_ts, remote_commit_lsn, sqlstate, error)
      VALUES (peer, identity, 'ddl', jsonb_build_object('statement', statement, 'role', message -> 'role', 'tag', message -> 'tag', 'joined', identity),
              remote_ts, remote_lsn, 'PM011', format('table %s does not join replication here: %s', identity, pgmesh.owner_code_problem(rel)));
    ELSIF code IS NULL AND rel IS NOT NULL AND rel::oid <> ALL (tables_before) THEN
      PERFORM pgmesh.join_table(rel);
    ELSIF code IS NULL THEN
      INSERT INTO pgmesh.exception (peer, relation, change_kind, change, remote_ts, remote_commit_lsn, sqlstate, error)
      VALUES (peer, identity, 'ddl', jsonb_build_object('statement', statement, 'role', message -> 'role', 'tag', message -> 'tag', 'joined', identity),
              remote_ts, remote_lsn, 'PM008',
              format('table %s was not created by the replayed statement here, so it does not join replication here', identity));
    END IF;
  END LOOP;
  PERFORM pgmesh.interleave_new_sequences(ARRAY(SELECT c.oid FROM pg_class c WHERE c.relkind = 'S' AND c.oid <> ALL (sequences_before)));
  PERFORM pgmesh.ddl_note(CASE WHEN code IS NULL THEN names_before END, pgmesh.ddl_tables(message -> 'commands'));
  RETURN code IS NULL;
END
$fn$;
`;
