/**
 * Topology: 2 real servers, linked by `cluster create` (the test harness's), on empty tables with a bigserial key and
 * a key from a descending sequence; no agent yet, nothing inserted: the first thing a new user sees.
 * Scenario: `pgmesh status` and pgmesh.sequence_status read right after cluster create, while the interleaved
 * sequences were never called.
 * Without the code under test (migration 24): the view counts the values left from the value before the sequence's
 * start, the bigint maximum minus a negative number: "bigint out of range", status shows "! node n1: reading its
 * status failed" and exits 1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pgmesh } from '../support/cli.ts';
import { withCluster } from '../support/cluster.ts';

const SCHEMA = `
CREATE TABLE items (id bigserial PRIMARY KEY, v text);
CREATE SEQUENCE down_seq INCREMENT BY -1 MAXVALUE -1 START WITH -1;
CREATE TABLE down (id bigint PRIMARY KEY DEFAULT nextval('down_seq'), v text);
`;

test('status and sequence_status right after cluster create on empty tables keyed by sequences', { timeout: 180_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    for (const node of cluster.nodes) {
      const rows = await node.sql.unsafe<{ sequence_name: string; last_value: string | null; values_left: string; start: string; min: string; max: string; increment: string }[]>(
        `SELECT st.sequence_name, st.last_value::text, st.values_left::text, st.increment::text,
                ps.start_value::text AS start, ps.min_value::text AS min, ps.max_value::text AS max
           FROM pgmesh.sequence_status st JOIN pg_catalog.pg_sequences ps ON format('%s.%s', ps.schemaname, ps.sequencename) = st.sequence_name
          ORDER BY 1`,
      );
      assert.deepEqual(rows.map((r) => r.sequence_name), ['public.down_seq', 'public.items_id_seq'], `${node.name}: both sequences listed`);
      for (const r of rows) {
        assert.equal(r.last_value, null, `${r.sequence_name} was never called`);
        // The node hands out start, start + step, ... up to the limit: |limit - start| / |step| + 1 values.
        const step = BigInt(r.increment);
        const expected = step > 0n ? (BigInt(r.max) - BigInt(r.start)) / step + 1n : (BigInt(r.start) - BigInt(r.min)) / -step + 1n;
        assert.equal(BigInt(r.values_left), expected, `${node.name}: values left of ${r.sequence_name}`);
      }
    }

    const result = await pgmesh(['status', '--json'], { config: cluster.configPath });
    assert.equal(result.code, 0, `status exits 0 on a new cluster:\n${result.output}`);
    const status = JSON.parse(result.stdout) as { nodes: { name: string; error: string | null; sequences: { interleaved: number } | null }[] };
    for (const node of status.nodes) {
      assert.equal(node.error, null, `node ${node.name} reads without error`);
      assert.equal(node.sequences?.interleaved, 2, `node ${node.name}: its sequences are interleaved`);
    }
  });
});
