/**
 * The statements of one apply session: built once per table binding and shape (statement-builder.ts,
 * unique-resolution.ts), prepared once in the session, and sent as `EXECUTE name(literals)`. Also which tables
 * take the full statements for a while after a fast-path miss there.
 */
import { PgmeshError } from '../core/errors.ts';
import { quoteLiteral } from '../pg/quote.ts';
import type { ConflictPolicy, DeferredUnique, RelationBinding } from './local-relation.ts';
import type { RowOp } from './row-ops.ts';
import {
  buildDeferredUniqueCheck,
  buildFastStatement,
  buildStatement,
  valueParameterCount,
  type StatementContext,
} from './statement-builder.ts';
import { buildUniqueClaimCheck, buildUniqueResolution, needsUniqueResolution } from './unique-resolution.ts';
import { buildKeyLock, type KeyLock, type KeyLockMode } from './key-lock.ts';

/** After a fast-path miss on a table, its changes take the full statements for this long. */
const SLOW_TABLE_MS = 10_000;

export class StatementCatalog {
  /** Full statements, checks and locks by key (kind, table, policy, shape). */
  private readonly statements = new Map<string, string>();
  /** Key lock statements (key-lock.ts) by table, kind and mode. */
  private readonly keyLocks = new Map<string, KeyLock>();
  /** Fast-path statements by binding, then by shape (kind, insert or update, rows, finishing; value positions). */
  private readonly fastStatements = new WeakMap<RelationBinding, Map<string, { text: string; timestamp: boolean } | undefined>>();
  /** Statements prepared in the session: text -> name. */
  private readonly prepared = new Map<string, string>();
  private preparedCount = 0;
  /** Tables whose changes take the full statements until the given time (a fast-path miss happened there). */
  private readonly slowTables = new Map<number, number>();

  /**
   * @param prepare sends `PREPARE name AS text` to the session (in a message of its own, ahead of the EXECUTE)
   */
  constructor(
    private readonly ctx: StatementContext,
    private readonly prepare: (name: string, text: string) => void,
  ) {}

  statementFor(op: RowOp, multiRow: boolean, policy: ConflictPolicy): string {
    const binding = op.binding;
    const key = `${op.kind}:${binding.local.qualified}:${policy}:${binding.deltaPositions.join(',')}:${op.valuePositions.join(',')}:${multiRow ? 'm' : 's'}${unchangedKey(op)}:${uniqueKey(binding)}`;
    let text = this.statements.get(key);
    if (!text) {
      const shape = { kind: op.kind, binding, valuePositions: op.valuePositions, multiRow, unchangedPositions: op.unchangedPositions };
      if (valueParameterCount(shape) !== op.values.length) throw new PgmeshError('INTERNAL', `parameter count mismatch for ${key}`);
      text = buildStatement(shape, this.ctx, policy);
      this.statements.set(key, text);
    }
    return text;
  }

  /** The unique-key resolution that runs before the apply statement of a batch like op's, if its table needs one. */
  resolutionFor(op: RowOp, multiRow: boolean, policy: ConflictPolicy): string | undefined {
    const binding = op.binding;
    if (binding.local.uniqueIndexes.length === 0) return undefined;
    const key = `resolve:${op.kind}:${binding.local.qualified}:${policy}:${binding.deltaPositions.join(',')}:${op.valuePositions.join(',')}:${multiRow ? 'm' : 's'}:${uniqueKey(binding)}`;
    if (this.statements.has(key)) return this.statements.get(key) || undefined;
    const shape = { kind: op.kind, binding, valuePositions: op.valuePositions, multiRow };
    const text = needsUniqueResolution(shape) ? buildUniqueResolution(shape, this.ctx, policy) : '';
    this.statements.set(key, text);
    return text || undefined;
  }

  claimCheckFor(binding: RelationBinding): string {
    return this.cached(`claims:${binding.local.qualified}:${uniqueKey(binding)}`, () => buildUniqueClaimCheck(binding, this.ctx));
  }

  deferredCheckFor(binding: RelationBinding, index: DeferredUnique): string {
    return this.cached(`deferred:${binding.local.qualified}:${index.name}:${index.columns.join(',')}`, () => buildDeferredUniqueCheck(binding, index));
  }

  /**
   * The statement that locks a batch's keys before its statements read anything (see key-lock.ts), with its
   * parameters; for upserts of the full path (`rows`) it locks their local rows too.
   */
  keyLockFor(op: RowOp, multiRow: boolean, params: readonly (string | null)[], mode: KeyLockMode, rows: boolean): { text: string; params: (string | null)[] } {
    const rowLocks = rows && op.kind === 'upsert';
    const key = `lock:${op.kind}:${op.binding.local.qualified}:${mode}:${rowLocks ? 'r' : ''}:${op.valuePositions.join(',')}:${multiRow ? 'm' : 's'}:${uniqueKey(op.binding)}`;
    let lock = this.keyLocks.get(key);
    if (!lock) {
      lock = buildKeyLock({ kind: op.kind, binding: op.binding, valuePositions: op.valuePositions, multiRow }, mode, rowLocks);
      this.keyLocks.set(key, lock);
    }
    return { text: lock.text, params: lock.parameters.map((i) => params[i] ?? null) };
  }

  /** The fast-path statement for a batch like op's; undefined when its table takes the full statements for now. */
  fastStatementFor(op: RowOp, multiRow: boolean, finishing: boolean): { text: string; timestamp: boolean } | undefined {
    const binding = op.binding;
    const slowUntil = this.slowTables.get(binding.local.oid);
    if (slowUntil !== undefined) {
      if (slowUntil > Date.now()) return undefined;
      this.slowTables.delete(binding.local.oid);
    }
    const upsertOp = op.kind === 'upsert' ? (op.values.at(-1) as 'i' | 'u') : undefined;
    // An upsert sends every column (its positions are the same for every row of a binding); other kinds vary.
    const key = `${op.kind}:${upsertOp ?? ''}:${multiRow ? 'm' : 's'}:${finishing ? 'f' : ''}${op.kind === 'upsert' ? '' : `:${op.valuePositions.join(',')}`}${unchangedKey(op)}`;
    let cache = this.fastStatements.get(binding);
    if (!cache) {
      cache = new Map();
      this.fastStatements.set(binding, cache);
    }
    if (cache.has(key)) return cache.get(key);
    const shape = { kind: op.kind, binding, valuePositions: op.valuePositions, multiRow, unchangedPositions: op.unchangedPositions };
    const fast = buildFastStatement(shape, this.ctx, upsertOp, finishing);
    cache.set(key, fast);
    return fast;
  }

  /** A fast-path miss on this table (by OID): its changes take the full statements for a while. */
  markSlow(tableOid: number): void {
    this.slowTables.set(tableOid, Date.now() + SLOW_TABLE_MS);
  }

  /** `EXECUTE name(literals)` of a statement prepared in this session (prepared first, in a message before it). */
  execute(text: string, params: readonly (string | null)[]): string {
    let name = this.prepared.get(text);
    if (name === undefined) {
      name = `pgmesh_${++this.preparedCount}`;
      this.prepared.set(text, name);
      // A message of its own: the server keeps the whole text of the message a PREPARE came in as the statement's
      // source, and copies that source into every EXECUTE's portal. Inside a message of many transactions (up to
      // MESSAGE_BYTES) that copy was a fifth of the apply backend's time on one-row updates (perf).
      this.prepare(name, text);
    }
    // Joined rather than appended one by one: a chain of appends is a rope of small strings that lives (and is
    // copied by the garbage collector) until the message is sent.
    const literals = new Array<string>(params.length);
    for (let i = 0; i < params.length; i++) {
      const p = params[i];
      literals[i] = p === null || p === undefined ? 'NULL' : quoteLiteral(p);
    }
    return literals.length > 0 ? `EXECUTE ${name}(${literals.join(', ')})` : `EXECUTE ${name}`;
  }

  /** After a failure: forgets the statements whose PREPARE did not run (it was in a message that failed before it). */
  keepPrepared(present: ReadonlySet<string>): void {
    for (const [text, name] of this.prepared) if (!present.has(name)) this.prepared.delete(text);
  }

  /** A table has a new binding (its columns may have other names, by DDL): its statements are built again. */
  forgetTable(qualified: string): void {
    for (const key of this.statements.keys()) if (key.includes(`:${qualified}:`)) this.statements.delete(key);
    for (const key of this.keyLocks.keys()) if (key.includes(`:${qualified}:`)) this.keyLocks.delete(key);
  }

  /** After DDL: every statement is built again. */
  forgetAll(): void {
    this.statements.clear();
    this.keyLocks.clear();
  }

  private cached(key: string, build: () => string): string {
    let text = this.statements.get(key);
    if (!text) {
      text = build();
      this.statements.set(key, text);
    }
    return text;
  }
}

/** The part of a statement's cache key that names the values an update left unchanged (none, for most rows). */
function unchangedKey(op: RowOp): string {
  return op.unchangedPositions.length > 0 ? `:u${op.unchangedPositions.join(',')}` : '';
}

/** The unique indexes a binding's statements were built for (they name the indexes' OIDs). */
function uniqueKey(binding: RelationBinding): string {
  return binding.local.uniqueIndexes.map((index) => `${index.oid}(${index.columns.join(',')})`).join(';');
}
