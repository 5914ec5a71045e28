/**
 * Upgrading a node's catalog (src/cluster/catalog-schema.ts MIGRATIONS, run by initNode): a node installed by an
 * earlier pgmesh keeps where each peer's stream resumes and how many transactions it applied. Losing or resetting that
 * would make the next agent apply a peer's transactions a second time, or skip them.
 * One real server: catalog version 2 installed as the earlier release did, with progress rows; then `init` upgrades.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CATALOG_VERSION, MIGRATIONS } from '../../src/cluster/catalog-schema.ts';
import { ensurePeer, initNode } from '../../src/cluster/node-admin.ts';
import { withServer } from '../support/cluster.ts';

test('init upgrades a version-2 catalog: every peer keeps its resume position, commit time and applied count', { timeout: 120_000 }, async () => {
  await withServer('n1', async (_server, sql) => {
    // The catalog as release 2 left it: migrations 1 and 2, its version row, the local node, progress of two peers
    // (n2 applied 42 transactions, n3 none yet).
    await sql.begin(async (tx) => {
      for (const migration of MIGRATIONS.slice(0, 2)) await tx.unsafe(migration);
      await tx.unsafe(`INSERT INTO pgmesh.catalog_version (version) VALUES (2)`);
      await tx.unsafe(`INSERT INTO pgmesh.local_node (node_name, node_slot, max_nodes) VALUES ('n1', 1, 16)`);
      await tx.unsafe(
        `INSERT INTO pgmesh.apply_progress (peer, end_lsn, remote_commit_ts, applied_xacts, applied_at) VALUES
           ('n2', '0/5000A8', '2026-11-01 10:00:00.123456+00', 42, '2026-11-01 10:00:01+00'),
           ('n3', '0/0', NULL, 0, NULL)`,
      );
    });

    const result = await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 16, expectedPeers: 2 });
    assert.equal(result.created, false, 'the node was there already');
    const version = await sql.unsafe<{ version: number }[]>(`SELECT version FROM pgmesh.catalog_version`);
    assert.equal(version[0]?.version, CATALOG_VERSION);

    const progress = async () =>
      (
        await sql.unsafe<{ peer: string; end_lsn: string; commit_ts: string | null; applied_xacts: string }[]>(
          `SELECT peer, end_lsn::text, to_char(remote_commit_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS commit_ts, applied_xacts::text
             FROM pgmesh.progress ORDER BY peer`,
        )
      ).map((r) => ({ ...r }));
    const expected = [
      { peer: 'n2', end_lsn: '0/5000A8', commit_ts: '2026-11-01 10:00:00.123456', applied_xacts: '42' },
      { peer: 'n3', end_lsn: '0/0', commit_ts: null, applied_xacts: '0' },
    ];
    assert.deepEqual(await progress(), expected, 'each peer resumes where it was, with its count');

    // A transaction applied after the upgrade counts once; folding the log keeps every count.
    await sql.unsafe(`INSERT INTO pgmesh.applied_xact (peer, end_lsn, remote_commit_ts) VALUES ('n2', '0/600000', '2026-11-02 09:00:00+00')`);
    await sql.unsafe(`SELECT pgmesh.prune_applied('n2')`);
    await sql.unsafe(`SELECT pgmesh.prune_applied('n3')`);
    assert.deepEqual(await progress(), [{ peer: 'n2', end_lsn: '0/600000', commit_ts: '2026-11-02 09:00:00.000000', applied_xacts: '43' }, expected[1]]);

    // Running init again changes nothing.
    await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 16, expectedPeers: 2 });
    assert.equal((await progress())[0]?.applied_xacts, '43');
  });
});

/**
 * One real server: catalog version 3 (before out-of-line values were sent whole) with tables already replicated under
 * the default replica identity, one of them partitioned. `init` upgrades it: every replicated table, and each
 * partition, logs its whole old row, so its peers can apply updates that leave an out-of-line value unchanged.
 * Without the migration those tables' updates would keep leaving nodes different until someone ran "tables add".
 */
test('init upgrades a version-3 catalog: tables already replicated get REPLICA IDENTITY FULL, partitions included', { timeout: 120_000 }, async () => {
  await withServer('n1', async (_server, sql) => {
    await sql.begin(async (tx) => {
      for (const migration of MIGRATIONS.slice(0, 3)) await tx.unsafe(migration);
      await tx.unsafe(`INSERT INTO pgmesh.catalog_version (version) VALUES (3)`);
      await tx.unsafe(`INSERT INTO pgmesh.local_node (node_name, node_slot, max_nodes) VALUES ('n1', 1, 16)`);
      await tx.unsafe(`CREATE PUBLICATION pgmesh WITH (publish = 'insert, update, delete, truncate')`);
      await tx.unsafe(`CREATE TABLE doc (id integer PRIMARY KEY, body text)`);
      await tx.unsafe(`CREATE TABLE event (id integer, at date, body text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)`);
      await tx.unsafe(`CREATE TABLE event_2026 PARTITION OF event FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`);
      await tx.unsafe(`CREATE TABLE local_only (id integer PRIMARY KEY, body text)`);
      await tx.unsafe(`ALTER PUBLICATION pgmesh ADD TABLE doc, event`);
    });
    const identities = async () =>
      Object.fromEntries(
        (
          await sql.unsafe<{ relname: string; relreplident: string }[]>(
            `SELECT relname, relreplident FROM pg_catalog.pg_class WHERE relname IN ('doc', 'event', 'event_2026', 'local_only') ORDER BY 1`,
          )
        ).map((r) => [r.relname, r.relreplident]),
      );
    assert.deepEqual(await identities(), { doc: 'd', event: 'd', event_2026: 'd', local_only: 'd' });
    await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 16, expectedPeers: 2 });
    assert.deepEqual(await identities(), { doc: 'f', event: 'f', event_2026: 'f', local_only: 'd' }, 'replicated tables log their whole old row; others are left alone');
  });
});

/**
 * One real server: catalog version 22 (the last release), whose slot and origin names did not carry the database's OID, with a link from
 * n2 (its origins pgmesh_n2 and pgmeshr_n2, its slot on n2 pgmesh_n1). `init` upgrades it (migration 31).
 * Without the code under test: the link would be looked up under the new names (pgmesh_<oid>_n2), which do not
 * exist: n1 would stream from no slot and apply with no origin. And versions written through a new origin would read
 * as '?<id>' or as the origin's name instead of their node.
 */
test('init upgrades a version-22 catalog: links made before keep their old slot and origin names, new links get the new ones', { timeout: 120_000 }, async () => {
  await withServer('n1', async (_server, sql) => {
    await sql.begin(async (tx) => {
      for (const migration of MIGRATIONS.slice(0, 22)) await tx.unsafe(migration);
      await tx.unsafe(`INSERT INTO pgmesh.catalog_version (version) VALUES (22)`);
      await tx.unsafe(`INSERT INTO pgmesh.local_node (node_name, node_slot, max_nodes) VALUES ('n1', 1, 16)`);
      await tx.unsafe(`INSERT INTO pgmesh.peer (node_name, node_slot, endpoint) VALUES ('n2', 2, 'n2.example')`);
      await tx.unsafe(`SELECT pg_catalog.pg_replication_origin_create('pgmesh_n2'), pg_catalog.pg_replication_origin_create('pgmeshr_n2')`);
    });
    await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 16, expectedPeers: 2 });
    const oid = (await sql.unsafe<{ oid: string }[]>(`SELECT oid::text FROM pg_database WHERE datname = current_database()`))[0]?.oid;
    const links = async () =>
      (await sql.unsafe<{ node_name: string; slot_name: string | null; origin_name: string; replay_origin_name: string }[]>(
        `SELECT node_name, slot_name, origin_name, replay_origin_name FROM pgmesh.peer ORDER BY node_name`,
      )).map((r) => ({ ...r }));
    const old = { node_name: 'n2', slot_name: 'pgmesh_n1', origin_name: 'pgmesh_n2', replay_origin_name: 'pgmeshr_n2' };
    assert.deepEqual(await links(), [old], 'the link made before is recorded with the names it has');

    // Linked again (cluster create run again), it keeps its origins; a new link (n3) gets names with the OID.
    await ensurePeer(sql, { name: 'n2', nodeSlot: 2, endpoint: 'n2.example', slot: 'pgmesh_n1' });
    await ensurePeer(sql, { name: 'n3', nodeSlot: 3, endpoint: 'n3.example', slot: 'pgmesh_16999_n1' });
    assert.deepEqual(await links(), [old, { node_name: 'n3', slot_name: 'pgmesh_16999_n1', origin_name: `pgmesh_${oid}_n3`, replay_origin_name: `pgmeshr_${oid}_n3` }]);

    // A version reads as its node through every kind of origin name, old and new.
    await sql.unsafe(`CREATE TABLE t (k integer PRIMARY KEY)`);
    const origins = ['pgmesh_n2', 'pgmeshr_n2', `pgmesh_${oid}_n3`, `pgmeshr_${oid}_n3`];
    for (const [i, origin] of origins.entries()) {
      await sql.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup($1)`, [origin]);
      await sql.unsafe(`INSERT INTO t VALUES ($1::text::int)`, [String(i)]);
      await sql.unsafe(`SELECT pg_catalog.pg_replication_origin_session_reset()`);
    }
    const nodes = await sql.unsafe<{ a: string; b: string }[]>(
      `SELECT v.node AS a, pgmesh.origin_node((pg_xact_commit_timestamp_origin(t.xmin)).roident, 'n1') AS b
         FROM t CROSS JOIN LATERAL pgmesh.row_version(t.xmin, 'n1') v ORDER BY t.k`,
    );
    assert.deepEqual(nodes.map((r) => `${r.a} ${r.b}`), ['n2 n2', 'n2 n2', 'n3 n3', 'n3 n3']);
  });
});
