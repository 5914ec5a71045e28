/**
 * The apply side of pgmesh's logical messages: a peer's 'pgmesh.ddl' message becomes the statement the apply
 * session runs in the applied transaction, at the message's place among the row changes. pgmesh.apply_ddl
 * (src/ddl/capture-trust-sql.ts) runs the DDL as the origin's role with its search_path, keeps a failure in
 * pgmesh.exception without failing the transaction, and joins the tables the statement created.
 *
 * Every message with a pgmesh prefix is checked first (src/ddl/message-auth.ts): one that is not signed under the
 * cluster key, or that cannot be read, is never applied. It is kept in pgmesh.exception with what was wrong, and the
 * stream goes on: any role can write a message into the WAL, and one bad message must not stop a node's stream.
 */
import { errorMessage } from '../core/errors.ts';
import { SQLSTATE } from '../core/sqlstate.ts';
import { quoteLiteral } from '../pg/quote.ts';
import { DDL_MESSAGE_PREFIX } from './capture-sql.ts';
import { decodeDdlMessage, type DdlMessage } from './ddl-message.ts';
import { PGMESH_MESSAGE_PREFIX, type MessageKeys } from './message-auth.ts';
import { chooseDdlStatement } from './statements.ts';

export interface DdlApplyContext {
  readonly peer: string;
  /** The remote transaction's xid (its BEGIN's), which the message's signature covers. */
  readonly xid: number;
  /** The remote transaction's commit timestamp and final LSN, as the exception table keeps them. */
  readonly remoteTs: string;
  readonly remoteLsn: string;
}

export interface DdlApplyStatement {
  /** `SELECT pgmesh.apply_ddl(...)`, or the exception of a refused message, every value a literal (simple query). */
  readonly sql: string;
  /** The DDL statement that will run, or why none can (then the message goes to the exception table). */
  readonly statement: string | undefined;
  readonly problem: string | undefined;
  /** The message was refused (not signed, or unreadable): nothing of it runs, only its exception is recorded. */
  readonly refused: boolean;
}

/** How much of a refused message's content the exception keeps: enough to see what it was. */
const KEPT_CONTENT = 4096;

/** SQLSTATE of a refused message in pgmesh.exception. */
export const REFUSED_MESSAGE_SQLSTATE = SQLSTATE.refusedMessage;

/** Whether a logical message is pgmesh's (checked and acted on) rather than an application's (ignored). */
export function isPgmeshMessage(prefix: string): boolean {
  return prefix.startsWith(PGMESH_MESSAGE_PREFIX);
}

/**
 * What the apply session runs for a pgmesh message: the DDL, or the exception of a refused message; undefined for a
 * genuine marker (node add, node remove, ddl --lock), which only marks a position.
 */
export async function pgmeshMessageStatement(prefix: string, content: Buffer, ctx: DdlApplyContext, keys: MessageKeys): Promise<DdlApplyStatement | undefined> {
  const verified = await keys.verify(prefix, ctx.peer, ctx.xid, content);
  if (!verified.ok) return refused(prefix, content, verified.problem, ctx);
  if (prefix !== DDL_MESSAGE_PREFIX) return undefined;
  let message: DdlMessage;
  try {
    message = decodeDdlMessage(verified.body);
  } catch (error) {
    return refused(prefix, verified.body, errorMessage(error), ctx);
  }
  const choice = await chooseDdlStatement(message);
  const statement = choice.ok ? choice.statement : undefined;
  const problem = choice.ok ? undefined : choice.problem;
  const literal = (value: string | undefined) => (value === undefined ? 'NULL' : quoteLiteral(value));
  const sql =
    `SELECT pgmesh.apply_ddl(${quoteLiteral(ctx.peer)}, ${quoteLiteral(ctx.remoteTs)}::timestamptz, ${quoteLiteral(ctx.remoteLsn)}::pg_lsn, ` +
    `${literal(statement)}, ${literal(problem)}, ${quoteLiteral(jsonText(message.raw))}::jsonb) AS ddl_applied`;
  return { sql, statement, problem, refused: false };
}

function refused(prefix: string, content: Buffer, problem: string, ctx: DdlApplyContext): DdlApplyStatement {
  const text = content.subarray(0, KEPT_CONTENT).toString('utf8');
  const change = { prefix, content: text, truncated: content.length > KEPT_CONTENT };
  const sql =
    `INSERT INTO pgmesh.exception (peer, relation, change_kind, change, remote_ts, remote_commit_lsn, sqlstate, error) VALUES (` +
    `${quoteLiteral(ctx.peer)}, NULL, 'message', ${quoteLiteral(jsonText(change))}::jsonb, ${quoteLiteral(ctx.remoteTs)}::timestamptz, ` +
    `${quoteLiteral(ctx.remoteLsn)}::pg_lsn, '${REFUSED_MESSAGE_SQLSTATE}', ${quoteLiteral(`refused, not applied: ${problem.replaceAll('\0', '\ufffd')}`)})`;
  return { sql, statement: undefined, problem, refused: true };
}

/** JSON for jsonb: NUL (which jsonb cannot hold, and a literal cannot carry) becomes U+FFFD. */
function jsonText(value: unknown): string {
  return JSON.stringify(value).replaceAll('\\u0000', '\\ufffd');
}
