/**
 * The cost of applying a batch must not grow with the tables: every statement that pgmesh's sessions run while
 * applying (the fast path, the full statements, conflict resolution, tombstones, unique claims, key locks, the
 * progress log, and the triggers they fire) reads what it needs through an index, never a whole replicated table or
 * a whole pgmesh table that grows with the data.
 *
 * Topology: 2 nodes, agents in this process, started after the writes (so the backlog is applied in multi-row
 * batches, as in a bulk load). The receiving servers log every plan that pgmesh's sessions execute, nested statements
 * included (auto_explain, verbose, so that every scan names its schema).
 * Scenario: tables of 200,000 rows (a plain one, one with a secondary unique key, one with a delta column), thousands
 * of tombstones on both nodes, statistics gathered; then on n1 bulk inserts, multi-row updates and deletes,
 * one-row changes, unique values moved; on n2 changes of the same rows (conflicts, so the full statements and their
 * conflict log run too). Both nodes apply the other's backlog. And a table that starts empty and grows by bulk
 * inserts: its statements are prepared while it is empty (a plan chosen then, when reading it whole costs nothing,
 * is kept while it grows, as in a bulk load).
 * Without the code under test: a per-batch statement whose plan reads a whole table (a correlated EXISTS that the
 * planner runs as a hashed subplan, say) makes every batch cost a scan of the table, and apply slows down as the
 * table grows; this test names the statement and the table it scans.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import postgres from 'postgres';
import { withCluster, type Sql, type TestNode } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';

const ROWS = 200_000;
const TABLES = ['big', 'uq', 'acct', 'grown'];
/** A pgmesh table with at least this many rows counts as large: reading it whole per batch is a cost that grows. */
const LARGE_ROWS = 1000;

const SCHEMA = `
  CREATE TABLE big (k bigint PRIMARY KEY, v text NOT NULL, n integer);
  CREATE TABLE uq (k bigint PRIMARY KEY, code text NOT NULL UNIQUE, v text);
  CREATE TABLE acct (k bigint PRIMARY KEY, balance numeric NOT NULL, v text);
  CREATE TABLE grown (k bigint PRIMARY KEY, v text NOT NULL);
  INSERT INTO big SELECT g, 'row ' || g, g FROM generate_series(1, ${ROWS}) g;
  INSERT INTO uq SELECT g, 'code-' || g, 'row ' || g FROM generate_series(1, ${ROWS}) g;
  INSERT INTO acct SELECT g, 100, 'row ' || g FROM generate_series(1, ${ROWS}) g;
  ${BARRIER_TABLE}
  -- The test's own writes: not logged (the triggers that local writes fire run statements per row), so the log holds
  -- what pgmesh's sessions ran.
  CREATE ROLE writer LOGIN SUPERUSER PASSWORD 'writer-pw';
  ALTER ROLE writer SET auto_explain.log_min_duration = -1;`;

/**
 * pgmesh's tables that grow with the data or with time; a scan of a small fixed one (its peers, its settings) is
 * not a cost per row.
 */
const GROWING_PGMESH_TABLES = [
  'tombstone',
  'unique_claim',
  'version_override',
  'conflict',
  'exception',
  'applied_xact',
  'resolved_change',
  'ddl_log',
  'version_checkpoint',
];

/**
 * The plans pgmesh's sessions logged ("pgmesh ..." application names), as [query text, plan] pairs. The log is read
 * line by line (it can be larger than a string may be), keeping only pgmesh's entries.
 */
async function pgmeshPlans(logFile: string): Promise<{ query: string; plan: string }[]> {
  const entries: string[] = [];
  let keep = false;
  for await (const line of createInterface({ input: createReadStream(logFile), crlfDelay: Infinity })) {
    if (line.startsWith('\t')) {
      if (keep) entries[entries.length - 1] += `\n${line}`;
      continue;
    }
    keep = / app=pgmesh [^|]*\|LOG: {2}duration: [\d.]+ ms {2}plan:/.test(line);
    if (keep) entries.push(line);
  }
  return entries
    .map((e) => {
      const text = e.split('\n').slice(1).join('\n');
      const at = text.search(/\n\t[^\t\n]*\(cost=/);
      return { query: text.slice(0, at < 0 ? text.length : at).replace(/^\tQuery Text: /, ''), plan: at < 0 ? '' : text.slice(at) };
    });
}

/**
 * The large tables (see `large`) that a plan reads whole: a sequential scan, or an index scan with no index
 * condition (a full index scan, as a hashed subplan takes when sequential scans are off).
 */
function wholeTableScans(plan: string, large: ReadonlySet<string>): string[] {
  // One entry per plan node: its header line ("->  Seq Scan on ...", or the first line) and its detail lines.
  const nodes: string[][] = [];
  for (const line of plan.split('\n')) {
    if (line.includes('->  ') || nodes.length === 0) nodes.push([line]);
    else nodes[nodes.length - 1]?.push(line);
  }
  return nodes.flatMap(([header = '', ...details]) => {
    const seq = /Seq Scan on (\w+\.\w+)/.exec(header);
    const index = /Index (?:Only )?Scan(?: Backward)? using \w+ on (\w+\.\w+)/.exec(header);
    const table = seq?.[1] ?? (index && !details.some((d) => d.includes('Index Cond:')) ? index[1] : undefined);
    return table !== undefined && large.has(table) ? [table] : [];
  });
}

/** The replicated tables and the growing pgmesh tables that hold enough rows for a whole read to cost something. */
async function largeTables(node: TestNode): Promise<Set<string>> {
  const large = new Set(TABLES.map((t) => `public.${t}`));
  for (const table of GROWING_PGMESH_TABLES) {
    const rows = await node.sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM pgmesh.${table}`);
    if ((rows[0]?.n ?? 0) >= LARGE_ROWS) large.add(`pgmesh.${table}`);
  }
  return large;
}

async function analyze(node: TestNode): Promise<void> {
  await node.sql.unsafe(`ANALYZE big; ANALYZE uq; ANALYZE acct; ANALYZE grown; ANALYZE pgmesh.tombstone; ANALYZE pgmesh.unique_claim; ANALYZE pgmesh.applied_xact`);
}

test('no statement pgmesh runs per batch reads a whole replicated table or a growing pgmesh table', { timeout: 300_000 }, async () => {
  await withCluster(
    {
      nodes: 2,
      schema: SCHEMA,
      settings: {
        session_preload_libraries: "'auto_explain'",
        // Off while the cluster is made (cluster create's DDL runs pgmesh's checks statement by statement: not apply
        // work); on, below, for the agents that apply the backlogs.
        'auto_explain.log_min_duration': -1,
        'auto_explain.log_nested_statements': 'on',
        'auto_explain.log_verbose': 'on',
        log_min_messages: 'log',
        log_line_prefix: "'%m [%p] app=%a|'",
      },
    },
    async (cluster) => {
      const writer = (node: TestNode): Sql => postgres(dsnAs(node, 'writer', 'writer-pw'), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
      const n1 = { sql: writer(cluster.node('n1')) };
      const n2 = { sql: writer(cluster.node('n2')) };
      try {
        for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'acct' }, ['balance']);
        // Tombstones on both nodes, of keys the later changes do not touch (and unique values released by deletes).
        await n1.sql.unsafe(`DELETE FROM big WHERE k BETWEEN 150001 AND 160000; DELETE FROM uq WHERE k BETWEEN 150001 AND 155000`);
        await n2.sql.unsafe(`DELETE FROM big WHERE k BETWEEN 160001 AND 170000; DELETE FROM uq WHERE k BETWEEN 155001 AND 160000`);
        await cluster.startAgents();
        await barrier(cluster);
        await cluster.stopAgent('n1');
        await cluster.stopAgent('n2');
        for (const node of cluster.nodes) {
          await analyze(node);
          await node.sql.unsafe(`ALTER SYSTEM SET auto_explain.log_min_duration = 0`);
          await node.sql.unsafe(`SELECT pg_catalog.pg_reload_conf()`);
        }

        // n1's backlog: bulk inserts, multi-row updates and deletes, one-row changes, unique values moved, deltas.
        for (let b = 0; b < 3; b++) {
          const from = ROWS + 1 + b * 1000;
          await n1.sql.unsafe(`INSERT INTO big SELECT g, 'new ' || g, g FROM generate_series(${from}, ${from + 999}) g`);
          await n1.sql.unsafe(`INSERT INTO uq SELECT g, 'code-' || g, 'new' FROM generate_series(${from}, ${from + 999}) g`);
          await n1.sql.unsafe(`INSERT INTO acct SELECT g, 1, 'new' FROM generate_series(${from}, ${from + 999}) g`);
        }
        for (let b = 0; b < 20; b++) await n1.sql.unsafe(`INSERT INTO grown SELECT g, 'new ' || g FROM generate_series(${b * 1000 + 1}, ${b * 1000 + 1000}) g`);
        await n1.sql.unsafe(`UPDATE big SET v = v || ' n1' WHERE k BETWEEN 1 AND 1000`);
        await n1.sql.unsafe(`UPDATE uq SET v = 'n1' WHERE k BETWEEN 1 AND 1000`);
        await n1.sql.unsafe(`UPDATE uq SET code = 'moved-' || k WHERE k BETWEEN 1001 AND 1100`);
        await n1.sql.unsafe(`UPDATE acct SET balance = balance + 1 WHERE k BETWEEN 1 AND 1000`);
        await n1.sql.unsafe(`DELETE FROM big WHERE k BETWEEN 2001 AND 3000`);
        await n1.sql.unsafe(`DELETE FROM uq WHERE k BETWEEN 2001 AND 2100`);
        await n1.sql.unsafe(`DELETE FROM acct WHERE k BETWEEN 2001 AND 2100`);
        for (let k = 3001; k <= 3020; k++) {
          await n1.sql.unsafe(`UPDATE big SET v = 'one n1' WHERE k = ${k}`);
          await n1.sql.unsafe(`INSERT INTO big VALUES (${ROWS + 10_000 + k}, 'one', 1)`);
          await n1.sql.unsafe(`DELETE FROM big WHERE k = ${k + 100}`);
          await n1.sql.unsafe(`UPDATE acct SET balance = balance - 1 WHERE k = ${k}`);
        }
        // A key deleted on n2 comes back from n1 (an insert over a tombstone), and a key n2 inserted too.
        await n1.sql.unsafe(`INSERT INTO big VALUES (165000, 'back', 1)`);
        // n2's backlog: changes of the same rows (conflicts), and bulk work of its own.
        await n2.sql.unsafe(`UPDATE big SET v = v || ' n2' WHERE k BETWEEN 501 AND 1500`);
        await n2.sql.unsafe(`UPDATE uq SET v = 'n2' WHERE k BETWEEN 501 AND 1500`);
        await n2.sql.unsafe(`UPDATE acct SET balance = balance + 2 WHERE k BETWEEN 501 AND 1500`);
        await n2.sql.unsafe(`INSERT INTO big SELECT g, 'n2 ' || g, g FROM generate_series(${ROWS + 5001}, ${ROWS + 6000}) g`);
        await n2.sql.unsafe(`DELETE FROM big WHERE k BETWEEN 4001 AND 5000`);
        for (let k = 5001; k <= 5020; k++) await n2.sql.unsafe(`UPDATE big SET v = 'one n2' WHERE k = ${k}`);

        await cluster.startAgents();
        await barrier(cluster);
        await cluster.waitConverged(TABLES, 60_000);
      } finally {
        await Promise.all([n1.sql.end({ timeout: 1 }), n2.sql.end({ timeout: 1 })]);
      }

      const problems: string[] = [];
      let plans = 0;
      const seen = new Set<string>();
      for (const node of cluster.nodes) {
        const large = await largeTables(node);
        assert.ok(large.has('pgmesh.tombstone') && large.has('pgmesh.unique_claim'), `${node.name} has large pgmesh tables: ${[...large].join(', ')}`);
        for (const { query, plan } of await pgmeshPlans(node.server.logFile)) {
          plans++;
          const scans = [...new Set(wholeTableScans(plan, large))];
          const what = `${scans.join(', ')} read whole by: ${query.slice(0, 300)}`;
          if (scans.length > 0 && !seen.has(what)) {
            seen.add(what);
            problems.push(`${node.name}: ${what}\n${plan}`);
          }
        }
      }
      if (process.env.PLANS_OUT) (await import("node:fs")).writeFileSync(process.env.PLANS_OUT, problems.join("\n\n=====\n"));
      assert.ok(plans > 100, `pgmesh's sessions logged their plans (${plans})`);
      assert.deepEqual(problems, [], `${problems.length} statements read a whole large table`);
    },
  );
});
