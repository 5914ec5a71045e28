/**
 * The catalog side of authenticated messages (docs/security.md, "Authenticated messages"): every logical message
 * pgmesh writes into a node's WAL carries an HMAC-SHA256 under the cluster key, which only the catalog owner and the
 * agent roles can read. Peers verify it (src/ddl/message-auth.ts) before they act on a message, or record it as an
 * exception: pg_logical_emit_message is open to every role, so without it any role could make peers replay DDL.
 *
 * The MAC covers the prefix, the origin node's name, the emitting transaction's xid (which pgoutput's BEGIN carries)
 * and the body: a genuine message cannot be moved to another prefix, another node's stream or another transaction.
 * Content on the wire: 'pgmesh1:' || 64 hex digits || ':' || body (UTF-8).
 */

/** Prefixes pgmesh's operator commands emit through pgmesh.emit_message; DDL messages come only from capture. */
export const MARKER_PREFIXES = ['pgmesh.join', 'pgmesh.leave', 'pgmesh.resync', 'pgmesh.ddl_lock'] as const;

export const MESSAGE_AUTH_MIGRATION = `
-- The cluster key: the same on every node of a cluster ("cluster create" copies the first node's to the others,
-- "node add" the source's to the new node). Made here at random, so that every node always has one. Never
-- replicated, never logged; readable by the catalog owner and agent roles only (schema pgmesh is theirs alone).
CREATE TABLE pgmesh.cluster_key (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  key bytea NOT NULL CHECK (octet_length(key) = 32),
  set_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON pgmesh.cluster_key FROM PUBLIC;
-- gen_random_uuid draws from pg_strong_random: three of them hold 366 random bits.
INSERT INTO pgmesh.cluster_key (key)
SELECT pg_catalog.sha256(pg_catalog.convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'));

-- HMAC-SHA256 (RFC 2104) from the built-in sha256: 64-byte blocks, key padded with zeros, ipad 0x36, opad 0x5c.
CREATE FUNCTION pgmesh.hmac_sha256(key bytea, message bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  k bytea := CASE WHEN octet_length(key) > 64 THEN sha256(key) ELSE key END;
  ipad bytea;
  opad bytea;
BEGIN
  k := k || decode(repeat('00', 64 - octet_length(k)), 'hex');
  ipad := k;
  opad := k;
  FOR i IN 0..63 LOOP
    ipad := set_byte(ipad, i, get_byte(k, i) # 54);
    opad := set_byte(opad, i, get_byte(k, i) # 92);
  END LOOP;
  RETURN sha256(opad || sha256(ipad || message));
END
$fn$;

-- The content of a message of this node's current transaction: the MAC, then the body. Not SECURITY DEFINER: it
-- reads the key with the caller's rights, so it works only for pgmesh's own definer functions, superusers and agent
-- roles (who can read the key anyway).
CREATE FUNCTION pgmesh.signed_message(prefix text, body text) RETURNS bytea
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  k bytea := (SELECT c.key FROM pgmesh.cluster_key c);
  origin bytea := convert_to(coalesce((SELECT l.node_name FROM pgmesh.local_node l), ''), 'UTF8');
  p bytea := convert_to(prefix, 'UTF8');
  payload bytea := convert_to(body, 'UTF8');
BEGIN
  IF k IS NULL THEN
    RAISE EXCEPTION 'pgmesh: this node has no cluster key, so its peers would refuse its messages'
      USING ERRCODE = '55000', HINT = 'Run "pgmesh cluster create" again (it gives every node the cluster''s key), or "pgmesh node add" for a new node.';
  END IF;
  RETURN convert_to('pgmesh1:' || encode(pgmesh.hmac_sha256(k,
           convert_to('pgmesh1' || E'\\n' || octet_length(p) || ':', 'UTF8') || p
           || convert_to(octet_length(origin) || ':', 'UTF8') || origin
           || convert_to(pg_current_xact_id()::xid::text || ':', 'UTF8') || payload), 'hex') || ':', 'UTF8') || payload;
END
$fn$;

-- The markers of pgmesh's operator commands (node add, node remove, node resync, ddl --lock): transactional
-- messages whose position peers wait for. DDL messages are written by capture only (pgmesh.ddl_command_end).
CREATE FUNCTION pgmesh.emit_message(prefix text, body text) RETURNS pg_lsn
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF prefix IS NULL OR prefix <> ALL (ARRAY[${MARKER_PREFIXES.map((p) => `'${p}'`).join(', ')}]) THEN
    RAISE EXCEPTION 'pgmesh: % is not a marker prefix of pgmesh', coalesce(prefix, 'NULL') USING ERRCODE = '22023';
  END IF;
  RETURN pg_logical_emit_message(true, prefix, pgmesh.signed_message(prefix, body));
END
$fn$;
`;
