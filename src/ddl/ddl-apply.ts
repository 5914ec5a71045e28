/**
 * The apply side of DDL replication: turns a peer's 'pgmesh.ddl' message into the statement the apply session runs
 * in the applied transaction, at the message's place among the row changes. pgmesh.apply_ddl (capture-sql.ts) runs
 * the DDL as the origin's role with its search_path, keeps a failure in pgmesh.exception without failing the
 * transaction, and joins the tables the origin joined.
 */
import { quoteLiteral } from '../pg/quote.ts';
import { decodeDdlMessage } from './ddl-message.ts';
import { chooseDdlStatement } from './statements.ts';

export interface DdlApplyContext {
  readonly peer: string;
  /** The remote transaction's commit timestamp and final LSN, as the exception table keeps them. */
  readonly remoteTs: string;
  readonly remoteLsn: string;
}

export interface DdlApplyStatement {
  /** `SELECT pgmesh.apply_ddl(...)` with every value as a literal (it goes into a simple-query message). */
  readonly sql: string;
  /** The DDL statement that will run, or why none can (then the message goes to the exception table). */
  readonly statement: string | undefined;
  readonly problem: string | undefined;
}

export async function ddlApplyStatement(content: Buffer, ctx: DdlApplyContext): Promise<DdlApplyStatement> {
  const message = decodeDdlMessage(content);
  const choice = await chooseDdlStatement(message);
  const statement = choice.ok ? choice.statement : undefined;
  const problem = choice.ok ? undefined : choice.problem;
  const literal = (value: string | undefined) => (value === undefined ? 'NULL' : quoteLiteral(value));
  const sql =
    `SELECT pgmesh.apply_ddl(${quoteLiteral(ctx.peer)}, ${quoteLiteral(ctx.remoteTs)}::timestamptz, ${quoteLiteral(ctx.remoteLsn)}::pg_lsn, ` +
    `${literal(statement)}, ${literal(problem)}, ${quoteLiteral(JSON.stringify(message.raw))}::jsonb) AS ddl_applied`;
  return { sql, statement, problem };
}

/** Whether a logical message is a DDL message of pgmesh. */
export { DDL_MESSAGE_PREFIX } from './capture-sql.ts';
