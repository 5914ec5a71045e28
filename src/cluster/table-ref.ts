/** A table named by schema and name, and why one is not replicated (node-admin.ts adds tables, sequences.ts checks theirs). */
export interface TableRef {
  readonly schema: string;
  readonly name: string;
}

export interface TableRefusal extends TableRef {
  readonly problem: 'missing' | 'not_a_table' | 'not_logged' | 'no_primary_key' | 'refused_elsewhere' | 'sequence';
  /** What is wrong and what to do, for the user. */
  readonly reason: string;
}
