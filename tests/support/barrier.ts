/**
 * A causal barrier for cluster tests: every node writes a new marker into a replicated table, then the barrier
 * waits until every node holds every other node's marker. A peer's stream is applied in its commit order, so once
 * node L holds P's marker, L has applied everything P committed before it. After the barrier, table contents are
 * final and can be compared once, exactly: no polling until hashes happen to agree.
 * The table must exist on every node when the cluster is created (add BARRIER_TABLE to the schema).
 */
import { eventually, type TestCluster } from './cluster.ts';

export const BARRIER_TABLE = `CREATE TABLE pgmesh_test_barrier (node text PRIMARY KEY, seq bigint NOT NULL);`;

const sequences = new WeakMap<TestCluster, number>();

/** Needs every agent running. */
export async function barrier(cluster: TestCluster, timeoutMs = 60_000): Promise<void> {
  const seq = (sequences.get(cluster) ?? 0) + 1;
  sequences.set(cluster, seq);
  for (const node of cluster.nodes) {
    await node.sql.unsafe(
      `INSERT INTO pgmesh_test_barrier (node, seq) VALUES ($1, $2::text::bigint) ON CONFLICT (node) DO UPDATE SET seq = EXCLUDED.seq`,
      [node.name, String(seq)],
    );
  }
  let missing: string[] = [];
  await eventually(
    async () => {
      missing = [];
      for (const node of cluster.nodes) {
        const rows = await node.sql.unsafe<{ node: string }[]>(`SELECT node FROM pgmesh_test_barrier WHERE seq >= $1::text::bigint`, [String(seq)]);
        const seen = new Set(rows.map((r) => r.node));
        for (const other of cluster.nodes) if (!seen.has(other.name)) missing.push(`${other.name}->${node.name}`);
      }
      return missing.length === 0;
    },
    { timeoutMs, what: () => `barrier ${seq} to pass every link (missing: ${missing.join(', ')})` },
  );
}

/**
 * Waits until node `to` has applied everything node `from` committed so far (one link only; others may be held):
 * `from` writes a new marker, and a peer's stream is applied in its commit order.
 */
export async function linkBarrier(cluster: TestCluster, link: { readonly from: string; readonly to: string }, timeoutMs = 60_000): Promise<void> {
  const seq = (sequences.get(cluster) ?? 0) + 1;
  sequences.set(cluster, seq);
  await cluster
    .node(link.from)
    .sql.unsafe(`INSERT INTO pgmesh_test_barrier (node, seq) VALUES ($1, $2::text::bigint) ON CONFLICT (node) DO UPDATE SET seq = EXCLUDED.seq`, [
      link.from,
      String(seq),
    ]);
  await eventually(
    async () => (await cluster.node(link.to).sql.unsafe(`SELECT 1 FROM pgmesh_test_barrier WHERE node = $1 AND seq >= $2::text::bigint`, [link.from, String(seq)])).length > 0,
    { timeoutMs, what: `${link.to} to apply ${link.from}'s changes up to marker ${seq}` },
  );
}
