/**
 * Topology: 2 real servers, linked; n2's agent as a real `pgmesh start` process (its JSON log lines as written), or
 * both agents in this process; the real CLI in child processes.
 * Scenario: a change from n1 that n2 cannot apply (a CHECK constraint only n2 has) carries personal data; and the
 * JSON that status, conflicts and exceptions print.
 * Without the code under test: the row's values ("Failing row contains (...)", the server's DETAIL) in error-level
 * log lines and in the status; a key written twice on one log line ("node":"n2","node":"n2": pino writes a child's
 * bindings and a call's fields side by side); timestamps in PostgreSQL's text form ("2026-05-01 12:00:00.123+00")
 * beside ISO 8601 ones in the same JSON.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { pgmesh } from '../support/cli.ts';
import { eventually, localDdl, withCluster, type TestNode } from '../support/cluster.ts';

const PERSONAL = 'Jane Roe, 12 Elm Street';
const SCHEMA = 'CREATE TABLE people (id int PRIMARY KEY, name text)';

/** n2 refuses what n1 accepts: a constraint on n2 only (NOT VALID: n2's existing rows are not checked). */
async function refuseJaneOn(node: TestNode): Promise<void> {
  await localDdl(node, `ALTER TABLE people ADD CONSTRAINT no_jane CHECK (name NOT LIKE 'Jane%') NOT VALID`);
}

async function exceptionCount(node: TestNode): Promise<number> {
  const rows = await node.sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM pgmesh.exception`);
  return Number(rows[0]?.n);
}

/** The keys of a JSON object's top level, as written (JSON.parse keeps only the last of a repeated key). */
function topLevelKeys(line: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '"') {
      let j = i + 1;
      while (j < line.length && line[j] !== '"') j += line[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(line.slice(i, j + 1)) as string);
      expectKey = false;
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = c === '{' && depth === 1;
    } else if (c === '}' || c === ']') {
      depth--;
    } else if (c === ',' && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

interface LogLine {
  readonly raw: string;
  readonly level: number;
  readonly msg: string;
  readonly [key: string]: unknown;
}

function logLines(path: string): LogLine[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((raw) => ({ ...(JSON.parse(raw) as { level: number; msg: string }), raw }));
}

test("a change that fails on n2: error-level lines name the table, not the row's values; no line repeats a key", { timeout: 120_000 }, async () => {
  // max_slot_wal_keep_size = -1 makes the agent warn at start (the line that once carried "node" twice).
  await withCluster({ nodes: 2, schema: SCHEMA, settings: { max_slot_wal_keep_size: -1 } }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await refuseJaneOn(n2);
    const agent = cluster.startAgentProcess('n2', { PGMESH_LOG_LEVEL: 'debug' });
    const running = () => (agent.running ? undefined : 'the agent of n2 exited');
    await n1.sql.unsafe(`INSERT INTO people VALUES (7, $1)`, [PERSONAL]);
    await eventually(async () => (await exceptionCount(n2)) === 1, { what: 'the failed change to be kept as an exception on n2', abort: running });
    const kept = 'a change could not be applied; it is kept in pgmesh.exception';
    await eventually(() => logLines(agent.logFile).some((l) => l.msg === kept), { what: 'the exception to be logged', abort: running });
    await agent.kill('SIGTERM');

    const lines = logLines(agent.logFile);
    for (const line of lines) {
      const keys = topLevelKeys(line.raw);
      assert.deepEqual(keys.filter((k, i) => keys.indexOf(k) !== i), [], `a key written twice: ${line.raw}`);
    }
    // warn (40) and above: no value of the row.
    for (const line of lines.filter((l) => l.level >= 40)) {
      assert.ok(!line.raw.includes('Jane') && !line.raw.includes('Failing row'), `a row value at level ${line.level}: ${line.raw}`);
    }
    const failed = lines.find((l) => l.level === 50 && l.msg === 'stream from peer stopped; will retry');
    assert.ok(failed, 'no error line for the failed transaction');
    assert.match(
      String(failed.err),
      /^applying transactions? .*from n1 on n2 failed: new row for relation "people" violates check constraint "no_jane" \(table public\.people, constraint no_jane\)$/,
    );
    const exception = lines.find((l) => l.msg === kept);
    assert.equal(exception?.level, 40);
    assert.equal(exception?.table, 'public.people');
    assert.equal(exception?.key, '{"id":"7"}');
    // The values are there at debug level, for whoever asks for them.
    const debug = lines.find((l) => l.level === 20 && typeof l.detail === 'string');
    assert.equal(debug?.detail, `Failing row contains (7, ${PERSONAL}).`);
    // The start-up warning names the node once, from the logger's binding.
    const warning = lines.find((l) => l.level === 40 && l.msg.startsWith('max_slot_wal_keep_size = -1'));
    assert.equal(warning?.node, 'n2');
  });
});

const ISO_8601 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$/;

/** Every string in a JSON value that reads as a date and time; with the path to it. */
function timestamps(value: unknown, path = '$'): [string, string][] {
  if (typeof value === 'string') return /^\d{4}-\d\d-\d\d[ T]\d\d:/.test(value) ? [[path, value]] : [];
  if (Array.isArray(value)) return value.flatMap((v, i) => timestamps(v, `${path}[${i}]`));
  if (typeof value === 'object' && value !== null) return Object.entries(value).flatMap(([k, v]) => timestamps(v, `${path}.${k}`));
  return [];
}

test('status, conflicts and exceptions print every timestamp of their JSON in ISO 8601', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await refuseJaneOn(n2);
    // The same key on both nodes before the agents run: a conflict on each; then a change n2 refuses: an exception.
    await n1.sql.unsafe(`INSERT INTO people VALUES (1, 'on n1')`);
    await n2.sql.unsafe(`INSERT INTO people VALUES (1, 'on n2')`);
    await n1.sql.unsafe(`INSERT INTO people VALUES (2, $1)`, [PERSONAL]);
    await cluster.startAgents();
    await eventually(async () => (await exceptionCount(n2)) === 1, { what: 'the exception on n2' });
    await eventually(async () => (await n2.sql.unsafe(`SELECT 1 FROM pgmesh.conflict`)).length > 0, { what: 'the conflict on n2' });

    const [status, conflicts, exceptions] = await Promise.all([
      pgmesh(['status', '--json'], { config: cluster.configPath }),
      pgmesh(['conflicts', '--node', 'n2', '--json'], { config: cluster.configPath }),
      pgmesh(['exceptions', 'list', '--node', 'n2', '--json'], { config: cluster.configPath }),
    ]);
    for (const r of [status, conflicts, exceptions]) assert.equal(r.code, 0, r.output);
    const found = [status, conflicts, exceptions].flatMap((r) => timestamps(JSON.parse(r.stdout)));
    for (const [path, value] of found) assert.match(value, ISO_8601, path);
    // The ones read from PostgreSQL are among them.
    const paths = found.map(([path]) => path.replace(/\[\d+\]/g, '[]'));
    for (const expected of ['$.links[].lastAppliedAt', '$.links[].lastRemoteCommit', '$[].recordedAt', '$[].local.ts', '$[].remote.ts', '$[].remoteTs']) {
      assert.ok(paths.includes(expected), `no ${expected} in ${paths.join(', ')}`);
    }
  });
});
