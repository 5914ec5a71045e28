/**
 * Topology: 2 nodes, n1 -> n2. n2's agent runs as a real process (`pgmesh start`), so that its memory is measured
 * from outside, as an operator sees it (/proc/<pid>/status).
 * Scenario: once n2's agent streams from n1, n1 commits one transaction of 1,000,000 rows. While n2's agent applies
 * it, the test samples the agent's resident memory; then every row must be on n2, applied as one local transaction.
 * Without the code under test (a remote transaction flows through as events and is never held whole; the replication
 * socket is paused at a high-water mark of queued events; the apply pipeline bounds what is in flight), the agent
 * would hold the transaction: 1M decoded rows of this table cost ~500 bytes each in V8 (measured with the real
 * decoder: 475 MB of heap for the 1M rows), so its memory would grow by hundreds of MB, without bound for larger ones.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { eventually, withCluster, type AgentProcess, type TestNode } from '../support/cluster.ts';
import { linkNames } from '../support/slots.ts';

const ROWS = 1_000_000;

/**
 * The agent's V8 heap is capped. Uncapped, V8 sizes its heap from the machine's memory and collects lazily: on a
 * 24 GB machine the streaming agent's RSS grew by 330-370 MB, mostly garbage, so RSS would measure GC laziness and
 * the machine rather than what the agent keeps. With the cap, V8 collects before growing past it, and a transaction
 * held whole (475 MB of decoded rows alone) cannot fit: the agent dies of "JavaScript heap out of memory".
 * A streaming agent keeps ~100 MB live at most: its event queue (highWaterEvents = 20,000 events of ~500 bytes),
 * the batch being built, and the parameters in flight (MAX_INFLIGHT_BYTES = 8 MB of characters, which as V8 rope
 * strings take ~70 MB). The cap leaves it about twice that.
 */
const HEAP_CAP_MB = 192;

/**
 * How much the agent's resident memory may grow above its idle level while it applies the transaction. Under the cap
 * a streaming agent cannot grow much past 192 MB of old space + ~50 MB of young generation + buffers (measured:
 * 67 MB since grouped messages count against MAX_INFLIGHT_BYTES, 140-200 MB before); the decoded rows alone would
 * take 475 MB.
 */
const MAX_GROWTH_MB = 300;

const SCHEMA = `CREATE TABLE big (id bigint PRIMARY KEY, n integer NOT NULL, payload text NOT NULL);`;

interface Memory {
  readonly rssKb: number;
  readonly peakKb: number;
}

/** VmRSS (resident now) and VmHWM (the kernel's high-water mark of resident memory) of a process. */
function memoryOf(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!match) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(match[1]);
  };
  return { rssKb: field('VmRSS'), peakKb: field('VmHWM') };
}

/** Row count and an order-independent content digest, cheap enough for a million rows. */
async function digest(node: TestNode): Promise<{ n: string; h: string }> {
  const rows = await node.sql.unsafe<{ n: string; h: string }[]>(
    `SELECT count(*)::text AS n, coalesce(sum(('x' || substr(md5(b::text), 1, 15))::bit(60)::bigint), 0)::text AS h FROM big b`,
  );
  return rows[0] as { n: string; h: string };
}

const died = (agent: AgentProcess) => (): string | undefined =>
  agent.running ? undefined : `n2's agent process exited (${agent.child.signalCode ?? `code ${agent.child.exitCode}`}); see its log below`;

test('a 1,000,000-row transaction replicates while the agent memory stays flat', { timeout: 240_000 }, async (t) => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const n1 = cluster.node('n1');
    const n2 = cluster.node('n2');
    const agent = cluster.startAgentProcess('n2', { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --max-old-space-size=${HEAP_CAP_MB} ${process.env.PGMESH_AGENT_NODE_OPTIONS ?? ''}`.trim() });
    const pid = agent.child.pid;
    assert.ok(pid !== undefined, 'the agent process has a pid');

    // Idle level: the agent is up and streams from n1 (its slot there is active); nothing to apply yet.
    await eventually(
      async () => {
        const rows = await n1.sql.unsafe<{ active: boolean }[]>(`SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [(await linkNames(n2, 'n1')).slot]);
        return rows[0]?.active === true;
      },
      { timeoutMs: 60_000, what: "n2's agent to stream from n1", abort: died(agent) },
    );
    const idle = memoryOf(pid);
    // Restart the kernel's high-water mark here (Linux >= 4.0), so that a peak during start-up does not count.
    writeFileSync(`/proc/${pid}/clear_refs`, '5');

    const started = Date.now();
    await n1.sql.unsafe(`INSERT INTO big SELECT g, g % 1000, md5(g::text) FROM generate_series(1, ${ROWS}) g`);
    const committedMs = Date.now() - started;

    let sampledPeakKb = idle.rssKb;
    let samples = 0;
    await eventually(
      async () => {
        sampledPeakKb = Math.max(sampledPeakKb, memoryOf(pid).rssKb);
        samples++;
        const rows = await n2.sql.unsafe<{ applied: string }[]>(`SELECT applied_xacts::text AS applied FROM pgmesh.progress WHERE peer = 'n1'`);
        return rows[0]?.applied !== '0';
      },
      { timeoutMs: 180_000, intervalMs: 50, what: 'the 1M-row transaction to be applied on n2', abort: died(agent) },
    );
    const appliedMs = Date.now() - started;
    const end = memoryOf(pid);
    // The kernel's high-water mark also catches a peak between two samples.
    const peakKb = Math.max(end.peakKb, sampledPeakKb);
    const growthMb = (peakKb - idle.rssKb) / 1024;
    t.diagnostic(
      `1M rows committed on n1 in ${committedMs} ms, applied on n2 ${appliedMs} ms after the start; agent RSS idle ${Math.round(idle.rssKb / 1024)} MB, ` +
        `peak ${Math.round(peakKb / 1024)} MB (${samples} samples, kernel high-water mark ${Math.round(end.peakKb / 1024)} MB), growth ${Math.round(growthMb)} MB`,
    );

    assert.ok(growthMb < MAX_GROWTH_MB, `the agent's memory grew by ${Math.round(growthMb)} MB while applying (bound ${MAX_GROWTH_MB} MB)`);
    assert.ok(samples >= 5, `only ${samples} memory samples: the apply was not watched`);
    const progress = await n2.sql.unsafe<{ applied: string }[]>(`SELECT applied_xacts::text AS applied FROM pgmesh.progress WHERE peer = 'n1'`);
    assert.equal(progress[0]?.applied, '1', 'the remote transaction was applied as exactly one local transaction');
    const [source, target] = await Promise.all([digest(n1), digest(n2)]);
    assert.equal(source.n, String(ROWS));
    assert.deepEqual(target, source, 'every row arrived on n2 with the same contents');
  });
});
