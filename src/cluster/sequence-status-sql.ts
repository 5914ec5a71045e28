/**
 * Migration 24: pgmesh.sequence_status counts the values a sequence has left without overflowing bigint. The view
 * of migration 12 counted from the value before a never-called sequence's start (start minus the step), so for an
 * interleaved bigserial it computed the maximum minus a negative number: "bigint out of range" from the view and
 * from `pgmesh status` right after `cluster create` on an empty table.
 */
export const SEQUENCE_STATUS_MIGRATION = `
-- An interleaved sequence never called has no last value: counting from the value before its start (start minus the
-- step) took the maximum minus a negative number, past bigint ("bigint out of range" from the view, and from status
-- right after cluster create). Counted in numeric now (div(): whole division; '/' would round
-- the quotient), capped at the largest bigint.
CREATE OR REPLACE VIEW pgmesh.sequence_status AS
WITH used AS (
  SELECT f.seqrelid, array_agg(DISTINCT format('%s.%s.%s', rn.nspname, r.relname, a.attname) ORDER BY format('%s.%s.%s', rn.nspname, r.relname, a.attname)) AS feeds
    FROM pgmesh.sequence_feed f
    JOIN pg_catalog.pg_class r ON r.oid = f.relid
    JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = f.relid AND a.attnum = f.attnum
   WHERE f.relid IN (SELECT pr.prrelid FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                      WHERE p.pubname = 'pgmesh')
   GROUP BY f.seqrelid
), state AS (
  SELECT u.seqrelid, u.feeds, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.relname) AS sequence_name,
         q.seqincrement AS increment, q.seqmin, q.seqmax, q.seqstart,
         CASE WHEN pg_catalog.has_sequence_privilege(s.oid, 'SELECT,USAGE') THEN pg_catalog.pg_sequence_last_value(s.oid) END AS last_value
    FROM used u JOIN pg_catalog.pg_class s ON s.oid = u.seqrelid JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
    JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
), counted AS (
  SELECT st.*, coalesce(st.last_value::numeric, st.seqstart::numeric - st.increment) AS before_next FROM state st
)
SELECT st.seqrelid, st.sequence_name, st.feeds, st.increment, st.last_value,
       abs(st.increment) = l.max_nodes AND mod(mod(coalesce(st.last_value, i.first_value, st.seqstart), l.max_nodes) + l.max_nodes, l.max_nodes)
         = mod(l.node_slot, l.max_nodes) AS interleaved,
       i.first_value, i.restarted_at,
       least(9223372036854775807,
             CASE WHEN st.increment > 0 THEN greatest(0, pg_catalog.div(st.seqmax - st.before_next, st.increment))
                  ELSE greatest(0, pg_catalog.div(st.before_next - st.seqmin, -st.increment)) END)::bigint AS values_left
  FROM counted st CROSS JOIN pgmesh.local_node l
  LEFT JOIN pgmesh.interleaved_sequence i ON i.seqrelid = st.seqrelid AND i.sequence_name = st.sequence_name;
`;
