/**
 * Topology: 2 nodes, agents in this process; n2's agent judges n1's commit timestamps against a faked local clock
 * that runs behind (so n1's commits are in n2's future, as from a peer whose clock runs ahead).
 * Scenarios:
 * - A minute ahead (more than tuning.futureCommitHoldMs, less than futureCommitPauseMs): n2 holds n1's transactions,
 *   shows the hold in its status and applies nothing of them; once its clock has caught up, it applies them all, in
 *   order. Without the code under test: applied at once, with versions that would beat every later write of n2.
 * - Two hours ahead (past futureCommitPauseMs): the link is paused for the operator with a reason that says so
 *   (status shows it), and nothing is applied.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent } from '../../src/agent/agent.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { eventually, withCluster, type TestNode } from '../support/cluster.ts';

const SCHEMA = `CREATE TABLE public.t (k integer PRIMARY KEY, v text NOT NULL);`;
const rows = (node: TestNode) => node.sql.unsafe<{ k: number; v: string }[]>(`SELECT k, v FROM public.t ORDER BY k`).then((r) => r.map((x) => `${x.k}:${x.v}`));

test("a peer's transactions committed a minute in the future are held until the local clock catches up, then applied in order", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    let behindMs = 60_000;
    await cluster.startAgents(['n1']);
    const agent = await Agent.start(cluster.config, 'n2', silentLogger, { now: () => Date.now() - behindMs });
    try {
      await n1.sql.unsafe(`INSERT INTO public.t VALUES (1, 'first')`);
      await n1.sql.unsafe(`UPDATE public.t SET v = 'second' WHERE k = 1`);
      const peer = () => agent.status().peers.find((p) => p.peer === 'n1');
      await eventually(() => peer()?.futureHold != null, { what: "n2 to hold n1's transaction" });
      assert.ok((peer()?.futureHold?.aheadMs ?? 0) > 30_000, `held ${JSON.stringify(peer()?.futureHold)}`);
      assert.deepEqual(await rows(n2), [], 'nothing of the held transactions is applied');

      behindMs = 0;
      await eventually(async () => (await rows(n2)).join() === '1:second', { what: "n1's transactions to be applied once the clock caught up" });
      assert.equal(peer()?.futureHold, null);
      assert.ok((peer()?.futureHolds ?? 0) >= 1);
    } finally {
      await agent.stop();
    }
  });
});

test("a peer's transaction committed hours in the future pauses the link, and nothing of it is applied", { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    await cluster.startAgents(['n1']);
    const agent = await Agent.start(cluster.config, 'n2', silentLogger, { now: () => Date.now() - 2 * 3_600_000 });
    try {
      await n1.sql.unsafe(`INSERT INTO public.t VALUES (1, 'from the future')`);
      let reason = '';
      await eventually(
        async () => {
          const paused = await n2.sql.unsafe<{ reason: string | null }[]>(`SELECT paused_reason AS reason FROM pgmesh.apply_progress WHERE peer = 'n1' AND paused_at IS NOT NULL`);
          reason = paused[0]?.reason ?? '';
          return reason !== '';
        },
        { what: 'the link from n1 to be paused' },
      );
      assert.match(reason, /ahead of n2's clock/);
      assert.match(reason, /pgmesh resume/);
      assert.deepEqual(await rows(n2), []);
    } finally {
      await agent.stop();
    }
  });
});
