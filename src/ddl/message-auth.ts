/**
 * The stream side of authenticated messages (docs/security.md, "Authenticated messages"; the SQL side is
 * src/ddl/message-auth-sql.ts). Every logical message whose prefix starts with 'pgmesh.' must carry a valid HMAC
 * under the cluster key over its prefix, origin node, transaction and body; one that does not is never acted on: the
 * applier records it as an exception and the stream goes on.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Queryable } from '../pg/connect.ts';

/** Messages with a prefix starting so are pgmesh's; all others are the applications' own, and ignored. */
export const PGMESH_MESSAGE_PREFIX = 'pgmesh.';
const FORMAT = 'pgmesh1';
const HEADER_LENGTH = FORMAT.length + 1 + 64 + 1;

export type Verified = { readonly ok: true; readonly body: Buffer } | { readonly ok: false; readonly problem: string };

/** What the MAC covers: the format, the prefix and origin node (each with its length), the xid, then the body. */
function macInput(prefix: string, origin: string, xid: number, body: Buffer): Buffer {
  const p = Buffer.from(prefix, 'utf8');
  const o = Buffer.from(origin, 'utf8');
  return Buffer.concat([Buffer.from(`${FORMAT}\n${p.length}:`), p, Buffer.from(`${o.length}:`), o, Buffer.from(`${xid}:`), body]);
}

function mac(key: Buffer, prefix: string, origin: string, xid: number, body: Buffer): Buffer {
  return createHmac('sha256', key).update(macInput(prefix, origin, xid, body)).digest();
}

/** A message's content as pgmesh.signed_message makes it (for tests, and to check the SQL side agrees). */
export function signMessage(key: Buffer, prefix: string, origin: string, xid: number, body: string): Buffer {
  const payload = Buffer.from(body, 'utf8');
  return Buffer.concat([Buffer.from(`${FORMAT}:${mac(key, prefix, origin, xid, payload).toString('hex')}:`), payload]);
}

/** Checks a message of `origin`'s transaction `xid` against `key`; returns its body, or what is wrong (never the key). */
export function verifyMessage(key: Buffer | undefined, prefix: string, origin: string, xid: number, content: Buffer): Verified {
  if (key === undefined) return { ok: false, problem: 'this node has no cluster key, so it cannot tell a genuine pgmesh message (run "pgmesh cluster create" again)' };
  const header = content.subarray(0, HEADER_LENGTH).toString('latin1');
  const match = /^pgmesh1:([0-9a-f]{64}):$/.exec(header);
  if (!match) return { ok: false, problem: `the ${prefix} message is not signed (pgmesh signs every message it writes under the cluster key)` };
  const body = content.subarray(HEADER_LENGTH);
  const given = Buffer.from(match[1] as string, 'hex');
  if (!timingSafeEqual(given, mac(key, prefix, origin, xid, body))) {
    return { ok: false, problem: `the ${prefix} message's signature does not match: it was not written by pgmesh on ${origin} in this transaction, or the nodes' cluster keys differ` };
  }
  return { ok: true, body };
}

/**
 * The cluster key as this node's catalog holds it, read when first needed and again after a message fails to verify
 * (the key may have been set since, by "cluster create" or "node add"). The key stays in this object: never logged.
 */
export class MessageKeys {
  private key: Buffer | undefined;
  private loaded = false;

  constructor(private readonly catalog: Queryable) {}

  async verify(prefix: string, origin: string, xid: number, content: Buffer): Promise<Verified> {
    if (!this.loaded) await this.load();
    const first = verifyMessage(this.key, prefix, origin, xid, content);
    if (first.ok) return first;
    await this.load();
    return verifyMessage(this.key, prefix, origin, xid, content);
  }

  private async load(): Promise<void> {
    this.key = await readClusterKey(this.catalog);
    this.loaded = true;
  }
}

/** This node's cluster key, if it has one. */
export async function readClusterKey(sql: Queryable): Promise<Buffer | undefined> {
  const rows = await sql.unsafe<{ key: string }[]>(`SELECT encode(key, 'hex') AS key FROM pgmesh.cluster_key`);
  const hex = rows[0]?.key;
  return hex === undefined ? undefined : Buffer.from(hex, 'hex');
}

/**
 * Gives a node the cluster key (the same on every node: "cluster create" copies the first node's, "node add" the
 * source's). The key travels as a bind parameter: never in a statement's text, so never in a server log.
 */
export async function writeClusterKey(sql: Queryable, key: Buffer): Promise<void> {
  await sql.unsafe(
    `INSERT INTO pgmesh.cluster_key (key) VALUES (decode($1, 'hex'))
     ON CONFLICT (singleton) DO UPDATE SET key = EXCLUDED.key, set_at = now() WHERE pgmesh.cluster_key.key IS DISTINCT FROM EXCLUDED.key`,
    [key.toString('hex')],
  );
}

/** Makes every node hold the first one's key; returns the nodes whose key changed. */
export async function shareClusterKey(from: Queryable, to: readonly { readonly name: string; readonly sql: Queryable }[]): Promise<string[]> {
  const key = await readClusterKey(from);
  if (key === undefined) return [];
  const changed: string[] = [];
  for (const node of to) {
    const current = await readClusterKey(node.sql);
    if (current !== undefined && current.equals(key)) continue;
    await writeClusterKey(node.sql, key);
    changed.push(node.name);
  }
  return changed;
}
