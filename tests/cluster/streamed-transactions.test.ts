/**
 * Transactions a peer streams while they are in progress (pgoutput streaming; src/stream/peer-stream.ts and
 * transaction-spool.ts), asked for with tuning.streamLargeTransactions. The servers run with logical_decoding_work_mem at its minimum (64kB), so a transaction
 * of a few thousand rows is streamed in several blocks, interleaved with other transactions that commit meanwhile.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import postgres from 'postgres';
import { PG_MAJOR, eventually, withCluster } from '../support/cluster.ts';
import { linkNames } from '../support/slots.ts';

const SCHEMA = `CREATE TABLE t (k integer PRIMARY KEY, v text NOT NULL, big text); ${BARRIER_TABLE}`;

/**
 * Topology: 2 nodes, agents running; n1 writes, n2 receives.
 * Scenario, all on n1, in this order of events: session A opens a large transaction with savepoints (one rolled
 * back, with a released savepoint inside it), TOASTed values and updates that leave them unchanged; while it is
 * open, session B commits 50 one-row transactions, session C writes a large transaction and rolls it back, session
 * D writes a large transaction and commits it; then A commits.
 * Without the code under test (spooling streamed transactions, dropping aborted subtransactions and transactions,
 * reading back in commit order): the agent would stop on Stream Start, apply rows of the rolled-back savepoint or
 * of C, or apply A before D and B although they committed first.
 */
/**
 * Transactions n1's walsender streams: A, C and D up to PostgreSQL 17; 18 does not stream C, which is rolled back
 * while D is decoded (measured: its slot counts 2 streamed transactions, and no streamed abort reaches n2).
 */
const STREAMED = PG_MAJOR >= 18 ? 2 : 3;

test('large transactions streamed while in progress: savepoints, rollbacks and interleaving end as on the writer', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA, settings: { logical_decoding_work_mem: '64kB' }, tuning: { streamLargeTransactions: true } }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    await cluster.startAgents();
    await barrier(cluster);

    // Sessions of their own: a pool of one connection keeps an explicit transaction on one connection.
    const session = () => postgres(n1.server.dsn, { max: 1, onnotice: () => undefined, fetch_types: false });
    const a = session();
    const c = session();
    const d = session();
    try {
      await a.unsafe('BEGIN');
      await a.unsafe(`INSERT INTO t SELECT g, 'a', CASE WHEN g <= 20 THEN repeat(md5(g::text), 4000) END FROM generate_series(1, 2000) g`);
      await a.unsafe('SAVEPOINT s1');
      await a.unsafe(`INSERT INTO t SELECT g, 'a, rolled back', NULL FROM generate_series(10001, 12000) g`);
      await a.unsafe('SAVEPOINT s2');
      await a.unsafe(`INSERT INTO t SELECT g, 'a, released then rolled back', NULL FROM generate_series(20001, 20100) g`);
      await a.unsafe('RELEASE SAVEPOINT s2');
      await a.unsafe('ROLLBACK TO SAVEPOINT s1');

      for (let k = 50001; k <= 50050; k++) await n1.sql.unsafe(`INSERT INTO t VALUES ($1::text::int, 'b', NULL)`, [String(k)]);
      await c.unsafe('BEGIN');
      await c.unsafe(`INSERT INTO t SELECT g, 'c', NULL FROM generate_series(60001, 64000) g`);
      await d.unsafe('BEGIN');
      await d.unsafe(`INSERT INTO t SELECT g, 'd', NULL FROM generate_series(70001, 74000) g`);
      await c.unsafe('ROLLBACK');
      await d.unsafe('COMMIT');

      await a.unsafe(`INSERT INTO t SELECT g, 'a, after the rollback', NULL FROM generate_series(30001, 32000) g`);
      // The TOASTed values are not sent again: the update carries them as unchanged.
      await a.unsafe(`UPDATE t SET v = 'a, updated' WHERE k <= 40`);
      await a.unsafe('COMMIT');
    } finally {
      await Promise.all([a.end(), c.end(), d.end()]);
    }
    await barrier(cluster);

    const hashes = await cluster.waitConverged(['t'], 10_000);
    assert.match(hashes.t ?? '', /^8050:/, '2000 + 2000 rows of A, 50 of B, 4000 of D on both nodes');
    const groups = await n2.sql.unsafe<{ v: string; n: number; toasted: number }[]>(
      `SELECT v, count(*)::int AS n, count(big)::int AS toasted FROM t GROUP BY v ORDER BY v`,
    );
    assert.deepEqual(
      groups.map((g) => ({ ...g })),
      [
        { v: 'a', n: 1960, toasted: 0 },
        { v: 'a, after the rollback', n: 2000, toasted: 0 },
        { v: 'a, updated', n: 40, toasted: 20 },
        { v: 'b', n: 50, toasted: 0 },
        { v: 'd', n: 4000, toasted: 0 },
      ],
    );
    const big = await n2.sql.unsafe<{ ok: boolean }[]>(`SELECT bool_and(big = repeat(md5(k::text), 4000)) AS ok FROM t WHERE k <= 20`);
    assert.equal(big[0]?.ok, true, 'the TOASTed values arrived whole and stayed through the update');

    // The peer did stream: its slot's statistics count streamed transactions, and n2's link counts them.
    // The walsender reports its slot statistics now and then (cumulative statistics), not at once: poll for them.
    let streamed = '';
    await eventually(
      async () => {
        const slot = await n1.sql.unsafe<{ stream_txns: string }[]>(`SELECT stream_txns::text FROM pg_stat_replication_slots WHERE slot_name = $1`, [(await linkNames(n2, 'n1')).slot]);
        streamed = slot[0]?.stream_txns ?? '';
        return Number(streamed) >= STREAMED;
      },
      { timeoutMs: 20_000, what: () => `n1's slot statistics to count ${STREAMED === 3 ? 'A, C and D' : 'A and D'} as streamed (stream_txns ${streamed})` },
    );
    const link = cluster.agents.get('n2')?.status().peers.find((p) => p.peer === 'n1');
    assert.ok(link, "n2's agent reports its link from n1");
    assert.ok(link.streamedXacts >= 2, `n2 applied A and D from spools (${link.streamedXacts})`);
    if (STREAMED === 3) assert.ok(link.streamedAborted >= 1, `n2 dropped C (${link.streamedAborted})`);
    assert.equal(link.lastError, null);
    assert.equal(link.restarts, 0);
    // Nothing applied twice: B's 50, A, D and the two barriers' transactions.
    const applied = await n2.sql.unsafe<{ n: string }[]>(`SELECT applied_xacts::text AS n FROM pgmesh.progress WHERE peer = 'n1'`);
    assert.equal(Number(applied[0]?.n), 54);
  });
});
