/**
 * The membership row of a node (pgmesh.membership): joining, resyncing, member or removed, and the progress of its
 * copy. The transitions are in docs/design.md ("Membership states").
 */
import { isoTimestampSql } from '../core/pg-time.ts';
import type { Sql } from '../pg/connect.ts';

export type MembershipState = 'joining' | 'resyncing' | 'member' | 'removed';

export interface JoinProgress {
  readonly phase: string;
  readonly tablesDone: number;
  readonly tablesTotal: number;
  readonly rows: number;
  readonly bytes: number;
}

export interface Membership {
  readonly state: MembershipState;
  readonly source: string;
  readonly phase: string | null;
  readonly startedAt: string;
  readonly finishedAt: string | null;
  readonly updatedAt: string;
  readonly tablesTotal: number | null;
  readonly tablesDone: number;
  readonly rows: number;
  readonly bytes: number;
}

/** The node's membership row; undefined for a node made by "cluster create" (a member) or without a catalog. */
export async function readMembership(sql: Sql): Promise<Membership | undefined> {
  const exists = await sql.unsafe<{ ok: boolean }[]>(`SELECT to_regclass('pgmesh.membership') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return undefined;
  const rows = await sql.unsafe<
    {
      state: MembershipState;
      source: string;
      phase: string | null;
      started_at: string;
      finished_at: string | null;
      updated_at: string;
      tables_total: number | null;
      tables_done: number;
      rows_copied: string;
      bytes_copied: string;
    }[]
  >(
    `SELECT state, source, phase, ${isoTimestampSql('started_at')} AS started_at, ${isoTimestampSql('finished_at')} AS finished_at,
            ${isoTimestampSql('updated_at')} AS updated_at, tables_total, tables_done, rows_copied::text, bytes_copied::text
       FROM pgmesh.membership`,
  );
  const row = rows[0];
  if (!row) return undefined;
  return {
    state: row.state,
    source: row.source,
    phase: row.phase,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    updatedAt: row.updated_at,
    tablesTotal: row.tables_total,
    tablesDone: row.tables_done,
    rows: Number(row.rows_copied),
    bytes: Number(row.bytes_copied),
  };
}

export interface MembershipUpdate {
  readonly state?: MembershipState;
  readonly source?: string;
  readonly phase?: string;
  readonly tablesTotal?: number;
  readonly tablesDone?: number;
  readonly rows?: number;
  readonly bytes?: number;
  readonly finished?: boolean;
}

/**
 * Writes the membership row. With a source (starting a join, or marking a node without a row removed) the row is
 * written anew; other updates change only what they name.
 */
export async function setMembership(sql: Sql, update: MembershipUpdate): Promise<void> {
  if (update.source !== undefined && update.state !== undefined) {
    await sql.unsafe(
      `INSERT INTO pgmesh.membership (state, source, phase, tables_total) VALUES ($4, $1, $2, $3::text::int)
       ON CONFLICT (singleton) DO UPDATE SET state = EXCLUDED.state, source = EXCLUDED.source, phase = EXCLUDED.phase,
         tables_total = EXCLUDED.tables_total, tables_done = 0, rows_copied = 0, bytes_copied = 0,
         started_at = now(), finished_at = NULL, updated_at = now()`,
      [update.source, update.phase ?? null, update.tablesTotal === undefined ? null : String(update.tablesTotal), update.state],
    );
    return;
  }
  await sql.unsafe(
    `UPDATE pgmesh.membership SET
       state = coalesce($1, state), phase = coalesce($2, phase), tables_total = coalesce($3::text::int, tables_total),
       tables_done = coalesce($4::text::int, tables_done), rows_copied = coalesce($5::text::bigint, rows_copied),
       bytes_copied = coalesce($6::text::bigint, bytes_copied),
       finished_at = CASE WHEN $7::text = 'true' THEN now() ELSE finished_at END, updated_at = now()`,
    [
      update.state ?? null,
      update.phase ?? null,
      update.tablesTotal === undefined ? null : String(update.tablesTotal),
      update.tablesDone === undefined ? null : String(update.tablesDone),
      update.rows === undefined ? null : String(update.rows),
      update.bytes === undefined ? null : String(update.bytes),
      update.finished ? 'true' : 'false',
    ],
  );
}
