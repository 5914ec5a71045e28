/**
 * Holding single directed links (peer -> node) of a test cluster whose agents run in this process, so that a test
 * can choose the order in which a node receives changes from different peers. A held link is a peer marked paused
 * in the receiving node's catalog (pgmesh.apply_progress.paused_at): its agent does not stream from that peer until
 * the mark is cleared, and then resumes from where it stopped, as after `pgmesh resume`. Other links keep streaming.
 */
import type { TestCluster } from './cluster.ts';

export interface Link {
  readonly from: string;
  readonly to: string;
}

/** Holds the links: a receiving agent that runs is restarted with those peers paused; one not started yet finds them paused when it starts. */
export async function holdLinks(cluster: TestCluster, links: readonly Link[]): Promise<void> {
  const receivers = [...new Set(links.map((l) => l.to))];
  for (const to of receivers) {
    const running = cluster.agents.has(to);
    await cluster.stopAgent(to);
    const peers = links.filter((l) => l.to === to).map((l) => l.from);
    await cluster.node(to).sql.unsafe(
      `UPDATE pgmesh.apply_progress SET paused_at = now(), paused_reason = 'held by the test' WHERE peer = ANY ($1::text[])`,
      [`{${peers.join(',')}}`],
    );
    if (running) await cluster.startAgents([to]);
  }
}

/** Releases held links: their agents notice within a second and stream again. */
export async function releaseLinks(cluster: TestCluster, links: readonly Link[]): Promise<void> {
  for (const link of links) {
    await cluster.node(link.to).sql.unsafe(`UPDATE pgmesh.apply_progress SET paused_at = NULL, paused_reason = NULL WHERE peer = $1`, [link.from]);
  }
}
