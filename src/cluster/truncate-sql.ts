/**
 * TRUNCATE by version (catalog migration). A TRUNCATE is a delete of every row at once, so it is ordered like a
 * delete: it leaves one tombstone for its whole table, key '*', whose version is the truncate's, and rows and changes
 * older than it are gone on every node while those written after it (by their version) stay, whatever the order in
 * which nodes receive them.
 * - On the node that truncates, a statement trigger records the tombstone (the rows are gone already).
 * - On the others, the agent applies a peer's TRUNCATE with pgmesh.apply_truncate: it records the tombstone and
 *   deletes the rows older than it (not a TRUNCATE: rows written here after it must stay). It touches only the
 *   tables the peer truncated: never a table that is not replicated. A foreign key from a table outside that set
 *   would be left pointing at deleted rows: the change goes to the exception table instead (as PostgreSQL's own apply
 *   refuses such a truncate). RESTART IDENTITY is not replayed: each node's sequences hand out their own values.
 * - The apply statements treat the table's tombstone like a tombstone of every key (statement-builder.ts), and
 *   tombstone collection removes it like any other once every peer is past it.
 */
import { APPLY_LOCK_SLOTS, TRUNCATE_TOMBSTONE_KEY } from '../apply/lock-space.ts';

/**
 * The high half of the advisory lock (pg_advisory_xact_lock(int8)) of a whole table among apply sessions ('pmsh'), as
 * TRUNCATE_LOCK_MIGRATION took it; APPLY_LOCK_MIGRATION replaced it by rows of pgmesh.apply_lock.
 */
export const APPLY_TABLE_LOCK_SPACE = 0x706d7368;

export const TRUNCATE_MIGRATION = `
CREATE FUNCTION pgmesh.record_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  INSERT INTO pgmesh.tombstone (relid, pkey) VALUES (TG_RELID, '${TRUNCATE_TOMBSTONE_KEY}')
  ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey;
  RETURN NULL;
END
$fn$;

DO $do$
DECLARE
  rel regclass;
BEGIN
  FOR rel IN SELECT pr.prrelid::regclass FROM pg_catalog.pg_publication_rel pr
               JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'pgmesh' LOOP
    EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_record_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.record_truncate()', rel);
  END LOOP;
END
$do$;

-- A peer's TRUNCATE of rels at version (remote_ts, remote_node), in the apply session. A row of the same peer is
-- older whatever its timestamp (the peer's changes arrive in its commit order).
CREATE FUNCTION pgmesh.apply_truncate(rels oid[], remote_ts timestamptz, remote_node text, local_node text)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
-- Keys are spelled as the tombstones spell them (see pgmesh.record_deletes).
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
DECLARE
  rel oid;
  outside text;
  keys text;
  keyed boolean;
BEGIN
  SELECT string_agg(format('%s references %s (%s)', c.conrelid::regclass, c.confrelid::regclass, c.conname), ', ') INTO outside
    FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = ANY (rels) AND c.conrelid <> ALL (rels);
  IF outside IS NOT NULL THEN
    RAISE EXCEPTION 'pgmesh: a TRUNCATE from % of % would leave rows pointing at deleted ones: %', remote_node,
      (SELECT string_agg(r::regclass::text, ', ') FROM unnest(rels) r), outside
      USING ERRCODE = 'foreign_key_violation',
            HINT = 'Empty the referencing tables on this node (or replicate them too), run the TRUNCATE again on any node (it replicates), then discard this exception.';
  END IF;
  FOREACH rel IN ARRAY rels LOOP
    INSERT INTO pgmesh.tombstone AS t (relid, pkey) VALUES (rel, '${TRUNCATE_TOMBSTONE_KEY}')
    ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey
      WHERE (SELECT v.node IS NOT DISTINCT FROM remote_node OR (coalesce(v.ts, '-infinity'), v.node COLLATE "C") < (remote_ts, remote_node COLLATE "C")
               FROM pgmesh.row_version(t.xmin, local_node) v);
    -- Tables with delta columns may keep a row's version apart from its xmin (pgmesh.version_override), by key.
    keyed := EXISTS (SELECT 1 FROM pgmesh.table_policy p JOIN pg_class c ON c.relname = p.relation_name
                       JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.relation_schema
                      WHERE c.oid = rel AND cardinality(p.delta_columns) > 0);
    SELECT string_agg(format('x.%I', a.attname), ', ' ORDER BY k.n) INTO keys
      FROM pg_index i JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON true
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary;
    EXECUTE format(
      'DELETE FROM %s x WHERE (SELECT v.node IS NOT DISTINCT FROM $2 OR (coalesce(v.ts, ''-infinity''), v.node COLLATE "C") < ($1, $2 COLLATE "C") FROM %s v)',
      rel::regclass,
      CASE WHEN keyed AND keys IS NOT NULL
           THEN format('pgmesh.row_version_keyed(%s, jsonb_build_array(%s)::text, x.xmin, $3)', rel, keys)
           ELSE 'pgmesh.row_version(x.xmin, $3)' END)
      USING remote_ts, remote_node, local_node;
  END LOOP;
  RETURN true;
END
$fn$;
`;

/**
 * A peer's TRUNCATE serialises with the other apply sessions (src/apply/key-lock.ts): it takes each table's apply lock
 * exclusively before it reads anything, in OID order. An insert of another peer then either committed before (and
 * its row is judged by the DELETE, which runs on a new snapshot: the function is VOLATILE, in READ COMMITTED) or
 * waits until the truncate's tombstone is committed (and is judged against it).
 */
export const TRUNCATE_LOCK_MIGRATION = `
-- A peer's TRUNCATE of rels at version (remote_ts, remote_node), in the apply session. A row of the same peer is
-- older whatever its timestamp (the peer's changes arrive in its commit order).
CREATE OR REPLACE FUNCTION pgmesh.apply_truncate(rels oid[], remote_ts timestamptz, remote_node text, local_node text)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
-- Keys are spelled as the tombstones spell them (see pgmesh.record_deletes).
SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $fn$
DECLARE
  rel oid;
  outside text;
  keys text;
  keyed boolean;
BEGIN
  SELECT string_agg(format('%s references %s (%s)', c.conrelid::regclass, c.confrelid::regclass, c.conname), ', ') INTO outside
    FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = ANY (rels) AND c.conrelid <> ALL (rels);
  IF outside IS NOT NULL THEN
    RAISE EXCEPTION 'pgmesh: a TRUNCATE from % of % would leave rows pointing at deleted ones: %', remote_node,
      (SELECT string_agg(r::regclass::text, ', ') FROM unnest(rels) r), outside
      USING ERRCODE = 'foreign_key_violation',
            HINT = 'Empty the referencing tables on this node (or replicate them too), run the TRUNCATE again on any node (it replicates), then discard this exception.';
  END IF;
  -- Before anything is read (the statements below take new snapshots): see TRUNCATE_LOCK_MIGRATION.
  PERFORM pg_advisory_xact_lock((${APPLY_TABLE_LOCK_SPACE}::int8 << 32) | r::int8) FROM (SELECT DISTINCT r FROM unnest(rels) r ORDER BY r) z;
  FOREACH rel IN ARRAY rels LOOP
    INSERT INTO pgmesh.tombstone AS t (relid, pkey) VALUES (rel, '${TRUNCATE_TOMBSTONE_KEY}')
    ON CONFLICT (relid, pkey) DO UPDATE SET pkey = EXCLUDED.pkey
      WHERE (SELECT v.node IS NOT DISTINCT FROM remote_node OR (coalesce(v.ts, '-infinity'), v.node COLLATE "C") < (remote_ts, remote_node COLLATE "C")
               FROM pgmesh.row_version(t.xmin, local_node) v);
    -- Tables with delta columns may keep a row's version apart from its xmin (pgmesh.version_override), by key.
    keyed := EXISTS (SELECT 1 FROM pgmesh.table_policy p JOIN pg_class c ON c.relname = p.relation_name
                       JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.relation_schema
                      WHERE c.oid = rel AND cardinality(p.delta_columns) > 0);
    SELECT string_agg(format('x.%I', a.attname), ', ' ORDER BY k.n) INTO keys
      FROM pg_index i JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) ON true
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary;
    EXECUTE format(
      'DELETE FROM %s x WHERE (SELECT v.node IS NOT DISTINCT FROM $2 OR (coalesce(v.ts, ''-infinity''), v.node COLLATE "C") < ($1, $2 COLLATE "C") FROM %s v)',
      rel::regclass,
      CASE WHEN keyed AND keys IS NOT NULL
           THEN format('pgmesh.row_version_keyed(%s, jsonb_build_array(%s)::text, x.xmin, $3)', rel, keys)
           ELSE 'pgmesh.row_version(x.xmin, $3)' END)
      USING remote_ts, remote_node, local_node;
  END LOOP;
  RETURN true;
END
$fn$;
`;

const ADVISORY_TABLE_LOCKS = `  PERFORM pg_advisory_xact_lock((${APPLY_TABLE_LOCK_SPACE}::int8 << 32) | r::int8) FROM (SELECT DISTINCT r FROM unnest(rels) r ORDER BY r) z;`;
const SLOT_TABLE_LOCKS = `  PERFORM 1 FROM pgmesh.apply_lock l WHERE l.slot IN (SELECT (r::int8 & ${APPLY_LOCK_SLOTS - 1})::int4 FROM unnest(rels) r) ORDER BY l.slot FOR UPDATE;`;
if (!TRUNCATE_LOCK_MIGRATION.includes(ADVISORY_TABLE_LOCKS)) throw new Error('truncate-sql.ts: the table lock line of apply_truncate moved');

/**
 * The apply sessions' locks as rows of a pgmesh table instead of advisory locks, which any role could hold
 * (src/apply/key-lock.ts, docs/security.md): the slots, and apply_truncate locking its tables' rows. The agent roles
 * get UPDATE on it (agent-privileges.ts), which row locks need.
 */
export const APPLY_LOCK_MIGRATION = `
CREATE TABLE pgmesh.apply_lock (slot integer PRIMARY KEY);
INSERT INTO pgmesh.apply_lock SELECT g FROM generate_series(0, ${2 * APPLY_LOCK_SLOTS - 1}) g;
${TRUNCATE_LOCK_MIGRATION.replace(ADVISORY_TABLE_LOCKS, SLOT_TABLE_LOCKS)}
`;
