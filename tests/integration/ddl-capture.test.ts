/**
 * One server, pgmesh installed. Scenario: DDL run by local sessions, read back from a test_decoding slot: each DDL
 * statement of a query string is one transactional 'pgmesh.ddl' message at its place among the row changes, with
 * which DDL statement of the string it is (the string's statements that may be DDL travel, signed); node-local DDL emits nothing; DDL that cannot be replayed faithfully is
 * refused with an error that says what to do instead.
 * Without the code under test: no message at all, or the same query string sent once per statement without saying
 * which, and DDL hidden in a DO block replicated as nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initNode } from '../../src/cluster/node-admin.ts';
import { decodeDdlMessage } from '../../src/ddl/ddl-message.ts';
import { readClusterKey, verifyMessage } from '../../src/ddl/message-auth.ts';
import { withServer, type Sql } from '../support/cluster.ts';

async function withCapture(body: (sql: Sql, captured: () => Promise<string[]>) => Promise<void>): Promise<void> {
  await withServer('capture', async (_server, sql) => {
    await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 4, expectedPeers: 0 });
    await sql.unsafe(`SELECT pg_create_logical_replication_slot('capture', 'test_decoding')`);
    // Messages as "tag #ordinal as role: statements", row changes of user tables as test_decoding prints them. Each
    // message's signature is checked as a peer checks it, with the transaction's xid (test_decoding's BEGIN).
    const captured = async () => {
      const key = await readClusterKey(sql);
      const rows = await sql.unsafe<{ data: string }[]>(`SELECT data FROM pg_logical_slot_get_changes('capture', NULL, NULL)`);
      let xid = 0;
      const out: string[] = [];
      for (const d of rows.map((r) => r.data)) {
        if (d.startsWith('BEGIN')) xid = Number(d.slice('BEGIN '.length));
        if (d.startsWith('BEGIN') || d.startsWith('COMMIT') || d.startsWith('table pgmesh.')) continue;
        const at = d.indexOf('content:');
        if (!d.startsWith('message:') || at < 0) {
          out.push(d.replace(/^table /, ''));
          continue;
        }
        const verified = verifyMessage(key, 'pgmesh.ddl', 'n1', xid, Buffer.from(d.slice(at + 'content:'.length)));
        assert.ok(verified.ok, verified.ok ? '' : verified.problem);
        const m = decodeDdlMessage(verified.body);
        out.push(`${m.tag} #${m.ordinal} as ${m.role}: ${m.statements.map((t) => t.trim()).join('; ')}`);
      }
      return out;
    };
    await body(sql, captured);
  });
}

async function refusal(sql: Sql, query: string): Promise<string> {
  const error = await sql.unsafe(query).then(
    () => undefined,
    (e: { message: string; hint?: string }) => `${e.message} | ${e.hint ?? ''}`,
  );
  assert.ok(error, `"${query}" was refused`);
  return error;
}

test('each DDL statement of a query string is one message, in place among the row changes, with its number', { timeout: 60_000 }, async () => {
  await withCapture(async (sql, captured) => {
    const script = `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); ALTER TABLE t ADD COLUMN v text; INSERT INTO t VALUES (2, 'x')`;
    await sql.unsafe(script);
    // Only the statements that may be DDL travel, not the rows of the string.
    const ddl = 'CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t ADD COLUMN v text';
    assert.deepEqual(await captured(), [
      `CREATE TABLE #1 as postgres: ${ddl}`,
      'public.t: INSERT: id[integer]:1',
      `ALTER TABLE #2 as postgres: ${ddl}`,
      "public.t: INSERT: id[integer]:2 v[text]:'x'",
    ]);
  });
});

test('DDL local to the node emits nothing: temporary objects, capture turned off, pgmesh itself', { timeout: 60_000 }, async () => {
  await withCapture(async (sql, captured) => {
    await sql.unsafe(`CREATE TEMP TABLE scratch (a int); DROP TABLE scratch; CREATE TABLE kept (id int PRIMARY KEY)`);
    await sql.unsafe(`BEGIN; SET LOCAL pgmesh.ddl_capture = off; CREATE TABLE here_only (id int PRIMARY KEY); COMMIT`);
    await initNode(sql, { nodeName: 'n1', nodeSlot: 1, maxNodes: 4, expectedPeers: 0 });
    // The third DDL statement of the string, though the first two emitted nothing.
    assert.deepEqual(await captured(), [
      'CREATE TABLE #3 as postgres: CREATE TEMP TABLE scratch (a int); DROP TABLE scratch; CREATE TABLE kept (id int PRIMARY KEY)',
    ]);
  });
});

test('DDL inside a DO block, a function or a procedure is refused at the origin, with what to do instead', { timeout: 60_000 }, async () => {
  await withCapture(async (sql, captured) => {
    const doBlock = await refusal(sql, `DO $$ BEGIN CREATE TABLE hidden (id int PRIMARY KEY); END $$`);
    assert.match(doBlock, /CREATE TABLE inside a function, procedure or DO block cannot be replicated \| Run the DDL statements directly/);
    await sql.unsafe(`CREATE FUNCTION make_it() RETURNS void LANGUAGE sql AS 'CREATE TABLE hidden2 (id int PRIMARY KEY)'`);
    assert.match(await refusal(sql, `SELECT make_it()`), /inside a function, procedure or DO block/);
    const [left] = await sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM pg_class WHERE relname IN ('hidden', 'hidden2')`);
    assert.equal(left?.n, '0');
    assert.deepEqual(await captured(), [`CREATE FUNCTION #1 as postgres: CREATE FUNCTION make_it() RETURNS void LANGUAGE sql AS 'CREATE TABLE hidden2 (id int PRIMARY KEY)'`]);
  });
});

test('CREATE TABLE AS with rows is refused at the origin; without rows it replicates', { timeout: 60_000 }, async () => {
  await withCapture(async (sql, captured) => {
    assert.match(await refusal(sql, `CREATE TABLE copied AS SELECT g AS id FROM generate_series(1, 3) g`), /CREATE TABLE AS with rows cannot be replicated: every node would compute its own rows \| Create the table with CREATE TABLE/);
    assert.match(await refusal(sql, `SELECT 1 AS id INTO copied2`), /SELECT INTO with rows cannot be replicated/);
    await sql.unsafe(`UPDATE pgmesh.ddl_settings SET tables_without_primary_key = 'local'`);
    await sql.unsafe(`CREATE TABLE shape AS SELECT 1 AS id WITH NO DATA`);
    assert.deepEqual(await captured(), ['CREATE TABLE AS #1 as postgres: CREATE TABLE shape AS SELECT 1 AS id WITH NO DATA']);
  });
});

test('a new table without a primary key is refused, or kept out of replication by the setting', { timeout: 60_000 }, async () => {
  await withCapture(async (sql, captured) => {
    assert.match(await refusal(sql, `CREATE TABLE loose (a int)`), /table public.loose has no primary key, so it cannot be replicated \| Give the table a primary key, or set pgmesh.ddl_settings.tables_without_primary_key to 'local'/);
    await sql.unsafe(`UPDATE pgmesh.ddl_settings SET tables_without_primary_key = 'local'`);
    await sql.unsafe(`CREATE TABLE loose (a int); CREATE TABLE keyed (id int PRIMARY KEY)`);
    const published = await sql.unsafe<{ t: string }[]>(`SELECT tablename AS t FROM pg_publication_tables WHERE pubname = 'pgmesh' ORDER BY 1`);
    assert.deepEqual(published.map((r) => r.t), ['keyed']);
    assert.equal((await captured()).length, 2, 'both statements replicate (the table without a key is created everywhere, and stays local everywhere)');
  });
});
