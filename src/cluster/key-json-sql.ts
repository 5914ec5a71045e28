/**
 * Keys and unique values spelled without running any role's code (docs/security.md, "Whose rights code runs with").
 *
 * The tombstone, key-change and unique-release triggers run as the catalog's owner (SECURITY DEFINER: the writing
 * role has no right on pgmesh's tables). They spelled keys with to_jsonb on the whole row, and to_jsonb, for a value
 * of a type that is not built in, calls a cast to json if the type's owner created one: a role that owns an enum and
 * a table could have its own function run as the catalog's owner (a superuser) by one DELETE. `::text` would call a
 * cast too (a type's owner may create a cast to text).
 *
 * Here a key is `jsonb_build_array(<one expression per column>)`, each column spelled as to_jsonb spells it when no
 * cast exists, so the stored forms (tombstone keys, claim values) stay what the apply statements compute:
 * - a built-in type: the value itself (to_jsonb looks for a cast only for types that are not built in);
 * - a scalar type that is not built in (an enum, a range or multirange, a base type; domains are looked through):
 *   the value as its output function prints it, `format('%s', v)`; output functions of such types are built in
 *   (enum, range) or were installed by a superuser (a base type's);
 * - an array or composite that holds such a type: to_jsonb would look for the cast of its elements, and pgmesh
 *   cannot spell the value without it; such a key is refused with an error (PM010), never spelled with the cast.
 * Only the key columns are read (to_jsonb read the whole row).
 */

export const KEY_JSON_MIGRATION = `
-- How to_jsonb would spell a value of type typ without calling a cast: 'p' (plain: it calls none), 't' (as its output
-- function prints it) or 'x' (an array or composite holding a 't' type: cannot be spelled without the cast).
CREATE FUNCTION pgmesh.json_class(typ oid) RETURNS "char"
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  t record;
BEGIN
  SELECT y.oid, y.typtype, y.typbasetype, y.typelem, y.typrelid, y.typsubscript INTO t FROM pg_type y WHERE y.oid = typ;
  WHILE t.typtype = 'd' LOOP
    SELECT y.oid, y.typtype, y.typbasetype, y.typelem, y.typrelid, y.typsubscript INTO t FROM pg_type y WHERE y.oid = t.typbasetype;
  END LOOP;
  IF t.oid < 16384 THEN
    RETURN 'p';
  END IF;
  IF t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc THEN
    RETURN CASE WHEN pgmesh.json_class(t.typelem) = 'p' THEN 'p' ELSE 'x' END;
  END IF;
  IF t.typtype = 'c' THEN
    RETURN CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                                AND pgmesh.json_class(a.atttypid) <> 'p') THEN 'x' ELSE 'p' END;
  END IF;
  RETURN 't';
END
$fn$;

-- jsonb_build_array(...)::text of the columns cols of table rel, read from alias (a table alias or '($1)'), as an
-- SQL expression: the key as the apply statements spell it, without calling any cast (see key-json-sql.ts).
CREATE FUNCTION pgmesh.key_json_expr(rel oid, cols text[], alias text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  parts text[] := '{}';
  c record;
  v text;
BEGIN
  FOR c IN SELECT k.name, a.atttypid, pgmesh.json_class(a.atttypid) AS class
             FROM unnest(cols) WITH ORDINALITY AS k(name, n)
             JOIN pg_attribute a ON a.attrelid = rel AND a.attname = k.name AND NOT a.attisdropped
            ORDER BY k.n LOOP
    v := alias || '.' || quote_ident(c.name);
    IF c.class = 'x' THEN
      RAISE EXCEPTION 'pgmesh: column % of % has type %, which holds a type that is not built in', c.name, rel::regclass, c.atttypid::regtype
        USING ERRCODE = 'PM010',
              DETAIL = 'pgmesh spells keys and unique values without running casts that roles created, and cannot spell this one.',
              HINT = 'Use built-in types, enums, ranges or domains for primary key and unique columns of replicated tables.';
    END IF;
    parts := parts || CASE WHEN c.class = 't' THEN format('CASE WHEN %s IS NULL THEN NULL ELSE pg_catalog.format(''%%s'', %s) END', v, v) ELSE v END;
  END LOOP;
  IF cardinality(parts) <> cardinality(cols) THEN
    RAISE EXCEPTION 'pgmesh: % has no column among %', rel::regclass, cols USING ERRCODE = '42703';
  END IF;
  RETURN format('pg_catalog.jsonb_build_array(%s)::text', array_to_string(parts, ', '));
END
$fn$;

-- The triggers, as before (catalog-schema.ts, migration 10), with keys spelled by key_json_expr instead of to_jsonb.
CREATE OR REPLACE FUNCTION pgmesh.record_deletes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
BEGIN
  EXECUTE format('INSERT INTO pgmesh.tombstone (relid, pkey) SELECT %s::oid, %s FROM pgmesh_deleted o
                  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey, ts = NULL, node = NULL',
                 TG_RELID, pgmesh.key_json_expr(TG_RELID, TG_ARGV, 'o'));
  RETURN NULL;
END
$fn$;

-- record_key_change and record_unique_release are cloned onto new partitions, so they are executable by every
-- role (src/cluster/probe-fixes-sql.ts says why that is safe, and grants it): each first checks that its table is one
-- pgmesh replicates.
-- Whether pgmesh replicates relid: it is in the publication, or a partition of a table that is.
-- (pg_partition_ancestors lists nothing for a table that is not in a partition tree: relid is compared on its own.)
CREATE FUNCTION pgmesh.replicated_relation(relid oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                  WHERE p.pubname = 'pgmesh'
                    AND (pr.prrelid = relid OR pr.prrelid IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(relid) a)))
$fn$;
REVOKE ALL ON FUNCTION pgmesh.replicated_relation(oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgmesh.record_key_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
DECLARE
  key text;
BEGIN
  -- Executable by every role (see above): on a table pgmesh does not replicate, it records nothing.
  IF NOT pgmesh.replicated_relation(TG_RELID) THEN
    RETURN NULL;
  END IF;
  EXECUTE 'SELECT ' || pgmesh.key_json_expr(TG_RELID, TG_ARGV, '($1)') INTO key USING OLD;
  INSERT INTO pgmesh.tombstone (relid, pkey) VALUES (TG_RELID, key)
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey, ts = NULL, node = NULL;
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgmesh.record_unique_release() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
DECLARE
  key text;
  v_ts timestamptz;
  v_node text;
  idx record;
  old_value text;
  new_value text;
BEGIN
  -- Executable by every role (see above): on a table pgmesh does not replicate, it records nothing.
  IF NOT pgmesh.replicated_relation(TG_RELID) THEN
    RETURN NULL;
  END IF;
  EXECUTE 'SELECT ' || pgmesh.key_json_expr(TG_RELID, TG_ARGV, '($1)') INTO key USING OLD;
  -- A row written earlier in this transaction: the claim takes this transaction's version (left NULL).
  IF OLD.xmin IS DISTINCT FROM pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()) THEN
    SELECT v.ts, v.node INTO v_ts, v_node
      FROM pgmesh.row_version_keyed(TG_RELID, key, OLD.xmin, (SELECT node_name FROM pgmesh.local_node)) v;
  END IF;
  FOR idx IN SELECT i.indexrelid AS indexid,
                    (SELECT array_agg(a.attname::text ORDER BY k.pos) FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE k.pos <= i.indnkeyatts) AS cols
               FROM pg_index i
              WHERE i.indrelid = TG_RELID AND i.indisunique AND NOT i.indisprimary AND i.indimmediate AND NOT i.indnullsnotdistinct
                AND i.indpred IS NULL AND i.indexprs IS NULL LOOP
    EXECUTE format('SELECT %s, %s', pgmesh.key_json_expr(TG_RELID, idx.cols, '($1)'), pgmesh.key_json_expr(TG_RELID, idx.cols, '($2)'))
       INTO old_value, new_value USING OLD, NEW;
    IF TG_OP = 'DELETE' THEN
      new_value := NULL;
    END IF;
    -- A value with a NULL is not unique: nothing to claim.
    CONTINUE WHEN old_value::jsonb @> '[null]'::jsonb OR old_value IS NOT DISTINCT FROM new_value;
    INSERT INTO pgmesh.unique_claim AS c (relid, indexid, value, pkey, ts, node)
    VALUES (TG_RELID, idx.indexid, old_value, key, v_ts, v_node)
    ON CONFLICT (relid, indexid, value) DO UPDATE SET pkey = EXCLUDED.pkey, ts = EXCLUDED.ts, node = EXCLUDED.node
     WHERE EXCLUDED.ts IS NULL
        OR (SELECT (cv.ts, cv.node COLLATE "C") < (EXCLUDED.ts, EXCLUDED.node COLLATE "C")
              FROM pgmesh.claim_version(c.xmin, c.ts, c.node, (SELECT node_name FROM pgmesh.local_node)) cv);
  END LOOP;
  RETURN NULL;
END
$fn$;
`;
