/**
 * Code of a table's owner that pgmesh would run with its own rights is refused (docs/security.md, "Whose rights code
 * runs with").
 *
 * pgmesh writes replicated tables in its own sessions: the apply session (as the agent's role), `conflicts restore`
 * and `exceptions replay` (as the operator's), the copy of `node add`. Whatever code such a write runs, runs with that
 * session's rights: a trigger enabled ALWAYS or REPLICA (they fire in replica mode), a rule enabled so, a column
 * default or generated column, a CHECK, an index expression or predicate, a partition key expression, a domain's
 * CHECK, and the casts that pgmesh's statements apply to values (text to the column's type, the type to text, json
 * or jsonb). PostgreSQL's own apply runs such code as the table's owner with role changes forbidden; a client
 * session cannot enter that mode, and pgmesh's statements write its catalog in the same statement as the table.
 * So pgmesh vouches for the code a replicated table can reach, and refuses the rest:
 * - a function that a superuser wrote (owned by a superuser, not part of an extension);
 * - a built-in or extension function that is immutable or stable (they do not change the database; the SQL-running
 *   `*_to_xml` functions excepted: they would read with pgmesh's rights), and the volatile built-ins defaults need
 *   (now(), clock_timestamp(), nextval(), random(), gen_random_uuid(), ...): other volatile ones act with their
 *   caller's rights (dblink_exec, pg_read_file, lo_export, set_config);
 * - operators by their functions; triggers and rules only if they do not fire in replica mode (pgmesh's own).
 * Anything else (a function of an application role, a trigger it enabled ALWAYS) makes the DDL that brings it fail
 * (an event trigger on every node, whatever pgmesh.ddl_capture says; replayed DDL is checked after it runs), and a
 * table that has it is not added (tables add runs ALTER PUBLICATION, which the same event trigger checks).
 */

export const OWNER_CODE_MIGRATION = `
-- Whether pgmesh vouches for running function fn with its own rights (see src/cluster/owner-code-sql.ts).
CREATE FUNCTION pgmesh.vouched_function(fn oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  -- A superuser's own function (not an extension's) is vouched for by that superuser. A built-in or an extension's
  -- function may act with its caller's rights (dblink_exec, pg_read_file, lo_export, set_config): only those that
  -- cannot change anything (immutable, stable; not the SQL-running *_to_xml) and the volatile ones defaults use.
  SELECT coalesce((SELECT r.rolsuper AND
                          CASE WHEN p.oid >= 16384 AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass
                                                                    AND e.objid = p.oid AND e.deptype = 'e') THEN true
                               ELSE (p.provolatile <> 'v' AND p.proname !~ 'to_xml')
                                    OR p.proname = ANY (ARRAY['now', 'clock_timestamp', 'statement_timestamp', 'transaction_timestamp',
                                                              'timeofday', 'nextval', 'random', 'gen_random_uuid', 'uuidv4', 'uuidv7'])
                          END
                     FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner WHERE p.oid = fn), false)
$fn$;

-- The first piece of code that a write of pgmesh to table rel (or a partition of it) would run and that pgmesh does
-- not vouch for, described; NULL if none.
CREATE FUNCTION pgmesh.owner_code_problem(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  WITH RECURSIVE tables AS (
    SELECT rel AS t UNION SELECT p.relid FROM pg_partition_tree(rel) p
  ), types(t) AS (
    SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid IN (SELECT t FROM tables) AND a.attnum > 0 AND NOT a.attisdropped
    UNION
    SELECT n.x FROM types JOIN pg_type y ON y.oid = types.t
     CROSS JOIN LATERAL (SELECT nullif(y.typbasetype, 0) UNION ALL SELECT nullif(y.typelem, 0)
                         UNION ALL SELECT a.atttypid FROM pg_attribute a
                                    WHERE y.typrelid <> 0 AND a.attrelid = y.typrelid AND a.attnum > 0 AND NOT a.attisdropped) n(x)
     WHERE n.x IS NOT NULL
  ), used AS (
    -- Functions and operators that defaults, generated columns, CHECKs, index expressions and predicates, partition
    -- keys, domain CHECKs and DEFAULTs and the column types themselves call, with what calls them.
    SELECT d.refclassid, d.refobjid, pg_describe_object(d.classid, d.objid, d.objsubid) AS what
      FROM pg_depend d
     WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
       AND ((d.classid = 'pg_attrdef'::regclass AND d.objid IN (SELECT ad.oid FROM pg_attrdef ad WHERE ad.adrelid IN (SELECT t FROM tables)))
         OR (d.classid = 'pg_constraint'::regclass
             AND d.objid IN (SELECT c.oid FROM pg_constraint c WHERE c.conrelid IN (SELECT t FROM tables) OR c.contypid IN (SELECT t FROM types)))
         -- A domain's DEFAULT, a range type's subtype_diff (GiST), ...: the column types' own functions.
         OR (d.classid = 'pg_type'::regclass AND d.objid IN (SELECT t FROM types))
         OR (d.classid = 'pg_class'::regclass
             AND (d.objid IN (SELECT t FROM tables) OR d.objid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid IN (SELECT t FROM tables)))))
  ), called AS (
    -- Built-in functions are pinned and have no pg_depend rows (PostgreSQL 15+): the stored expressions name every
    -- function and operator function they call (:funcid, :opfuncid).
    SELECT e.what, m[1]::oid AS fn
      FROM (SELECT format('default or generation expression of %s.%s', ad.adrelid::regclass, a.attname) AS what, ad.adbin::text AS tree
              FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
             WHERE ad.adrelid IN (SELECT t FROM tables)
            UNION ALL
            SELECT format('constraint %s', c.conname), c.conbin::text FROM pg_constraint c
             WHERE c.conbin IS NOT NULL AND (c.conrelid IN (SELECT t FROM tables) OR c.contypid IN (SELECT t FROM types))
            UNION ALL
            SELECT format('index %s', i.indexrelid::regclass), coalesce(i.indexprs::text, '') || coalesce(i.indpred::text, '') FROM pg_index i
             WHERE i.indrelid IN (SELECT t FROM tables) AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)
            UNION ALL
            SELECT format('partition key of %s', k.partrelid::regclass), k.partexprs::text FROM pg_partitioned_table k
             WHERE k.partrelid IN (SELECT t FROM tables) AND k.partexprs IS NOT NULL
            UNION ALL
            SELECT format('default of type %s', y.oid::regtype), y.typdefaultbin::text FROM pg_type y
             WHERE y.oid IN (SELECT t FROM types) AND y.typdefaultbin IS NOT NULL) e
     CROSS JOIN LATERAL regexp_matches(e.tree, ':(?:funcid|opfuncid) ([0-9]+)', 'g') m
  ), problems AS (
    SELECT 1 AS rank, format('trigger %s on %s is enabled %s: it fires in pgmesh''s sessions', g.tgname, g.tgrelid::regclass,
                             CASE g.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END) AS problem
      FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid
     WHERE g.tgrelid IN (SELECT t FROM tables) AND g.tgenabled IN ('A', 'R') AND p.pronamespace <> 'pgmesh'::regnamespace
    UNION ALL
    SELECT 2, format('rule %s on %s is enabled %s: it fires in pgmesh''s sessions', w.rulename, w.ev_class::regclass,
                     CASE w.ev_enabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END)
      FROM pg_rewrite w WHERE w.ev_class IN (SELECT t FROM tables) AND w.ev_enabled IN ('A', 'R')
    UNION ALL
    SELECT 3, format('%s calls %s, owned by %s', u.what, f.oid::regprocedure, f.proowner::regrole)
      FROM used u
      JOIN pg_proc f ON f.oid = CASE WHEN u.refclassid = 'pg_operator'::regclass
                                     THEN (SELECT o.oprcode::oid FROM pg_operator o WHERE o.oid = u.refobjid) ELSE u.refobjid END
     WHERE NOT pgmesh.vouched_function(f.oid)
    UNION ALL
    SELECT 3, format('%s calls %s, owned by %s', c.what, f.oid::regprocedure, f.proowner::regrole)
      FROM called c JOIN pg_proc f ON f.oid = c.fn
     WHERE NOT pgmesh.vouched_function(f.oid)
    UNION ALL
    SELECT 4, format('%s, owned by %s, is a cast that pgmesh''s statements apply to %s', pg_describe_object('pg_cast'::regclass, c.oid, 0),
                     f.proowner::regrole, (SELECT string_agg(x.t::regtype::text, ', ') FROM (SELECT c.castsource AS t UNION SELECT c.casttarget) x WHERE x.t IN (SELECT t FROM types)))
      FROM pg_cast c JOIN pg_proc f ON f.oid = c.castfunc
     WHERE c.castmethod = 'f'
       AND ((c.casttarget IN (SELECT t FROM types) AND c.castsource = 'text'::regtype)
         OR (c.castsource IN (SELECT t FROM types) AND c.casttarget IN ('text'::regtype, 'json'::regtype, 'jsonb'::regtype)))
       AND NOT pgmesh.vouched_function(f.oid)
  )
  SELECT p.problem FROM problems p ORDER BY p.rank, p.problem LIMIT 1
$fn$;

-- Raises PM011 for the first replicated table whose writes would run code pgmesh does not vouch for.
CREATE FUNCTION pgmesh.check_owner_code() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT pr.prrelid::regclass AS rel, pgmesh.owner_code_problem(pr.prrelid) AS problem
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
            WHERE p.pubname = 'pgmesh' LOOP
    CONTINUE WHEN r.problem IS NULL;
    RAISE EXCEPTION 'pgmesh: % is replicated, and pgmesh would run code of its own with its rights: %', r.rel, r.problem
      USING ERRCODE = 'PM011',
            DETAIL = 'pgmesh writes replicated tables in its own sessions (apply, conflicts restore, exceptions replay, node add), where code of a table''s owner would run with pgmesh''s rights.',
            HINT = 'Use only built-in functions there, or functions owned by a superuser (ALTER FUNCTION ... OWNER TO, if you trust them); leave triggers and rules enabled for origin sessions only (ALTER TABLE ... ENABLE TRIGGER).';
  END LOOP;
END
$fn$;

-- On every node, for every role's DDL (nested or not, whatever pgmesh.ddl_capture says): nothing may bring code that
-- pgmesh does not vouch for into a replicated table's writes.
CREATE FUNCTION pgmesh.owner_code_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  PERFORM pgmesh.check_owner_code();
END
$fn$;

CREATE EVENT TRIGGER pgmesh_owner_code_guard ON ddl_command_end EXECUTE FUNCTION pgmesh.owner_code_guard();

`;
