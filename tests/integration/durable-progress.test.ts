/**
 * What a node acknowledges to a peer (durableProgress in src/apply/applier.ts): never a transaction that did not
 * commit here. PostgreSQL (16-18) also moves a replication origin's progress when a transaction that has an xid
 * aborts after pg_replication_origin_xact_setup, or with the LSN an earlier setup left in the session: an apply
 * session whose transaction fails after its finish was set up (a fast-path miss, a conflict that pauses the peer)
 * moves the origin past a transaction it never applied. Acknowledging the origin's progress would let the peer's
 * slot skip that transaction for good (seen once in the conflicts test: a paused transaction lost on resume).
 * One real server with the pgmesh catalog and a peer n1; an apply-like session with n1's origin.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { durableProgress } from '../../src/apply/applier.ts';
import { readLinkNames } from '../../src/cluster/link-names.ts';
import { ensurePeer, initNode } from '../../src/cluster/node-admin.ts';
import { formatLsn } from '../../src/core/lsn.ts';
import type { Sql } from '../../src/pg/connect.ts';
import { withServer } from '../support/cluster.ts';

test('the acknowledged position is the last transaction committed here, not an origin moved by an aborted one', { timeout: 120_000 }, async () => {
  await withServer('n2', async (server, sql) => {
    // The apply-like session: a connection of its own, with n1's origin.
    const session = postgres(server.dsn, { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
    try {
      await initNode(sql, { nodeName: 'n2', nodeSlot: 2, maxNodes: 16, expectedPeers: 1 });
      await ensurePeer(sql, { name: 'n1', nodeSlot: 1, endpoint: 'test' });
      await sql.unsafe(`CREATE TABLE t (k integer PRIMARY KEY)`);
      const origin = (await readLinkNames(sql, 'n1'))?.origin ?? '';
      await session.unsafe(`SELECT pg_catalog.pg_replication_origin_session_setup($1)`, [origin]);

      // A transaction applied from n1: its change, its row in the progress log, its origin LSN; committed.
      await session.unsafe(
        `BEGIN; INSERT INTO t VALUES (1);
         INSERT INTO pgmesh.applied_xact (peer, end_lsn, remote_commit_ts) VALUES ('n1', '0/100000', now());
         SELECT pg_catalog.pg_replication_origin_xact_setup('0/100000', now()); COMMIT`,
      );
      assert.equal(formatLsn((await durableProgress(sql, 'n1', origin)) ?? 0n), '0/100000');

      // The next one writes, sets up its origin LSN, then fails: it is rolled back, and never applied here.
      await assert.rejects(
        session.unsafe(`BEGIN; INSERT INTO t VALUES (2); SELECT pg_catalog.pg_replication_origin_xact_setup('0/200000', now()); SELECT 1 / 0`),
        /division by zero/,
      );
      await session.unsafe('ROLLBACK');
      // Then one that only aborts with an xid: the LSN set up before is still the session's.
      await session.unsafe(`BEGIN; INSERT INTO t VALUES (3); ROLLBACK`);

      const originAt = await sql.unsafe<{ lsn: string }[]>(`SELECT pg_catalog.pg_replication_origin_progress($1, true)::text AS lsn`, [origin]);
      assert.equal(originAt[0]?.lsn, '0/200000', 'PostgreSQL moved the origin for the aborted transaction (what this test guards against)');
      assert.equal(formatLsn((await durableProgress(sql, 'n1', origin)) ?? 0n), '0/100000', 'only the committed transaction is acknowledged');
      const rows = await sql.unsafe<{ k: number }[]>(`SELECT k FROM t ORDER BY k`);
      assert.deepEqual(
        rows.map((r) => r.k),
        [1],
      );
    } finally {
      await session.end({ timeout: 1 });
    }
  });
});
