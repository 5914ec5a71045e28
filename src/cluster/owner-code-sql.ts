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

-- Every piece of code that a write of pgmesh to one of tables rels (or a partition of one) would run and that pgmesh
-- does not vouch for, described, with the table of rels it belongs to. One pass over the catalogs for all the tables
-- (the guard below runs it on every DDL statement); pgmesh.vouched_function is asked only of the functions found, in
-- a materialized step: as a filter it would be pushed down to a scan of every function in pg_proc.
-- Joins by nested loops over the catalogs' indexes: the recursive steps' row estimates are large, and hash joins sized
-- for them (spilling to temporary files) cost tens of milliseconds for one table. PL/pgSQL for its plan cache: the
-- guard runs this for each DDL statement, and planning it costs more than running it for a few tables.
CREATE FUNCTION pgmesh.owner_code_problems(rels oid[]) RETURNS TABLE (rel regclass, problem text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET enable_hashjoin = off SET enable_mergejoin = off
  SET plan_cache_mode = force_generic_plan AS $fn$
BEGIN
  RETURN QUERY
  WITH RECURSIVE tables(root, t) AS (
    SELECT r, r FROM unnest(rels) r
    UNION
    SELECT r, p.relid FROM unnest(rels) r CROSS JOIN LATERAL pg_partition_tree(r) p
  ), types(root, t) AS (
    SELECT tb.root, a.atttypid FROM tables tb JOIN pg_attribute a ON a.attrelid = tb.t WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION
    SELECT types.root, n.x FROM types JOIN pg_type y ON y.oid = types.t
     CROSS JOIN LATERAL (SELECT nullif(y.typbasetype, 0) UNION ALL SELECT nullif(y.typelem, 0)
                         -- A range's subtype, a multirange's range: range_in reads each bound with the subtype's
                         -- input, which checks a domain's CHECK (found by the attacker's probe, P6).
                         UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = y.oid
                         UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = y.oid
                         UNION ALL SELECT a.atttypid FROM pg_attribute a
                                    WHERE y.typrelid <> 0 AND a.attrelid = y.typrelid AND a.attnum > 0 AND NOT a.attisdropped) n(x)
     WHERE n.x IS NOT NULL
  ), used AS (
    -- Functions and operators that defaults, generated columns, CHECKs, index expressions and predicates, partition
    -- keys, domain CHECKs and DEFAULTs and the column types themselves (a range type's subtype_diff, ...) call, by
    -- their pg_depend rows.
    SELECT o.root, d.refclassid, d.refobjid, pg_describe_object(d.classid, d.objid, d.objsubid) AS what
      FROM (SELECT tb.root, 'pg_attrdef'::regclass AS cls, ad.oid AS obj FROM tables tb JOIN pg_attrdef ad ON ad.adrelid = tb.t
            UNION ALL SELECT tb.root, 'pg_constraint'::regclass, c.oid FROM tables tb JOIN pg_constraint c ON c.conrelid = tb.t
            UNION ALL SELECT ty.root, 'pg_constraint'::regclass, c.oid FROM types ty JOIN pg_constraint c ON c.contypid = ty.t
            UNION ALL SELECT ty.root, 'pg_type'::regclass, ty.t FROM types ty
            UNION ALL SELECT tb.root, 'pg_class'::regclass, tb.t FROM tables tb
            UNION ALL SELECT tb.root, 'pg_class'::regclass, i.indexrelid FROM tables tb JOIN pg_index i ON i.indrelid = tb.t) o
      JOIN pg_depend d ON d.classid = o.cls AND d.objid = o.obj
     WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
  ), called AS (
    -- Built-in functions are pinned and have no pg_depend rows (PostgreSQL 15+): the stored expressions name every
    -- function and operator function they call (:funcid, :opfuncid).
    SELECT e.root, e.what, m[1]::oid AS fn
      FROM (SELECT tb.root, format('default or generation expression of %s.%s', ad.adrelid::regclass,
                                   (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = ad.adrelid AND a.attnum = ad.adnum)) AS what,
                   ad.adbin::text AS tree
              FROM tables tb JOIN pg_attrdef ad ON ad.adrelid = tb.t
            UNION ALL
            SELECT tb.root, format('constraint %s', c.conname), c.conbin::text
              FROM tables tb JOIN pg_constraint c ON c.conrelid = tb.t WHERE c.conbin IS NOT NULL
            UNION ALL
            SELECT ty.root, format('constraint %s', c.conname), c.conbin::text
              FROM types ty JOIN pg_constraint c ON c.contypid = ty.t WHERE c.conbin IS NOT NULL
            UNION ALL
            SELECT tb.root, format('index %s', i.indexrelid::regclass), coalesce(i.indexprs::text, '') || coalesce(i.indpred::text, '')
              FROM tables tb JOIN pg_index i ON i.indrelid = tb.t WHERE i.indexprs IS NOT NULL OR i.indpred IS NOT NULL
            UNION ALL
            SELECT tb.root, format('partition key of %s', k.partrelid::regclass), k.partexprs::text
              FROM tables tb JOIN pg_partitioned_table k ON k.partrelid = tb.t WHERE k.partexprs IS NOT NULL
            UNION ALL
            SELECT ty.root, format('default of type %s', y.oid::regtype), y.typdefaultbin::text
              FROM types ty JOIN pg_type y ON y.oid = ty.t WHERE y.typdefaultbin IS NOT NULL) e
     CROSS JOIN LATERAL regexp_matches(e.tree, ':(?:funcid|opfuncid) ([0-9]+)', 'g') m
  ), candidates AS (
    SELECT u.root, u.what, CASE WHEN u.refclassid = 'pg_operator'::regclass
                                THEN (SELECT o.oprcode::oid FROM pg_operator o WHERE o.oid = u.refobjid) ELSE u.refobjid END AS fn,
           NULL::oid AS cast
      FROM used u
    UNION ALL
    SELECT c.root, c.what, c.fn, NULL FROM called c
    UNION ALL
    -- The casts that pgmesh's statements apply to values: text to the column's type, the type to text, json or jsonb.
    SELECT ty.root, NULL, c.castfunc, c.oid
      FROM types ty JOIN pg_cast c ON (c.casttarget = ty.t AND c.castsource = 'text'::regtype)
                                   OR (c.castsource = ty.t AND c.casttarget IN ('text'::regtype, 'json'::regtype, 'jsonb'::regtype))
     WHERE c.castmethod = 'f'
  ), judged AS MATERIALIZED (
    SELECT DISTINCT k.root, k.what, k.fn, k.cast, pgmesh.vouched_function(k.fn) AS vouched FROM candidates k
  ), problems AS (
    SELECT tb.root, 1 AS rank, format('trigger %s on %s is enabled %s: it fires in pgmesh''s sessions', g.tgname, g.tgrelid::regclass,
                                      CASE g.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END) AS problem
      FROM tables tb JOIN pg_trigger g ON g.tgrelid = tb.t JOIN pg_proc p ON p.oid = g.tgfoid
     WHERE g.tgenabled IN ('A', 'R') AND p.pronamespace <> 'pgmesh'::regnamespace
    UNION ALL
    SELECT tb.root, 2, format('rule %s on %s is enabled %s: it fires in pgmesh''s sessions', w.rulename, w.ev_class::regclass,
                              CASE w.ev_enabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END)
      FROM tables tb JOIN pg_rewrite w ON w.ev_class = tb.t WHERE w.ev_enabled IN ('A', 'R')
    UNION ALL
    SELECT j.root, 3, format('%s calls %s, owned by %s', j.what, j.fn::regprocedure, f.proowner::regrole)
      FROM judged j JOIN pg_proc f ON f.oid = j.fn WHERE j.cast IS NULL AND NOT j.vouched
    UNION ALL
    SELECT j.root, 4, format('%s, owned by %s, is a cast that pgmesh''s statements apply to %s', pg_describe_object('pg_cast'::regclass, c.oid, 0),
                             f.proowner::regrole,
                             (SELECT string_agg(x.t::regtype::text, ', ') FROM (SELECT c.castsource AS t UNION SELECT c.casttarget) x
                               WHERE x.t IN (SELECT ty.t FROM types ty WHERE ty.root = j.root)))
      FROM judged j JOIN pg_cast c ON c.oid = j.cast JOIN pg_proc f ON f.oid = j.fn WHERE NOT j.vouched
  )
  SELECT p.root::regclass, p.problem FROM problems p ORDER BY p.root, p.rank, p.problem;
END
$fn$;

-- The first piece of code that a write of pgmesh to table rel (or a partition of it) would run and that pgmesh does
-- not vouch for, described; NULL if none.
CREATE FUNCTION pgmesh.owner_code_problem(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT p.problem FROM pgmesh.owner_code_problems(ARRAY[rel]) p LIMIT 1
$fn$;

-- The replicated tables whose writes a DDL command may have changed, from what pg_event_trigger_ddl_commands() says it
-- did; NULL when that may be any of them. A command on tables, their indexes, triggers, rules, defaults, constraints,
-- or the publication's tables changes the code of those tables and of the tables related by inheritance or
-- partitioning (either way: a parent's new default reaches its partitions); unless a table's row type is used
-- elsewhere (a column, a domain, an array of it), which makes the command reach whatever uses it: all. A command on
-- anything else (a function, its owner, a cast, a type, a domain, an operator, an extension) may reach any table.
CREATE FUNCTION pgmesh.ddl_touched_tables() RETURNS oid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  WITH RECURSIVE touched AS (
    SELECT CASE c.classid
             WHEN 'pg_class'::regclass THEN (SELECT CASE WHEN k.relkind IN ('i', 'I') THEN (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = k.oid)
                                                         ELSE k.oid END
                                               FROM pg_class k WHERE k.oid = c.objid)
             WHEN 'pg_trigger'::regclass THEN (SELECT g.tgrelid FROM pg_trigger g WHERE g.oid = c.objid)
             WHEN 'pg_rewrite'::regclass THEN (SELECT w.ev_class FROM pg_rewrite w WHERE w.oid = c.objid)
             WHEN 'pg_attrdef'::regclass THEN (SELECT ad.adrelid FROM pg_attrdef ad WHERE ad.oid = c.objid)
             WHEN 'pg_constraint'::regclass THEN (SELECT nullif(k.conrelid, 0) FROM pg_constraint k WHERE k.oid = c.objid)
             WHEN 'pg_publication_rel'::regclass THEN (SELECT pr.prrelid FROM pg_publication_rel pr WHERE pr.oid = c.objid)
             WHEN 'pg_policy'::regclass THEN 0
             WHEN 'pg_statistic_ext'::regclass THEN 0
           END AS rel
      FROM pg_event_trigger_ddl_commands() c
  ), widened AS (
    -- A policy or statistics object (0) changes no table's writes. A view, a sequence: only through their row types
    -- (below), as a table.
    SELECT t.rel FROM touched t WHERE t.rel IS NOT NULL AND t.rel <> 0
    UNION
    SELECT h.inhparent FROM widened w JOIN pg_inherits h ON h.inhrelid = w.rel
  ), related AS (
    SELECT w.rel FROM widened w
    UNION
    SELECT h.inhrelid FROM related r JOIN pg_inherits h ON h.inhparent = r.rel
  )
  SELECT CASE
           WHEN EXISTS (SELECT 1 FROM touched t WHERE t.rel IS NULL) THEN NULL
           WHEN EXISTS (SELECT 1 FROM related r JOIN pg_class k ON k.oid = r.rel JOIN pg_type y ON y.oid = k.reltype
                          JOIN pg_depend d ON d.refclassid = 'pg_type'::regclass AND d.refobjid IN (y.oid, y.typarray)
                         WHERE NOT (d.classid = 'pg_type'::regclass AND d.deptype = 'i')) THEN NULL
           ELSE ARRAY(SELECT r.rel FROM related r
                       WHERE r.rel IN (SELECT pr.prrelid FROM pg_publication_rel pr JOIN pg_publication pb ON pb.oid = pr.prpubid
                                        WHERE pb.pubname = 'pgmesh'))
         END
$fn$;

-- Raises PM011 for the first of the replicated tables rels (all of them if NULL) whose writes would run code pgmesh
-- does not vouch for.
CREATE FUNCTION pgmesh.check_owner_code(rels oid[] DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r record;
BEGIN
  SELECT p.rel, p.problem INTO r
    FROM pgmesh.owner_code_problems(coalesce(rels, ARRAY(SELECT pr.prrelid FROM pg_publication_rel pr JOIN pg_publication pb ON pb.oid = pr.prpubid
                                                         WHERE pb.pubname = 'pgmesh'))) p
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'pgmesh: % is replicated, and pgmesh would run code of its own with its rights: %', r.rel, r.problem
      USING ERRCODE = 'PM011',
            DETAIL = 'pgmesh writes replicated tables in its own sessions (apply, conflicts restore, exceptions replay, node add), where code of a table''s owner would run with pgmesh''s rights.',
            HINT = 'Use only built-in functions there, or functions owned by a superuser (ALTER FUNCTION ... OWNER TO, if you trust them); leave triggers and rules enabled for origin sessions only (ALTER TABLE ... ENABLE TRIGGER).';
  END IF;
END
$fn$;

-- On every node, for every role's DDL (nested or not, whatever pgmesh.ddl_capture says): nothing may bring code that
-- pgmesh does not vouch for into a replicated table's writes.
CREATE FUNCTION pgmesh.owner_code_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  rels oid[];
BEGIN
  -- Commands that cannot change what code a write runs, nor whose it is (privileges, comments, labels, sequences,
  -- statistics): not checked, so that a GRANT costs a GRANT.
  IF tg_tag IN ('GRANT', 'REVOKE', 'COMMENT', 'SECURITY LABEL', 'ALTER DEFAULT PRIVILEGES', 'CREATE SEQUENCE', 'ALTER SEQUENCE',
                'CREATE STATISTICS', 'ALTER STATISTICS', 'REFRESH MATERIALIZED VIEW') THEN
    RETURN;
  END IF;
  rels := pgmesh.ddl_touched_tables();
  IF rels IS NULL OR cardinality(rels) > 0 THEN
    PERFORM pgmesh.check_owner_code(rels);
  END IF;
END
$fn$;

CREATE EVENT TRIGGER pgmesh_owner_code_guard ON ddl_command_end EXECUTE FUNCTION pgmesh.owner_code_guard();

`;
