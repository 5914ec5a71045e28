/**
 * The local tables that a peer's relations are bound to (columns, key, policies: local-relation.ts), read on the
 * catalog connection (on the apply session after DDL in the transaction, which only it sees) and trusted for
 * BINDING_TTL_MS. A peer's table or columns that this node lacks are waited for (awaitSchema), then bound without.
 */
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { Sql } from '../pg/connect.ts';
import type { RelationMessage } from '../protocol/messages.ts';
import { reduceRelation, type Reduction } from '../ddl/schema-drift.ts';
import { bindRelation, loadLocalRelation, type RelationBinding } from './local-relation.ts';
import type { StatementCatalog } from './statement-catalog.ts';

/** How long a relation's binding (columns, policies) is trusted before it is read again. */
const BINDING_TTL_MS = 5_000;

export interface RelationBindingsOptions {
  readonly peer: string;
  readonly localNode: string;
  readonly logger: Logger;
  /** How long a table or columns a peer sends and this node lacks are waited for; by table and columns, when first seen. */
  readonly schemaWait?: { readonly firstSeen: Map<string, number>; readonly waitMs: number } | undefined;
}

export class RelationBindings {
  private readonly bindings = new Map<RelationMessage, { binding: RelationBinding; at: number }>();
  /** Bindings of peer relations with columns this node lacks: bound without them (see Applier.opsOf). */
  private readonly reductions = new WeakMap<RelationBinding, Reduction>();

  constructor(
    private readonly catalog: Sql,
    private readonly session: Sql,
    private readonly statements: StatementCatalog,
    private readonly options: RelationBindingsOptions,
  ) {}

  /** The binding, if read less than BINDING_TTL_MS ago (no wait: most changes need no look-up). */
  fresh(relation: RelationMessage): RelationBinding | undefined {
    const cached = this.bindings.get(relation);
    return cached && Date.now() - cached.at < BINDING_TTL_MS ? cached.binding : undefined;
  }

  reductionOf(binding: RelationBinding): Reduction | undefined {
    return this.reductions.get(binding);
  }

  /** After DDL: every table is read again. */
  forget(): void {
    this.bindings.clear();
  }

  /**
   * A peer sends a table or columns this node does not have. Most often the DDL that made them is on its way on
   * another peer's stream (n1 adds a column, n3 writes into it, and n3's rows reach n2 before n1's DDL does): the
   * stream stops and is tried again (the session's transaction rolls back, so the DDL is not kept waiting on its
   * locks) until the schema arrives, for up to schemaWait.waitMs from the first time. After that the table or
   * columns are taken as gone here (dropped or renamed locally): the change goes on without them, and what it loses
   * goes to the exception table. When DDL here took them away (pgmesh.ddl_log, src/ddl/ddl-lock-sql.ts), this
   * node is ahead of the peer, not behind: that happens at once, without waiting.
   */
  private async awaitSchema(relation: RelationMessage, missingColumns: readonly string[] | undefined, inSession: boolean): Promise<void> {
    const wait = this.options.schemaWait;
    if (!wait) return;
    if (await this.goneHere(relation, missingColumns, inSession)) return;
    const what = missingColumns ? `column${missingColumns.length > 1 ? 's' : ''} ${missingColumns.join(', ')} of table ${relation.schema}.${relation.name}` : `table ${relation.schema}.${relation.name}`;
    const key = `${relation.schema}.${relation.name}:${missingColumns?.join(',') ?? ''}`;
    const now = Date.now();
    const first = wait.firstSeen.get(key) ?? now;
    wait.firstSeen.set(key, first);
    if (now - first >= wait.waitMs) return;
    throw new PgmeshError(
      'SCHEMA_MISMATCH',
      `peer ${this.options.peer} sends ${what}, which ${missingColumns ? 'do' : 'does'} not exist on ${this.options.localNode} yet; waiting for the schema change to arrive (up to ${Math.round(wait.waitMs / 1000)} s, then applied without ${missingColumns ? 'them' : 'it'} and kept in the exception table)`,
      { context: { peer: this.options.peer, relation: `${relation.schema}.${relation.name}`, waitingForSchema: true } },
    );
  }

  /** Whether DDL on this node dropped or renamed the table (no columns given) or every one of the columns. */
  private async goneHere(relation: RelationMessage, missingColumns: readonly string[] | undefined, inSession: boolean): Promise<boolean> {
    const names = missingColumns ?? [''];
    // DDL applied in this transaction is seen by the apply session only.
    const rows = await (inSession ? this.session : this.catalog).unsafe<{ n: number }[]>(
      `SELECT count(*)::int AS n FROM pgmesh.ddl_log
        WHERE schema_name = $1 AND table_name = $2 AND column_name IN (SELECT pg_catalog.jsonb_array_elements_text($3::text::jsonb))`,
      [relation.schema, relation.name, JSON.stringify(names)],
    );
    return rows[0]?.n === names.length;
  }

  async bind(relation: RelationMessage, inSession: boolean): Promise<RelationBinding> {
    const cached = this.bindings.get(relation);
    if (cached && Date.now() - cached.at < BINDING_TTL_MS) return cached.binding;
    // After DDL in the transaction, only the apply session sees the tables as they are now.
    const local = await loadLocalRelation(inSession ? this.session : this.catalog, relation.schema, relation.name);
    if (!local) {
      await this.awaitSchema(relation, undefined, inSession);
      throw new PgmeshError(
        'UNKNOWN_TABLE',
        `peer ${this.options.peer} sends changes for table ${relation.schema}.${relation.name}, which does not exist on ${this.options.localNode}; create it there with the same columns and primary key`,
        { context: { peer: this.options.peer, relation: `${relation.schema}.${relation.name}` } },
      );
    }
    const reduction = reduceRelation(relation, new Set(local.columns.keys()));
    if (reduction) await this.awaitSchema(relation, reduction.missing, inSession);
    const binding = bindRelation(reduction?.relation ?? relation, local, { peer: this.options.peer, node: this.options.localNode });
    if (reduction) this.reductions.set(binding, reduction);
    if (!cached && relation.replicaIdentity !== 'f') {
      // Its updates that leave an out-of-line value unchanged cannot be applied whole (row-ops.ts).
      this.options.logger.warn(
        { peer: this.options.peer, relation: local.qualified, replicaIdentity: relation.replicaIdentity },
        `table ${local.qualified} is not REPLICA IDENTITY FULL on ${this.options.peer}; run "pgmesh tables add ${local.schema}.${local.name}" so that every node converges on its out-of-line values`,
      );
    }
    // A binding is replaced only when something in it changed, so batches keep their identity.
    const same = cached && JSON.stringify({ ...cached.binding.local, columns: [...cached.binding.local.columns] }) === JSON.stringify({ ...local, columns: [...local.columns] });
    const kept = same && cached ? cached.binding : binding;
    // A new binding of the table may have other column names (a column renamed here or on the peer, by DDL): the
    // statements built for the table are built again.
    if (kept === binding) this.statements.forgetTable(local.qualified);
    this.bindings.set(relation, { binding: kept, at: Date.now() });
    return kept;
  }
}
