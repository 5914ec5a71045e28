/**
 * Checks a server's settings against what pgmesh needs, and says for each problem exactly what to change.
 * Every problem is reported at once, not one per attempt.
 */
import type { Sql } from '../pg/connect.ts';
import { textArrayLiteral } from '../pg/text-array.ts';

export interface SettingProblem {
  readonly setting: string;
  readonly actual: string;
  readonly required: string;
  readonly fix: string;
}

export interface ServerFacts {
  readonly versionNum: number;
  readonly major: number;
  readonly isSuperuser: boolean;
  /** The role of the connection: the one the agent runs as when it uses the same connection string. */
  readonly currentUser: string;
  readonly settings: Readonly<Record<string, string>>;
}

const SETTINGS = [
  'wal_level',
  'track_commit_timestamp',
  'max_replication_slots',
  'max_wal_senders',
  'server_encoding',
  'max_slot_wal_keep_size',
] as const;

export async function readServerFacts(sql: Sql): Promise<ServerFacts> {
  const rows = await sql.unsafe<{ name: string; setting: string }[]>(
    `SELECT name, setting FROM pg_catalog.pg_settings
      WHERE name = ANY($1::text[]) OR name IN ('server_version_num', 'max_active_replication_origins', 'is_superuser')`,
    [textArrayLiteral([...SETTINGS])],
  );
  const settings: Record<string, string> = {};
  for (const row of rows) settings[row.name] = row.setting;
  const superuser = await sql.unsafe<{ su: boolean; who: string }[]>(
    `SELECT rolsuper AS su, rolname AS who FROM pg_catalog.pg_roles WHERE rolname = current_user`,
  );
  const versionNum = Number(settings.server_version_num ?? 0);
  return { versionNum, major: Math.floor(versionNum / 10000), isSuperuser: superuser[0]?.su === true, currentUser: superuser[0]?.who ?? '', settings };
}

/**
 * @param peerCount how many other nodes this node will stream to and from
 */
export function checkServerFacts(facts: ServerFacts, peerCount: number): SettingProblem[] {
  const problems: SettingProblem[] = [];
  const s = facts.settings;
  const restart = 'and restart the server';
  if (facts.major < 16) {
    problems.push({
      setting: 'server_version',
      actual: String(facts.versionNum),
      required: '16, 17 or 18',
      fix: 'pgmesh needs PostgreSQL 16 or newer (origin filtering and protocol version 4); upgrade the server',
    });
  }
  if (s.wal_level !== 'logical') {
    problems.push({
      setting: 'wal_level',
      actual: s.wal_level ?? '?',
      required: 'logical',
      fix: `set wal_level = logical (ALTER SYSTEM SET wal_level = 'logical') ${restart}`,
    });
  }
  if (s.track_commit_timestamp !== 'on') {
    problems.push({
      setting: 'track_commit_timestamp',
      actual: s.track_commit_timestamp ?? '?',
      required: 'on',
      fix: `set track_commit_timestamp = on (ALTER SYSTEM SET track_commit_timestamp = on) ${restart}; last-update-wins needs commit timestamps`,
    });
  }
  if (s.server_encoding !== 'UTF8') {
    problems.push({
      setting: 'server_encoding',
      actual: s.server_encoding ?? '?',
      required: 'UTF8',
      fix: 'pgmesh replicates text in UTF-8; create the database with ENCODING UTF8',
    });
  }
  // One slot per peer that streams from this node and one origin per peer this node applies from, plus one of each
  // spare for a joining node, and the slot that keeps row versions (docs/design.md, "Row versions"). Slots and origins
  // are separate pools: up to 17 each pool is max_replication_slots entries (2 slots and 2 origins fit in
  // max_replication_slots = 2); 18 sizes origins by max_active_replication_origins.
  const slotsNeeded = peerCount + 2;
  const originsNeeded = peerCount + 1;
  const slots = Number(s.max_replication_slots ?? 0);
  const slotsLimitNeeded = facts.major >= 18 ? slotsNeeded : Math.max(slotsNeeded, originsNeeded);
  if (slots < slotsLimitNeeded) {
    problems.push({
      setting: 'max_replication_slots',
      actual: String(slots),
      required: `>= ${slotsLimitNeeded}`,
      fix:
        `set max_replication_slots = ${Math.max(slotsLimitNeeded, 10)} (ALTER SYSTEM SET max_replication_slots = ${Math.max(slotsLimitNeeded, 10)}) ${restart}` +
        (facts.major >= 18 ? '' : ` (on PostgreSQL ${facts.major} it also limits replication origins)`),
    });
  }
  const senders = Number(s.max_wal_senders ?? 0);
  if (senders < peerCount + 1) {
    problems.push({
      setting: 'max_wal_senders',
      actual: String(senders),
      required: `>= ${peerCount + 1}`,
      fix: `set max_wal_senders = ${Math.max(peerCount + 1, 10)} (ALTER SYSTEM SET max_wal_senders = ${Math.max(peerCount + 1, 10)}) ${restart}`,
    });
  }
  if (facts.major >= 18) {
    const origins = Number(s.max_active_replication_origins ?? 0);
    if (origins < originsNeeded) {
      problems.push({
        setting: 'max_active_replication_origins',
        actual: String(origins),
        required: `>= ${originsNeeded}`,
        fix: `set max_active_replication_origins = ${Math.max(originsNeeded, 10)} (ALTER SYSTEM SET max_active_replication_origins = ${Math.max(originsNeeded, 10)}) ${restart}`,
      });
    }
  }
  return problems;
}

/**
 * Settings that work but that an operator should know about: said by `pgmesh check` and logged by the agent at
 * start, never a reason to refuse.
 */
export function serverWarnings(facts: ServerFacts): string[] {
  const warnings: string[] = [];
  if (facts.settings.max_slot_wal_keep_size === '-1') {
    warnings.push(
      'max_slot_wal_keep_size = -1 (unlimited): while a peer is down, its slot on this node keeps every WAL file, until the disk is full; ' +
        "set a limit that covers the longest outage to ride out (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf()). " +
        'A peer that falls behind it needs a resync, which its agent reports',
    );
  }
  return warnings;
}

export function formatProblems(node: string, problems: readonly SettingProblem[]): string {
  return problems.map((p) => `node ${node} has ${p.setting}=${p.actual} (needs ${p.required}): ${p.fix}`).join('\n');
}
