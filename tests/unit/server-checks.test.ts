/**
 * checkServerFacts on synthetic facts: what each major needs for a given number of peers, and that every problem
 * comes with the exact change to make. (The slot/origin arithmetic was checked against real 16, 17 and 18 servers:
 * with max_replication_slots = 2, two logical slots and two replication origins with progress fit at once and a
 * third of either fails, so slots and origins are separate pools of that size up to 17.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkServerFacts, formatProblems, serverWarnings, type ServerFacts } from '../../src/cluster/server-checks.ts';

type Major = 16 | 17 | 18;
const MAJORS: readonly Major[] = [16, 17, 18];

function facts(major: number, settings: Record<string, string | undefined> = {}): ServerFacts {
  const base: Record<string, string> = {
    wal_level: 'logical',
    track_commit_timestamp: 'on',
    max_replication_slots: '10',
    max_wal_senders: '10',
    server_encoding: 'UTF8',
    max_slot_wal_keep_size: '-1',
    server_version_num: String(major * 10000 + 2),
  };
  if (major >= 18) base.max_active_replication_origins = '10';
  for (const [key, value] of Object.entries(settings)) {
    if (value === undefined) delete base[key];
    else base[key] = value;
  }
  return { versionNum: major * 10000 + 2, major, isSuperuser: true, currentUser: 'postgres', settings: base };
}

function settingsOf(problems: ReturnType<typeof checkServerFacts>): string[] {
  return problems.map((p) => p.setting);
}

test('a well configured server of each major has no problem', () => {
  for (const major of MAJORS) assert.deepEqual(checkServerFacts(facts(major), 3), [], `PostgreSQL ${major}`);
});

test('wal_level=replica: says to set logical, how, and to restart', () => {
  const problems = checkServerFacts(facts(17, { wal_level: 'replica' }), 2);
  assert.deepEqual(problems, [
    {
      setting: 'wal_level',
      actual: 'replica',
      required: 'logical',
      fix: "set wal_level = logical (ALTER SYSTEM SET wal_level = 'logical') and restart the server",
    },
  ]);
  assert.equal(
    formatProblems('n2', problems),
    "node n2 has wal_level=replica (needs logical): set wal_level = logical (ALTER SYSTEM SET wal_level = 'logical') and restart the server",
  );
});

test('every problem is reported at once, one line each', () => {
  const problems = checkServerFacts(
    facts(16, { wal_level: 'minimal', track_commit_timestamp: 'off', server_encoding: 'LATIN1', max_replication_slots: '1', max_wal_senders: '0' }),
    2,
  );
  assert.deepEqual(settingsOf(problems), ['wal_level', 'track_commit_timestamp', 'server_encoding', 'max_replication_slots', 'max_wal_senders']);
  const lines = formatProblems('n1', problems).split('\n');
  assert.equal(lines.length, 5);
  for (const line of lines) assert.match(line, /^node n1 has \w+=\S+ \(needs [^)]+\): \S/);
  assert.match(lines[1] as string, /track_commit_timestamp=off \(needs on\): set track_commit_timestamp = on \(ALTER SYSTEM SET track_commit_timestamp = on\) and restart/);
  assert.match(lines[2] as string, /ENCODING UTF8/);
});

test('a server older than 16 is told to upgrade', () => {
  const problems = checkServerFacts(facts(15), 1);
  assert.deepEqual(settingsOf(problems), ['server_version']);
  assert.match(problems[0]?.fix ?? '', /PostgreSQL 16 or newer.*upgrade/);
});

test('settings the server did not report read as missing, not as fine', () => {
  const problems = checkServerFacts(facts(18, { wal_level: undefined, track_commit_timestamp: undefined, max_active_replication_origins: undefined }), 1);
  assert.deepEqual(settingsOf(problems), ['wal_level', 'track_commit_timestamp', 'max_active_replication_origins']);
  assert.equal(problems[0]?.actual, '?');
  assert.equal(problems[2]?.actual, '0');
});

/** The smallest value of each limit that a major accepts for `peers` peers. */
function minimum(major: Major, peers: number): Record<string, number> {
  return major >= 18
    ? { max_replication_slots: peers + 2, max_wal_senders: peers + 1, max_active_replication_origins: peers + 1 }
    : { max_replication_slots: peers + 2, max_wal_senders: peers + 1 };
}

test('16 and 17: max_replication_slots covers the slots (peers + 2) and, separately, the origins (peers + 1)', () => {
  for (const major of [16, 17] as const) {
    // 4 peers: 4 slots, the version horizon slot and a spare; 4 origins and a spare.
    assert.deepEqual(checkServerFacts(facts(major, { max_replication_slots: '6' }), 4), []);
    const problems = checkServerFacts(facts(major, { max_replication_slots: '5' }), 4);
    assert.deepEqual(settingsOf(problems), ['max_replication_slots']);
    assert.equal(problems[0]?.required, '>= 6');
    assert.match(problems[0]?.fix ?? '', /ALTER SYSTEM SET max_replication_slots = 10\).*restart.*also limits replication origins/);
    // There is no max_active_replication_origins before 18; its absence is not a problem.
    assert.ok(!('max_active_replication_origins' in facts(major).settings));
  }
});

test('18: slots and origins have their own limits, peers + 2 and peers + 1', () => {
  assert.deepEqual(checkServerFacts(facts(18, { max_replication_slots: '6', max_active_replication_origins: '5' }), 4), []);
  const problems = checkServerFacts(facts(18, { max_replication_slots: '5', max_active_replication_origins: '4' }), 4);
  assert.deepEqual(settingsOf(problems), ['max_replication_slots', 'max_active_replication_origins']);
  assert.deepEqual(problems.map((p) => p.required), ['>= 6', '>= 5']);
  assert.doesNotMatch(problems[0]?.fix ?? '', /origins/);
  assert.match(problems[1]?.fix ?? '', /ALTER SYSTEM SET max_active_replication_origins = 10\) and restart/);
});

test('the suggested value is never below what is needed', () => {
  const problems = checkServerFacts(facts(18, { max_replication_slots: '2', max_wal_senders: '2', max_active_replication_origins: '2' }), 40);
  for (const p of problems) {
    const suggested = Number(/= (\d+) \(ALTER SYSTEM/.exec(p.fix)?.[1]);
    assert.equal(suggested, p.setting === 'max_replication_slots' ? 42 : 41, p.fix);
  }
});

test('property: at the minimum every major passes; one below, exactly that limit is reported', () => {
  fc.assert(
    fc.property(fc.constantFrom(...MAJORS), fc.integer({ min: 1, max: 200 }), (major, peers) => {
      const min = minimum(major, peers);
      const atMin = Object.fromEntries(Object.entries(min).map(([k, v]) => [k, String(v)]));
      assert.deepEqual(checkServerFacts(facts(major, atMin), peers), []);
      for (const key of Object.keys(min)) {
        const below = { ...atMin, [key]: String((min[key] as number) - 1) };
        const problems = checkServerFacts(facts(major, below), peers);
        assert.deepEqual(settingsOf(problems), [key]);
        assert.equal(problems[0]?.required, `>= ${min[key]}`);
      }
    }),
    { numRuns: 300 },
  );
});

test('unlimited slot WAL retention is a warning that says what to set, not a problem; a limit is quiet', () => {
  const unlimited = facts(17, { max_slot_wal_keep_size: '-1' });
  assert.deepEqual(checkServerFacts(unlimited, 2), [], 'the server works as it is');
  const warnings = serverWarnings(unlimited);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0] ?? '', /max_slot_wal_keep_size = -1/);
  assert.match(warnings[0] ?? '', /ALTER SYSTEM SET max_slot_wal_keep_size/);
  assert.deepEqual(serverWarnings(facts(17, { max_slot_wal_keep_size: '51200' })), []);
});
