/**
 * Crashes and restarts of the replication core, against real servers.
 *
 * 1. Agent SIGKILL in the middle of a large stream.
 *    Topology: 2 nodes, n1 -> n2; n2's agent is a real process (`pgmesh start`), killed with SIGKILL twice.
 *    Scenario: before n2's agent starts, n1 commits a backlog of K transactions (each: 100 or, every tenth, 4,000
 *    ledger rows, and +1 on a delta column), ~100k rows to stream. The agent is killed while an apply transaction is
 *    open and some but not all transactions are applied (checked: strictly between the previous kill's count and
 *    the total), restarted, killed again the same way, restarted. Then n2 must hold exactly n1's rows, and its
 *    progress row must count each of n1's transactions (counter seed, K, a final marker) exactly once.
 *    Why the counter: replaying a stream is idempotent for whole-row upserts and deletes (and last-update-wins skips
 *    an equal version), so equal tables alone cannot tell "applied once" from "applied twice". applied_xacts is
 *    incremented in the same local commit as every applied transaction, so a transaction applied twice counts twice.
 *    The delta column is the data-level witness: `hits = local + (new - old)` is not idempotent, so a transaction
 *    applied twice adds its +1 twice and n2's total exceeds n1's.
 *    Without the code under test (progress in the same commit as the changes; resume from that durable progress;
 *    skipping of redelivered transactions; one apply session per origin), a restart resumes from a stale position
 *    (transactions applied twice: counter and delta too high) or from one ahead of what committed (rows lost), and
 *    a transaction cut by the kill could be left half applied.
 *
 * 2. Peer server kill -9 while the others keep writing.
 *    Topology: 3 nodes, full mesh, agents in this process; n3's PostgreSQL (postmaster and every backend) SIGKILLed.
 *    Scenario: every node writes (inserts, updates, deletes of its own rows); n3's server is killed mid-run while it
 *    applies its peers' streams; n1 and n2 keep writing and keep replicating to each other; n3 restarts (crash
 *    recovery) and writes again. Then every node holds every committed row, including n3's commits from before the
 *    crash, and each peer's transactions are counted applied exactly once on every node.
 *    Without the code under test: apply commits asynchronously, so what n3 had applied but not flushed is gone after
 *    the crash; if the position acknowledged to the peers were the applied one rather than the flushed one, the
 *    peers' slots would have moved past it and those rows would never come back. An agent that does not notice its
 *    apply session died with the server, or does not reconnect, leaves n3 (and n3's own commits) cut off for good.
 *
 * 3. Peer server restart (fast shutdown, start) while the others keep writing.
 *    Topology: 3 nodes, full mesh, agents in this process; n2's server is stopped and started, its agent is not.
 *    Scenario: n1 and n3 keep writing while n2 is down; n2 comes back and writes. Every node converges, every peer's
 *    transactions are applied exactly once, and every stream that involved n2 (n2's agent from both peers, the peers'
 *    agents from n2) was re-established by the agents themselves (restarts counted, state streaming).
 *    Without the code under test: the apply sessions and streams die with the server's connections; without the
 *    retry loop (backoff, new session from durable progress) replication from and to n2 stays stopped.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setDeltaColumns } from '../../src/cluster/repair.ts';
import { BARRIER_TABLE, barrier } from '../support/barrier.ts';
import { eventually, withCluster, type AgentProcess, type TestCluster, type TestNode } from '../support/cluster.ts';
import { linkNames } from '../support/slots.ts';

/** Reconnect quickly after a crash: the default backoff (up to 15 s) would only make the tests slow. */
const FAST_RETRY = { retryBaseMs: 100, retryMaxMs: 1000 };

/** Transactions from `peer` applied on `node`: written in the same local commit as each applied transaction. */
async function appliedFrom(node: TestNode, peer: string): Promise<number> {
  const rows = await node.sql.unsafe<{ n: string }[]>(`SELECT applied_xacts::text AS n FROM pgmesh.progress WHERE peer = $1`, [peer]);
  const n = rows[0]?.n;
  if (n === undefined) throw new Error(`${node.name} has no progress row for ${peer}`);
  return Number(n);
}

async function conflictCount(node: TestNode): Promise<number> {
  const rows = await node.sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM pgmesh.conflict`);
  return Number(rows[0]?.n);
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Agent SIGKILL mid-stream

const LEDGER_SCHEMA = `
CREATE TABLE ledger (id bigint PRIMARY KEY, txn integer NOT NULL, payload text NOT NULL);
CREATE TABLE counter (id integer PRIMARY KEY, hits bigint NOT NULL);
CREATE TABLE marker (id integer PRIMARY KEY);
`;
/** n1's backlog: K transactions, every tenth a large one, so that kills can land inside a transaction being applied. */
const K = 200;
const rowsOf = (txn: number): number => (txn % 10 === 0 ? 4000 : 100);
const LEDGER_ROWS = Array.from({ length: K }, (_, i) => rowsOf(i + 1)).reduce((a, b) => a + b, 0);

const exitReason = (agent: AgentProcess) => (): string | undefined =>
  agent.running ? undefined : `${agent.node}'s agent process exited (${agent.child.signalCode ?? `code ${agent.child.exitCode}`})`;

/**
 * Kills n2's agent once it has applied at least `atLeast` of n1's transactions and is inside the next one (its apply
 * session has a transaction id: it has written rows of a transaction not committed yet). Returns the count it
 * stopped at.
 */
async function killMidTransaction(cluster: TestCluster, agent: AgentProcess, atLeast: number): Promise<number> {
  const n2 = cluster.node('n2');
  await eventually(
    async () => {
      const rows = await n2.sql.unsafe<{ applied: string; open: boolean }[]>(
        `SELECT (SELECT applied_xacts::text FROM pgmesh.progress WHERE peer = 'n1') AS applied,
                EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgmesh apply n1' AND backend_xid IS NOT NULL) AS open`,
      );
      return Number(rows[0]?.applied) >= atLeast && rows[0]?.open === true;
    },
    { timeoutMs: 60_000, intervalMs: 10, what: `n2 to be inside an apply transaction after ${atLeast} of n1's`, abort: exitReason(agent) },
  );
  await agent.kill('SIGKILL');
  // The server may still run statements the dead agent had pipelined; wait until its apply backend is gone, so the
  // count read below is final (the next agent cannot start applying before that anyway: the origin is busy).
  await eventually(
    async () => (await n2.sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgmesh apply n1'`)).length === 0,
    { timeoutMs: 30_000, what: "the killed agent's apply session on n2 to end" },
  );
  return appliedFrom(n2, 'n1');
}

test('agent killed with SIGKILL mid-stream: restarted, nothing lost, nothing applied twice', { timeout: 180_000 }, async (t) => {
  await withCluster({ nodes: 2, schema: LEDGER_SCHEMA, tuning: FAST_RETRY }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'counter' }, ['hits']);

    // The backlog, committed before n2's agent runs: the counter's row, then K transactions.
    await n1.sql.unsafe(`INSERT INTO counter VALUES (1, 0)`);
    for (let txn = 1; txn <= K; txn++) {
      await n1.sql.begin(async (tx) => {
        await tx.unsafe(
          `INSERT INTO ledger (id, txn, payload) SELECT $1::text::int * 10000 + g, $1::text::int, repeat(md5(g || ':' || $1::text), 3) FROM generate_series(1, $2::text::int) g`,
          [String(txn), String(rowsOf(txn))],
        );
        await tx.unsafe(`UPDATE counter SET hits = hits + 1 WHERE id = 1`);
      });
    }
    const total = K + 1;

    const kills: number[] = [];
    let agent = cluster.startAgentProcess('n2');
    kills.push(await killMidTransaction(cluster, agent, Math.floor(total / 4)));
    agent = cluster.startAgentProcess('n2');
    kills.push(await killMidTransaction(cluster, agent, (kills[0] ?? 0) + Math.floor(total / 4)));
    t.diagnostic(`SIGKILL inside an apply transaction with ${kills.map((k) => `${k}/${total}`).join(', then ')} of n1's transactions applied`);
    let previous = 0;
    for (const applied of kills) {
      assert.ok(applied > previous && applied < total, `the kill landed mid-stream: ${applied} of ${total} applied (previous kill: ${previous})`);
      previous = applied;
    }

    agent = cluster.startAgentProcess('n2');
    // A marker committed after the backlog: once it is on n2, everything before it in n1's stream has been through
    // n2's agent, redeliveries included (a stream is applied in commit order).
    await n1.sql.unsafe(`INSERT INTO marker VALUES (1)`);
    await eventually(async () => (await n2.sql.unsafe(`SELECT 1 FROM marker`)).length === 1, {
      timeoutMs: 90_000,
      what: 'n1\'s marker to reach n2',
      abort: exitReason(agent),
    });

    // Both witnesses in one comparison, so a failure shows the counter and the delta column together.
    const hits = await Promise.all(cluster.nodes.map(async (n) => (await n.sql.unsafe<{ hits: string }[]>(`SELECT hits::text FROM counter`))[0]?.hits));
    assert.deepEqual(
      { applied: await appliedFrom(n2, 'n1'), hits },
      { applied: total + 1, hits: [String(K), String(K)] },
      `n2 applied each of n1's ${total + 1} transactions exactly once, so the delta column got each +1 once`,
    );
    const [h1, h2] = await Promise.all([cluster.tableHash(n1, 'ledger'), cluster.tableHash(n2, 'ledger')]);
    assert.ok(h1.startsWith(`${LEDGER_ROWS}:`), `n1 holds the whole ledger (${h1})`);
    assert.equal(h2, h1, 'n2 holds exactly n1\'s ledger rows');
    // n2 writes nothing itself: a change meeting a row already there (a conflict) would be a second application.
    assert.equal(await conflictCount(n2), 0, 'no conflict recorded on n2');
    assert.ok(agent.running, 'the restarted agent is still running');
  });
});

/**
 * 1b. Agent SIGKILL while a streamed transaction is spooled.
 * Topology: 2 nodes, n1 -> n2; n2's agent a real process with its own temporary folder, streamLargeTransactions
 * on; the servers stream any
 * transaction past 64kB of changes (logical_decoding_work_mem).
 * Scenario: n1 commits 3 transactions of 20,000 rows (and +1 each on a delta column) before n2's agent starts; the
 * agent is killed with SIGKILL once a spool file exists (a transaction is being received or read back), and
 * restarted. Then n2 holds exactly n1's rows, counts each transaction once, and no spool file is left: the killed
 * agent's is removed by the next one (the peer streams the transaction again from its start).
 * Without the code under test: a restart would apply from a half-written spool, or spool files of dead agents would
 * pile up in the temporary folder.
 */
test('agent killed with SIGKILL while a streamed transaction is spooled: nothing lost, nothing twice, no file left', { timeout: 180_000 }, async () => {
  await withCluster(
    { nodes: 2, schema: LEDGER_SCHEMA, tuning: { ...FAST_RETRY, streamLargeTransactions: true }, settings: { logical_decoding_work_mem: '64kB' } },
    async (cluster) => {
      const n1 = cluster.node('n1');
      const n2 = cluster.node('n2');
      for (const node of cluster.nodes) await setDeltaColumns(node.sql, { schema: 'public', name: 'counter' }, ['hits']);
      await n1.sql.unsafe(`INSERT INTO counter VALUES (1, 0)`);
      const big = 3;
      for (let txn = 1; txn <= big; txn++) {
        await n1.sql.begin(async (tx) => {
          await tx.unsafe(
            `INSERT INTO ledger (id, txn, payload) SELECT $1::text::int * 100000 + g, $1::text::int, repeat(md5(g || ':' || $1::text), 3) FROM generate_series(1, 20000) g`,
            [String(txn)],
          );
          await tx.unsafe(`UPDATE counter SET hits = hits + 1 WHERE id = 1`);
        });
      }
      const tmp = join(cluster.baseDir, 'agent-tmp');
      mkdirSync(tmp, { recursive: true });
      const prefix = `pgmesh-spool-${(await linkNames(n2, 'n1')).slot}-`;
      const spools = (): string[] => readdirSync(tmp).filter((name) => name.startsWith(prefix));

      let agent = cluster.startAgentProcess('n2', { TMPDIR: tmp });
      await eventually(async () => spools().length > 0, { timeoutMs: 60_000, intervalMs: 5, what: "a spool file of n2's agent", abort: exitReason(agent) });
      await agent.kill('SIGKILL');
      const left = spools();
      assert.ok(left.length > 0, `the killed agent left its spool file (${left.join(', ')})`);
      await eventually(
        async () => (await n2.sql.unsafe(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgmesh apply n1'`)).length === 0,
        { timeoutMs: 30_000, what: "the killed agent's apply session on n2 to end" },
      );
      const before = await appliedFrom(n2, 'n1');
      assert.ok(before < big + 2, `the kill landed before the last transaction was applied (${before} applied)`);

      agent = cluster.startAgentProcess('n2', { TMPDIR: tmp });
      await n1.sql.unsafe(`INSERT INTO marker VALUES (1)`);
      await eventually(async () => (await n2.sql.unsafe(`SELECT 1 FROM marker`)).length === 1, {
        timeoutMs: 90_000,
        what: "n1's marker to reach n2",
        abort: exitReason(agent),
      });
      const hits = (await n2.sql.unsafe<{ hits: string }[]>(`SELECT hits::text FROM counter`))[0]?.hits;
      // The counter's row, the 3 transactions, the marker: each once.
      assert.deepEqual({ applied: await appliedFrom(n2, 'n1'), hits }, { applied: big + 2, hits: String(big) });
      const [h1, h2] = await Promise.all([cluster.tableHash(n1, 'ledger'), cluster.tableHash(n2, 'ledger')]);
      assert.ok(h1.startsWith(`${big * 20000}:`), `n1 holds the whole ledger (${h1})`);
      assert.equal(h2, h1, "n2 holds exactly n1's ledger rows");
      assert.deepEqual(spools(), [], 'no spool file is left: the dead agent\'s was removed, the live one\'s discarded after use');
      assert.equal(await conflictCount(n2), 0, 'no conflict recorded on n2');
    },
  );
});

// ---------------------------------------------------------------------------------------------------------------
// 2 and 3. A peer's server crashes or restarts while the others keep writing

const EVENTS_SCHEMA = `
CREATE TABLE events (node text NOT NULL, seq integer NOT NULL, n integer NOT NULL, payload text NOT NULL, PRIMARY KEY (node, seq, n));
CREATE TABLE node_state (node text PRIMARY KEY, last_seq integer NOT NULL, writes integer NOT NULL);
${BARRIER_TABLE}
`;
const EVENT_ROWS = 10;
/** Each transaction also deletes one row of the transaction this many before it. */
const DELETE_LAG = 5;

/**
 * A client committing transactions on one node, each touching only that node's own rows (no conflicts by design).
 * It writes a given number of transactions in the background, so every phase of a test has a known amount of work.
 */
class Writer {
  /** Transactions the server acknowledged. */
  committed = 0;
  /** A transaction whose commit got no answer (the server went away): it may or may not have committed. */
  uncertain: number | undefined;
  lastError: unknown;
  private running = false;

  constructor(readonly node: TestNode) {}

  /** Starts committing `count` more transactions; stops early, recording `uncertain`, if the server goes away. */
  write(count: number): this {
    assert.ok(!this.running && this.uncertain === undefined, `${this.node.name}'s writer is idle`);
    this.running = true;
    void this.run(this.committed + count).finally(() => {
      this.running = false;
    });
    return this;
  }

  private async run(target: number): Promise<void> {
    const name = this.node.name;
    while (this.committed < target) {
      const seq = this.committed + 1;
      try {
        // One statement, so one transaction without a client-side ROLLBACK: when the server dies under a
        // multi-statement transaction, postgres.js 3.4 writes the ROLLBACK to the dead socket from a timer and throws
        // an uncaught TypeError ("Cannot read properties of null (reading 'write')") that kills the test process.
        await this.node.sql.unsafe(
          `WITH inserted AS (
             INSERT INTO events (node, seq, n, payload)
             SELECT $1::text, $2::text::int, g, md5($1::text || ':' || $2::text || ':' || g) FROM generate_series(1, ${EVENT_ROWS}) g RETURNING 1
           ), updated AS (
             UPDATE events SET payload = payload || '+' WHERE node = $1::text AND seq = $2::text::int - 1 AND n = 2 RETURNING 1
           ), deleted AS (
             DELETE FROM events WHERE node = $1::text AND seq = $2::text::int - ${DELETE_LAG} AND n = 1 RETURNING 1
           )
           INSERT INTO node_state AS s (node, last_seq, writes) VALUES ($1::text, $2::text::int, 1)
           ON CONFLICT (node) DO UPDATE SET last_seq = EXCLUDED.last_seq, writes = s.writes + 1`,
          [name, String(seq)],
        );
        this.committed = seq;
      } catch (error) {
        this.uncertain = seq;
        this.lastError = error;
        return;
      }
    }
  }

  /** Waits until `count` transactions are committed; fails at once if the writer stopped on an error. */
  async reach(count: number, timeoutMs = 60_000): Promise<void> {
    await eventually(() => this.committed >= count, {
      timeoutMs,
      what: `${this.node.name}'s writer to commit ${count} transactions (at ${this.committed})`,
      abort: () => (this.uncertain !== undefined ? `${this.node.name}'s writer failed: ${errorText(this.lastError)}` : undefined),
    });
  }

  /** Waits until the current batch of writes is finished. */
  async done(timeoutMs = 60_000): Promise<void> {
    await eventually(() => !this.running, { timeoutMs, what: `${this.node.name}'s writer to finish (at ${this.committed})` });
    if (this.uncertain !== undefined) throw new Error(`${this.node.name}'s writer failed: ${errorText(this.lastError)}`);
  }

  /** After the server came back: settles the uncertain transaction by looking for its rows. */
  async settleUncertain(): Promise<{ seq: number; committed: boolean }> {
    await eventually(() => !this.running, { timeoutMs: 30_000, what: `${this.node.name}'s writer to notice the failure` });
    const seq = this.uncertain;
    assert.ok(seq !== undefined, `${this.node.name}'s writer was cut off by the crash`);
    const rows = await this.node.sql.unsafe(`SELECT 1 FROM events WHERE node = $1 AND seq = $2::text::int`, [this.node.name, String(seq)]);
    const committed = rows.length > 0;
    if (committed) this.committed = seq;
    this.uncertain = undefined;
    this.lastError = undefined;
    return { seq, committed };
  }
}

const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/** The rows a writer with `committed` transactions leaves: EVENT_ROWS each, less one per transaction DELETE_LAG later. */
function expectedEventRows(committed: number): number {
  return committed * EVENT_ROWS - Math.max(0, committed - DELETE_LAG);
}

/** Waits until `to` holds `from`'s writes up to transaction `seq`. */
async function waitReplicated(from: Writer, to: TestNode, seq: number, timeoutMs = 60_000): Promise<void> {
  await eventually(
    async () => (await to.sql.unsafe(`SELECT 1 FROM events WHERE node = $1 AND seq = $2::text::int`, [from.node.name, String(seq)])).length > 0,
    { timeoutMs, what: `${from.node.name}'s transaction ${seq} to reach ${to.name}` },
  );
}

/**
 * Once the writers are done: a barrier (one more transaction from every node, behind the writers' in every stream),
 * then every node holds every committed write, the tables are hash-equal, and every node applied each peer's
 * transactions exactly once.
 */
async function assertExact(t: TestContext, cluster: TestCluster, writers: readonly Writer[]): Promise<void> {
  await barrier(cluster, 60_000);
  const hashes = await cluster.waitConverged(['events', 'node_state'], 5_000);
  t.diagnostic(`commits: ${writers.map((w) => `${w.node.name}=${w.committed}`).join(' ')}; events ${hashes.events}`);
  for (const node of cluster.nodes) {
    for (const w of writers) {
      const rows = await node.sql.unsafe<{ n: string; last: string | null; writes: string | null }[]>(
        `SELECT (SELECT count(*) FROM events WHERE node = $1)::text AS n,
                (SELECT last_seq::text FROM node_state WHERE node = $1) AS last, (SELECT writes::text FROM node_state WHERE node = $1) AS writes`,
        [w.node.name],
      );
      const expected = { n: String(expectedEventRows(w.committed)), last: String(w.committed), writes: String(w.committed) };
      assert.deepEqual(rows[0], expected, `${w.node.name}'s writes on ${node.name}`);
      if (w.node !== node) {
        // Each committed transaction of the writer, and the barrier's.
        assert.equal(await appliedFrom(node, w.node.name), w.committed + 1, `${node.name} applied each of ${w.node.name}'s transactions exactly once`);
      }
    }
    assert.equal(await conflictCount(node), 0, `no conflicts on ${node.name}: every node writes only its own rows`);
  }
}

test('a peer server killed with kill -9 while the others write: everything catches up', { timeout: 180_000 }, async (t) => {
  await withCluster({ nodes: 3, schema: EVENTS_SCHEMA, tuning: FAST_RETRY }, async (cluster) => {
    const [n1, n2, n3] = cluster.nodes as [TestNode, TestNode, TestNode];
    await cluster.startAgents();
    const [w1, w2, w3] = cluster.nodes.map((node) => new Writer(node)) as [Writer, Writer, Writer];

    // Everyone writes; n3 is killed in the middle of its own writes and of applying its peers' streams.
    w1.write(300);
    w2.write(300);
    w3.write(1_000_000);
    await Promise.all([w1.reach(100), w2.reach(100), w3.reach(100)]);
    await n3.server.kill();

    // The survivors keep writing and keep replicating to each other.
    await Promise.all([w1.done(), w2.done()]);
    await Promise.all([waitReplicated(w1, n2, w1.committed), waitReplicated(w2, n1, w2.committed)]);

    // n3 comes back (crash recovery) while the others write again, and writes itself.
    await n3.server.start();
    const inFlight = await w3.settleUncertain();
    t.diagnostic(`n3's writer was cut off in transaction ${inFlight.seq}, which ${inFlight.committed ? 'had' : 'had not'} committed`);
    for (const w of [w1, w2, w3]) w.write(50);
    await Promise.all([w1.done(), w2.done(), w3.done()]);
    await assertExact(t, cluster, [w1, w2, w3]);
  });
});

test('a peer server restarted while the others write: it catches up and its agent reconnects by itself', { timeout: 180_000 }, async (t) => {
  await withCluster({ nodes: 3, schema: EVENTS_SCHEMA, tuning: FAST_RETRY }, async (cluster) => {
    const [n1, n2, n3] = cluster.nodes as [TestNode, TestNode, TestNode];
    await cluster.startAgents();
    const [w1, w2, w3] = cluster.nodes.map((node) => new Writer(node)) as [Writer, Writer, Writer];

    for (const w of [w1, w2, w3]) w.write(100);
    await Promise.all([w1.done(), w2.done(), w3.done()]);
    // n2 is stopped (fast shutdown) while n1 and n3 write; its own writer is idle (a cut-off client is the kill test's).
    w1.write(100);
    w3.write(100);
    await Promise.all([w1.reach(w1.committed + 30), w3.reach(w3.committed + 30)]);
    const stopping = Date.now();
    await n2.server.stop();
    const stopMs = Date.now() - stopping;
    await Promise.all([w1.done(), w3.done()]);
    // And they go on writing while n2 is down, replicating to each other.
    const down = { n1: w1.committed, n3: w3.committed };
    w1.write(100);
    w3.write(100);
    await Promise.all([w1.done(), w3.done()]);
    await Promise.all([waitReplicated(w1, n3, w1.committed), waitReplicated(w3, n1, w3.committed)]);
    t.diagnostic(`n2's fast shutdown took ${stopMs} ms; while it was down n1 committed ${w1.committed - down.n1} and n3 ${w3.committed - down.n3} transactions`);

    // n2 starts again while n1 and n3 go on writing; its agent, never restarted, catches up by itself.
    await n2.server.start();
    for (const w of [w1, w2, w3]) w.write(100);
    await Promise.all([w1.done(), w2.done(), w3.done()]);
    await assertExact(t, cluster, [w1, w2, w3]);

    // Every stream that involved n2 died with its server and was re-established by the agents themselves.
    const peersOf = (node: string) => {
      const agent = cluster.agents.get(node);
      assert.ok(agent, `${node}'s agent is running`);
      return agent.status().peers;
    };
    const links = [
      ...peersOf('n2').map((p) => ({ ...p, link: `${p.peer}->n2` })),
      ...['n1', 'n3'].flatMap((node) => peersOf(node).filter((p) => p.peer === 'n2').map((p) => ({ ...p, link: `n2->${node}` }))),
    ];
    t.diagnostic(links.map((l) => `${l.link}: ${l.state}, ${l.restarts} restart(s)`).join('; '));
    assert.equal(links.length, 4);
    for (const l of links) {
      assert.equal(l.state, 'streaming', `${l.link} streams again`);
      assert.ok(l.restarts >= 1, `${l.link} was re-established by its agent (restarts: ${l.restarts})`);
    }
  });
});
