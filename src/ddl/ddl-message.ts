/**
 * The body of a 'pgmesh.ddl' logical message, as pgmesh.ddl_command_end writes it (src/ddl/capture-trust-sql.ts):
 * one JSON object per DDL statement run by a local session on the origin, after the signature that
 * src/ddl/message-auth.ts checks. Version 2: the statements of the query string that may be DDL, not the string.
 */
import { PgmeshError } from '../core/errors.ts';

export interface DdlMessage {
  readonly version: 2;
  /** The statements of the client's query string that may be DDL (statements that cannot are left out at the origin). */
  readonly statements: readonly string[];
  /** The statements as one text, for the parser. */
  readonly query: string;
  /** Which DDL statement of the query string fired the trigger, from 1. */
  readonly ordinal: number;
  /** The command tag of that statement (CREATE TABLE, ALTER TABLE, ...). */
  readonly tag: string;
  readonly searchPath: string;
  /** The role that ran it (after SET ROLE), which runs it on every other node too. */
  readonly role: string;
  /** server_version_num of the origin: which statements fire event triggers depends on it. */
  readonly serverVersionNum: number;
  /** The objects it created or altered, as pg_event_trigger_ddl_commands names them (empty for drops). */
  readonly commands: readonly { readonly tag: string; readonly type: string; readonly identity: string | null }[];
  /** Tables the origin made join replication, by identity (schema.name, quoted as needed). */
  readonly joined: readonly string[];
  /** The raw object, as stored with an exception. */
  readonly raw: Record<string, unknown>;
}

export function decodeDdlMessage(content: Buffer): DdlMessage {
  let raw: unknown;
  try {
    raw = JSON.parse(content.toString('utf8'));
  } catch (error) {
    throw new PgmeshError('PROTOCOL', `a pgmesh.ddl message is not JSON: ${(error as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new PgmeshError('PROTOCOL', 'a pgmesh.ddl message is not a JSON object');
  const o = raw as Record<string, unknown>;
  if (o.version !== 2) {
    throw new PgmeshError('PROTOCOL', `a pgmesh.ddl message has version ${String(o.version)}; this pgmesh reads version 2: upgrade pgmesh on every node`);
  }
  const text = (key: string): string => {
    const value = o[key];
    if (typeof value !== 'string') throw new PgmeshError('PROTOCOL', `a pgmesh.ddl message has no text "${key}"`);
    return value;
  };
  const int = (key: string): number => {
    const value = o[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw new PgmeshError('PROTOCOL', `a pgmesh.ddl message has no positive integer "${key}"`);
    return value;
  };
  const list = (key: string): unknown[] => {
    const value = o[key];
    if (!Array.isArray(value)) throw new PgmeshError('PROTOCOL', `a pgmesh.ddl message has no array "${key}"`);
    return value;
  };
  const commands = list('commands').map((c) => {
    const item = (typeof c === 'object' && c !== null ? c : {}) as Record<string, unknown>;
    return {
      tag: typeof item.tag === 'string' ? item.tag : '',
      type: typeof item.type === 'string' ? item.type : '',
      identity: typeof item.identity === 'string' ? item.identity : null,
    };
  });
  const joined = list('joined').map((j) => {
    if (typeof j !== 'string') throw new PgmeshError('PROTOCOL', 'a pgmesh.ddl message names a joined table that is not text');
    return j;
  });
  const statements = list('statements').map((t) => {
    if (typeof t !== 'string') throw new PgmeshError('PROTOCOL', 'a pgmesh.ddl message has a statement that is not text');
    return t;
  });
  return {
    version: 2,
    statements,
    // A newline first: a statement may end in a line comment.
    query: statements.join('\n;\n'),
    ordinal: int('ordinal'),
    tag: text('tag'),
    searchPath: text('search_path'),
    role: text('role'),
    serverVersionNum: int('server_version_num'),
    commands,
    joined,
    raw: o,
  };
}
