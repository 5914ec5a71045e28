/**
 * What a node's schema looks like, as lines that compare equal across nodes when the schemas are the same: the
 * user's tables and their columns, indexes, constraints, enum values, views, functions' signatures, and which
 * tables pgmesh replicates. Object identifiers (OIDs) and pgmesh's own catalog are left out: they differ per node.
 * Used to check that replicated DDL left every node alike, and for a fingerprint per node.
 */
import { createHash } from 'node:crypto';
import type { Sql } from '../pg/connect.ts';

export interface SchemaDump {
  /** Section name -> sorted lines. */
  readonly sections: Readonly<Record<string, readonly string[]>>;
}

const USER_SCHEMA = `n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgmesh') AND n.nspname NOT LIKE 'pg\\_%'`;

const SECTIONS: Readonly<Record<string, string>> = {
  relations: `SELECT format('%I.%I %s', n.nspname, c.relname, c.relkind) AS line
                FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE ${USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')`,
  columns: `SELECT format('%I.%I.%I %s%s%s', n.nspname, c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                          CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                          coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')) AS line
              FROM pg_catalog.pg_attribute a
              JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE ${USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped`,
  indexes: `SELECT pg_catalog.pg_get_indexdef(i.indexrelid) AS line
              FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE ${USER_SCHEMA}`,
  constraints: `SELECT format('%I.%I %I %s', n.nspname, c.relname, k.conname, pg_catalog.pg_get_constraintdef(k.oid)) AS line
                  FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE ${USER_SCHEMA}`,
  enums: `SELECT format('%s %s %s', e.enumtypid::regtype, e.enumsortorder, e.enumlabel) AS line
            FROM pg_catalog.pg_enum e JOIN pg_catalog.pg_type t ON t.oid = e.enumtypid
            JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE ${USER_SCHEMA}`,
  views: `SELECT format('%I.%I %s', n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid)) AS line
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE ${USER_SCHEMA} AND c.relkind IN ('v', 'm')`,
  functions: `SELECT format('%s %s', p.oid::regprocedure, md5(p.prosrc)) AS line
                FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE ${USER_SCHEMA}`,
  triggers: `SELECT format('%I.%I %s', n.nspname, c.relname, pg_catalog.pg_get_triggerdef(t.oid)) AS line
               FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE ${USER_SCHEMA} AND NOT t.tgisinternal`,
  replicated: `SELECT format('%I.%I', schemaname, tablename) AS line FROM pg_catalog.pg_publication_tables WHERE pubname = 'pgmesh'`,
};

export async function readSchemaDump(sql: Sql): Promise<SchemaDump> {
  const sections: Record<string, string[]> = {};
  for (const [name, query] of Object.entries(SECTIONS)) {
    const rows = await sql.unsafe<{ line: string }[]>(`SELECT line FROM (${query}) s ORDER BY line COLLATE "C"`);
    sections[name] = rows.map((r) => r.line);
  }
  return { sections };
}

/** A short hash of the dump: equal on nodes whose schemas are alike. */
export function schemaFingerprint(dump: SchemaDump): string {
  const hash = createHash('sha256');
  for (const [name, lines] of Object.entries(dump.sections)) hash.update(`${name}\n${lines.join('\n')}\n`);
  return hash.digest('hex').slice(0, 16);
}

/** A line of a schema dump that not every node has. */
export interface SchemaDifference {
  readonly section: string;
  readonly line: string;
  readonly presentOn: readonly string[];
  readonly missingOn: readonly string[];
}

/** What differs between the nodes' dumps (empty when all are alike), by section and line. */
export function diffSchemaDumps(dumps: ReadonlyMap<string, SchemaDump>): SchemaDifference[] {
  const nodes = [...dumps.keys()];
  const sections = new Set([...dumps.values()].flatMap((d) => Object.keys(d.sections)));
  const differences: SchemaDifference[] = [];
  for (const section of sections) {
    const holders = new Map<string, string[]>();
    for (const [node, dump] of dumps) for (const line of dump.sections[section] ?? []) holders.set(line, [...(holders.get(line) ?? []), node]);
    for (const [line, presentOn] of [...holders].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (presentOn.length === nodes.length) continue;
      differences.push({ section, line, presentOn, missingOn: nodes.filter((n) => !presentOn.includes(n)) });
    }
  }
  return differences;
}

/** The differences as an operator reads them, one line each. */
export function formatSchemaDifferences(differences: readonly SchemaDifference[]): string[] {
  return differences.map((d) => `${d.section}: ${d.line}  (on ${d.presentOn.join(', ')}; missing on ${d.missingOn.join(', ')})`);
}
