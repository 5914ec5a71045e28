/**
 * Fixes of what the attacker's probe found (docs/security-probe.md); each is described in docs/security.md.
 *
 * pgmesh's row triggers on a partitioned table, for the roles that own it ("Whose rights code runs with").
 *
 * PostgreSQL clones a partitioned table's row triggers to every partition made or attached later, and checks that the
 * role doing it may EXECUTE each trigger's function (CloneRowTriggersToPartition). pgmesh's row triggers
 * (pgmesh_record_key_change, pgmesh_unique_release_update and _delete) run functions that were closed to PUBLIC with
 * the rest of the catalog, so an application role that owns a replicated partitioned table could not make a partition
 * of it: "permission denied for function " (the name is empty: the clone passes the function by OID). Neither could a
 * peer replaying that role's CREATE TABLE ... PARTITION OF, which runs as the role.
 *
 * Their two functions are executable by PUBLIC now (PUBLIC_FUNCTIONS). Why that gives no role anything:
 * - a trigger function cannot be called but as a trigger ("trigger functions can only be called as triggers");
 * - to attach one to a table by name (CREATE TRIGGER) a role needs USAGE on schema pgmesh, which pgmesh grants to no
 *   one but its agent roles; a clone names the function by OID, and PostgreSQL clones only the triggers of a
 *   partitioned table onto its partitions, which only that table's owner can make or attach;
 * - where an administrator granted USAGE on pgmesh anyway, a role can attach them to a table of its own: they record
 *   nothing unless the table is one pgmesh replicates (itself or through a partitioned ancestor), checked below; on a
 *   replicated table they record only that table's keys (TG_RELID), which its owner can change or delete anyway;
 * - they run as the catalog's owner, with a pinned search_path and keys spelled without casts (key-json-sql.ts).
 * record_deletes and record_truncate are statement triggers, never cloned: they stay closed.
 * The check is in their bodies (key-json-sql.ts, migration 29, where they are defined).
 *
 * Also here (found by the same probe): pgmesh.snowflake_id serialized its read-and-advance of the sequence with a
 * session advisory lock of a fixed key (hashtext('pgmesh.snowflake')), which any role can hold: a LOGIN-only role
 * holding it made every insert that takes a snowflake id on that node wait for ever. It locks a pgmesh table instead
 * (SHARE UPDATE EXCLUSIVE: taken only by a role with rights on the table, conflicting with itself and not with the
 * ACCESS SHARE any role can take by OID through functions like pg_relation_size), inside a subtransaction that the
 * function ends on purpose once the id is taken: the lock goes with it at once (as the session lock did), while the
 * sequence's nextval and setval, which are never rolled back, stay.
 * The version horizon's step (advance_version_horizon, drop_version_horizon) serialized itself the same way with
 * hashtext('pgmesh.version_horizon'), a transaction lock: held by any role, the horizon stopped, and its slot kept
 * the node's WAL from then on. It locks pgmesh.version_horizon_lock instead (the agent role may: AGENT_CATALOG_WRITES).
 * Its functions are redefined from their text in version-horizon-sql.ts with only that line changed.
 * pgmesh.owner_code_problems follows range subtypes (in owner-code-sql.ts, migration 30, where it is defined).
 */

import { OWNER_CODE_MIGRATION } from './owner-code-sql.ts';
import { VERSION_HORIZON_MIGRATION } from './version-horizon-sql.ts';

/** A function of an earlier migration, as CREATE OR REPLACE, with each [from, to] of edits applied (each must match). */
function redefined(migration: string, name: string, edits: readonly (readonly [string, string])[]): string {
  const start = migration.indexOf(`CREATE FUNCTION pgmesh.${name}(`);
  const end = migration.indexOf('$fn$;', start);
  if (start < 0 || end < 0) throw new Error(`pgmesh.${name} is not in its migration`);
  let text = migration.slice(start, end + '$fn$;'.length).replace('CREATE FUNCTION', 'CREATE OR REPLACE FUNCTION');
  for (const [from, to] of edits) {
    if (!text.includes(from)) throw new Error(`pgmesh.${name} has changed: "${from}" is not in it`);
    text = text.replace(from, to);
  }
  return text;
}

/**
 * A partition made or attached after its root joined replication is written by the agent under its own name (the
 * publication sends its changes so), and join_table granted the agent roles rights on the root only: with the
 * least-privilege agent every change of a new partition failed ("permission denied for table"). check_owner_code, which
 * runs after every DDL statement that reaches a replicated table (the guard's event trigger for local DDL, run_ddl_as
 * for replayed DDL), grants them first.
 */
const CHECK_OWNER_CODE_GRANTS = [
  `BEGIN
  SELECT p.rel, p.problem INTO r`,
  `BEGIN
  PERFORM pgmesh.grant_agents_partitions(rels);
  SELECT p.rel, p.problem INTO r`,
] as const;

const HORIZON_ADVISORY_LOCK = "PERFORM pg_catalog.pg_advisory_xact_lock(hashtext('pgmesh.version_horizon'));";
const HORIZON_TABLE_LOCK = 'LOCK TABLE pgmesh.version_horizon_lock IN SHARE UPDATE EXCLUSIVE MODE;';

const HELD_BY_EVERY_EXCEPTION = "SELECT min(e.remote_ts) INTO oldest_exception FROM pgmesh.exception e WHERE e.state = 'open';";
const HELD_BY_ROW_EXCEPTIONS =
  "SELECT min(e.remote_ts) INTO oldest_exception FROM pgmesh.exception e WHERE e.state = 'open' AND e.change_kind IN ('insert', 'update', 'delete');";

/**
 * The step, which also held the horizon for every open exception: a refused message (which any LOGIN role can make
 * peers record, with one pg_logical_emit_message) held it until the operator discarded it, and the horizon's slot kept
 * the node's WAL meanwhile. Only row changes can be replayed (src/cluster/repair.ts) and need the versions of their
 * time: only they hold it now.
 */
const HORIZON_STEP = redefined(VERSION_HORIZON_MIGRATION, 'advance_version_horizon', [
  [HORIZON_ADVISORY_LOCK, HORIZON_TABLE_LOCK],
  [HELD_BY_EVERY_EXCEPTION, HELD_BY_ROW_EXCEPTIONS],
]);

export const PROBE_FIXES_MIGRATION = `
GRANT EXECUTE ON FUNCTION pgmesh.record_key_change(), pgmesh.record_unique_release() TO PUBLIC;

-- Never has a row: only its lock is used.
CREATE TABLE pgmesh.snowflake_lock (singleton boolean PRIMARY KEY CHECK (singleton));
REVOKE ALL ON pgmesh.snowflake_lock FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgmesh.snowflake_id_at(clock timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  tick bigint := (floor(extract(epoch FROM clock) * 1000)::bigint - 1735689600000) << 12;
  slot integer;
  state bigint;
BEGIN
  SELECT l.node_slot INTO slot FROM pgmesh.local_node l;
  IF slot IS NULL OR slot > 1024 THEN
    RAISE EXCEPTION 'pgmesh.snowflake_id: this node has no slot from 1 to 1024 (run "pgmesh init" for it)' USING ERRCODE = 'PM005';
  END IF;
  IF tick < 0 THEN
    RAISE EXCEPTION 'pgmesh.snowflake_id: the clock (%) is before the id epoch 2025-01-01', clock USING ERRCODE = 'PM005';
  END IF;
  BEGIN
    LOCK TABLE pgmesh.snowflake_lock IN SHARE UPDATE EXCLUSIVE MODE;
    state := nextval('pgmesh.snowflake_state');
    IF state < tick THEN
      PERFORM setval('pgmesh.snowflake_state', tick);
      state := tick;
    END IF;
    -- Ends the subtransaction and releases the lock; state keeps its value (PL/pgSQL variables are not rolled back).
    RAISE EXCEPTION USING ERRCODE = 'PMSF0';
  EXCEPTION WHEN SQLSTATE 'PMSF0' THEN
    NULL;
  END;
  RETURN ((state >> 12) << 22) | ((slot - 1)::bigint << 12) | (state & 4095);
END
$fn$;

-- Never has a row: only its lock is used.
CREATE TABLE pgmesh.version_horizon_lock (singleton boolean PRIMARY KEY CHECK (singleton));
REVOKE ALL ON pgmesh.version_horizon_lock FROM PUBLIC;
${HORIZON_STEP}
${redefined(VERSION_HORIZON_MIGRATION, 'drop_version_horizon', [[HORIZON_ADVISORY_LOCK, HORIZON_TABLE_LOCK]])}

-- The agent roles' rights on the partitions of replicated tables (of rels, or of all when NULL), as join_table gives
-- them on the root. Run as the catalog's owner; its GRANTs are this node's own, not DDL to replicate.
CREATE FUNCTION pgmesh.grant_agents_partitions(rels oid[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  p record;
  capture text := current_setting('pgmesh.ddl_capture', true);
BEGIN
  FOR p IN SELECT DISTINCT t.relid::regclass AS part, a.role_name
             FROM pg_publication_rel pr JOIN pg_publication pb ON pb.oid = pr.prpubid AND pb.pubname = 'pgmesh'
             CROSS JOIN LATERAL pg_partition_tree(pr.prrelid) t
             CROSS JOIN pgmesh.agent_role a
            WHERE t.relid <> pr.prrelid AND (rels IS NULL OR pr.prrelid = ANY (rels) OR t.relid = ANY (rels))
              AND EXISTS (SELECT FROM pg_roles o WHERE o.rolname = a.role_name)
              AND NOT (has_table_privilege(a.role_name, t.relid, 'SELECT') AND has_table_privilege(a.role_name, t.relid, 'INSERT')
                       AND has_table_privilege(a.role_name, t.relid, 'UPDATE') AND has_table_privilege(a.role_name, t.relid, 'DELETE')
                       AND has_table_privilege(a.role_name, t.relid, 'TRUNCATE')) LOOP
    PERFORM set_config('pgmesh.ddl_capture', 'off', true);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON %s TO %I', p.part, p.role_name);
  END LOOP;
  PERFORM set_config('pgmesh.ddl_capture', coalesce(capture, ''), true);
END
$fn$;
REVOKE ALL ON FUNCTION pgmesh.grant_agents_partitions(oid[]) FROM PUBLIC;
${redefined(OWNER_CODE_MIGRATION, 'check_owner_code', [CHECK_OWNER_CODE_GRANTS])}
`;
