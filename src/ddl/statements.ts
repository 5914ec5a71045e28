/**
 * Finds, in a captured query string, the DDL statement that fired the origin's event trigger, with PostgreSQL's own
 * parser (libpg-query: the server's grammar compiled to WebAssembly). A query string can hold several statements,
 * DML among them; only the DDL is replayed, the rows that the DML wrote arrive as row changes.
 *
 * Which statements count: those that fire ddl_command_end on the origin, i.e. the commands PostgreSQL runs through
 * ProcessUtilitySlow (src/backend/tcop/utility.c), with the same object-type exceptions (global objects and event
 * triggers fire nothing). The origin counts every top-level firing (src/ddl/capture-sql.ts), so this list and
 * PostgreSQL's must agree; the command tag the origin recorded is checked against the statement found.
 */
import { loadModule, parseSync, scanSync } from 'libpg-query';
import type { DdlMessage } from './ddl-message.ts';

/** Statement node types that always fire ddl_command_end. */
const DDL_NODES = new Set([
  'CreateSchemaStmt', 'CreateStmt', 'CreateForeignTableStmt', 'AlterTableStmt', 'AlterDomainStmt', 'DefineStmt',
  'IndexStmt', 'CreateExtensionStmt', 'AlterExtensionStmt', 'AlterExtensionContentsStmt', 'CreateFdwStmt',
  'AlterFdwStmt', 'CreateForeignServerStmt', 'AlterForeignServerStmt', 'CreateUserMappingStmt',
  'AlterUserMappingStmt', 'DropUserMappingStmt', 'ImportForeignSchemaStmt', 'CompositeTypeStmt', 'CreateEnumStmt',
  'CreateRangeStmt', 'AlterEnumStmt', 'ViewStmt', 'CreateFunctionStmt', 'AlterFunctionStmt', 'RuleStmt',
  'CreateSeqStmt', 'AlterSeqStmt', 'CreateTableAsStmt', 'RefreshMatViewStmt', 'CreateTrigStmt', 'CreatePLangStmt',
  'CreateDomainStmt', 'CreateConversionStmt', 'CreateCastStmt', 'CreateOpClassStmt', 'CreateOpFamilyStmt',
  'CreateTransformStmt', 'AlterOpFamilyStmt', 'AlterTSDictionaryStmt', 'AlterTSConfigurationStmt',
  'AlterTableMoveAllStmt', 'AlterObjectDependsStmt', 'DropOwnedStmt', 'AlterDefaultPrivilegesStmt',
  'CreatePolicyStmt', 'AlterPolicyStmt', 'CreateAmStmt', 'CreatePublicationStmt', 'AlterPublicationStmt',
  'CreateSubscriptionStmt', 'AlterSubscriptionStmt', 'DropSubscriptionStmt', 'AlterCollationStmt',
  'CreateStatsStmt', 'AlterStatsStmt',
]);

/** Statement node types that fire it unless their object type is a global object or an event trigger; the field naming that type. */
const DDL_NODES_BY_OBJECT_TYPE = new Map([
  ['DropStmt', 'removeType'],
  ['RenameStmt', 'renameType'],
  ['AlterObjectSchemaStmt', 'objectType'],
  ['AlterOwnerStmt', 'objectType'],
  ['CommentStmt', 'objtype'],
  ['GrantStmt', 'objtype'],
  ['SecLabelStmt', 'objtype'],
]);

/** EventTriggerSupportsObjectType (src/backend/commands/event_trigger.c) says no to these. */
const UNSUPPORTED_OBJECT_TYPES = new Set(['OBJECT_DATABASE', 'OBJECT_TABLESPACE', 'OBJECT_ROLE', 'OBJECT_PARAMETER_ACL', 'OBJECT_EVENT_TRIGGER']);

/** REINDEX fires event triggers from PostgreSQL 17 on. */
const REINDEX_FIRES_FROM = 170000;

export interface RawStatement {
  /** The node type of the parse tree (CreateStmt, InsertStmt, ...). */
  readonly kind: string;
  readonly node: Record<string, unknown>;
  readonly text: string;
}

export type DdlChoice =
  | { readonly ok: true; readonly statement: string; readonly rewritten: string | undefined }
  | { readonly ok: false; readonly problem: string };

let loaded: Promise<void> | undefined;

/** Loads the parser (WebAssembly) once; every other function here needs it loaded. */
export function loadParser(): Promise<void> {
  loaded ??= loadModule();
  return loaded;
}

/** Splits a query string into its statements (throws the parser's error for text it cannot parse). */
export function splitStatements(query: string): RawStatement[] {
  const bytes = Buffer.from(query, 'utf8');
  const result = parseSync(query);
  return (result.stmts ?? []).map((raw) => {
    // Locations are byte offsets into the UTF-8 text; a missing location is 0, a missing length runs to the end.
    const start = raw.stmt_location ?? 0;
    const end = raw.stmt_len === undefined || raw.stmt_len === 0 ? bytes.length : start + raw.stmt_len;
    const node = (raw.stmt ?? {}) as Record<string, unknown>;
    const kind = Object.keys(node)[0] ?? '';
    return { kind, node: (node[kind] ?? {}) as Record<string, unknown>, text: bytes.subarray(start, end).toString('utf8').trim() };
  });
}

/** Whether the statement fires ddl_command_end on a server of this version. */
export function firesDdlTrigger(statement: RawStatement, serverVersionNum: number): boolean {
  if (DDL_NODES.has(statement.kind)) return true;
  const typeField = DDL_NODES_BY_OBJECT_TYPE.get(statement.kind);
  if (typeField !== undefined) return !UNSUPPORTED_OBJECT_TYPES.has(String(statement.node[typeField]));
  // SELECT ... INTO is CREATE TABLE AS once analysed.
  if (statement.kind === 'SelectStmt') return statement.node.intoClause !== undefined;
  if (statement.kind === 'ReindexStmt') return serverVersionNum >= REINDEX_FIRES_FROM;
  return false;
}

/**
 * The statement to run on this node for a captured message: the message's DDL statement of its query string, with
 * CONCURRENTLY taken out (the apply session runs it inside the applied transaction, where a concurrent build is not
 * possible). Or why there is none.
 */
export async function chooseDdlStatement(message: DdlMessage): Promise<DdlChoice> {
  await loadParser();
  let statements: RawStatement[];
  try {
    statements = splitStatements(message.query);
  } catch (error) {
    return { ok: false, problem: `the query text does not parse here: ${(error as Error).message}` };
  }
  const ddl = statements.filter((s) => firesDdlTrigger(s, message.serverVersionNum));
  if (ddl.length === 0) return { ok: false, problem: `the query text holds no DDL statement, but the origin ran ${message.tag} from it` };
  // The same string run again with the same statement start counts on (see capture-sql.ts): it repeats its statements.
  const chosen = ddl[(message.ordinal - 1) % ddl.length] as RawStatement;
  const word = firstWord(chosen.text);
  const tagWord = message.tag.split(' ')[0] ?? '';
  const selectInto = chosen.kind === 'SelectStmt' && (message.tag === 'SELECT INTO' || message.tag === 'CREATE TABLE AS');
  if (word !== tagWord && !selectInto) {
    return {
      ok: false,
      problem: `DDL statement ${message.ordinal} of the query text is "${chosen.text.slice(0, 60)}", but the origin ran ${message.tag} (statements of the text rolled back on the origin shift the count)`,
    };
  }
  const rewritten = withoutConcurrently(chosen.text);
  return { ok: true, statement: rewritten ?? chosen.text, rewritten: rewritten === undefined ? undefined : 'without CONCURRENTLY' };
}

function firstWord(text: string): string {
  const token = scanSync(text).tokens[0];
  return token ? text.slice(token.start, token.end).toUpperCase() : '';
}

/**
 * The statement without CONCURRENTLY (CREATE INDEX, DROP INDEX, REINDEX, REFRESH MATERIALIZED VIEW), or undefined
 * when it has none. Token positions come from the server's scanner, so a CONCURRENTLY in a string or a quoted
 * name is never touched. Inside an option list (REINDEX (CONCURRENTLY) ...) it becomes CONCURRENTLY false.
 */
export function withoutConcurrently(text: string): string | undefined {
  const bytes = Buffer.from(text, 'utf8');
  const tokens = scanSync(text).tokens;
  const cuts: { start: number; end: number; replace: string }[] = [];
  tokens.forEach((token, i) => {
    // A keyword token (a quoted "concurrently" is an identifier, not a keyword).
    if (token.keywordKind === 0 || token.text.toUpperCase() !== 'CONCURRENTLY') return;
    const before = tokens[i - 1];
    const inOptions = before !== undefined && (before.tokenName === 'ASCII_40' || before.tokenName === 'ASCII_44');
    cuts.push({ start: token.start, end: token.end, replace: inOptions ? 'CONCURRENTLY false' : '' });
  });
  if (cuts.length === 0) return undefined;
  let out = '';
  let at = 0;
  for (const cut of cuts) {
    out += bytes.subarray(at, cut.start).toString('utf8') + cut.replace;
    at = cut.end;
  }
  return out + bytes.subarray(at).toString('utf8');
}
