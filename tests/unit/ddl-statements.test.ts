/**
 * The apply side's choice of the DDL statement in a captured query string (src/ddl/statements.ts), with the real
 * PostgreSQL parser: only statements that fire event triggers count, text is cut at the parser's byte offsets
 * (multi-byte names and semicolons inside literals included), and CONCURRENTLY is taken out by token.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DdlMessage } from '../../src/ddl/ddl-message.ts';
import { chooseDdlStatement, firesDdlTrigger, loadParser, splitStatements, withoutConcurrently } from '../../src/ddl/statements.ts';

function message(query: string, ordinal: number, tag: string, serverVersionNum = 170000): DdlMessage {
  return { version: 2, statements: [query], query, ordinal, tag, searchPath: 'public', role: 'app', serverVersionNum, commands: [], joined: [], raw: {} };
}

test('the statements that fire event triggers are told from the others, as PostgreSQL does', async () => {
  await loadParser();
  const text = `CREATE TABLE "ü" (id int PRIMARY KEY); INSERT INTO "ü" VALUES (1); BEGIN; GRANT SELECT ON "ü" TO app; GRANT app TO bob;
    DROP DATABASE x; DROP TABLE y; COMMENT ON DATABASE d IS 'x'; COMMENT ON TABLE "ü" IS 'y;z'; SELECT 1 INTO t2; SELECT 1; VACUUM;
    ALTER TYPE mood ADD VALUE 'meh'; CREATE ROLE r; REINDEX TABLE "ü"; COMMIT`;
  const fired = splitStatements(text).map((s) => `${firesDdlTrigger(s, 160000) ? '+' : '-'} ${s.text}`);
  assert.deepEqual(fired, [
    '+ CREATE TABLE "ü" (id int PRIMARY KEY)',
    '- INSERT INTO "ü" VALUES (1)',
    '- BEGIN',
    '+ GRANT SELECT ON "ü" TO app',
    '- GRANT app TO bob',
    '- DROP DATABASE x',
    '+ DROP TABLE y',
    "- COMMENT ON DATABASE d IS 'x'",
    `+ COMMENT ON TABLE "ü" IS 'y;z'`,
    '+ SELECT 1 INTO t2',
    '- SELECT 1',
    '- VACUUM',
    "+ ALTER TYPE mood ADD VALUE 'meh'",
    '- CREATE ROLE r',
    '- REINDEX TABLE "ü"',
    '- COMMIT',
  ]);
  const [reindex] = splitStatements('REINDEX TABLE t');
  assert.ok(reindex);
  assert.equal(firesDdlTrigger(reindex, 170000), true, 'REINDEX fires from 17 on');
});

test('the n-th DDL statement of the string is chosen, and checked against the command tag the origin saw', async () => {
  const text = `CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a VALUES (1); ALTER TABLE a ADD COLUMN "é" text DEFAULT 'x;y'`;
  assert.deepEqual(await chooseDdlStatement(message(text, 2, 'ALTER TABLE')), { ok: true, statement: `ALTER TABLE a ADD COLUMN "é" text DEFAULT 'x;y'`, rewritten: undefined });
  const shifted = await chooseDdlStatement(message(text, 1, 'ALTER TABLE'));
  assert.equal(shifted.ok, false);
  assert.match(shifted.ok ? '' : shifted.problem, /DDL statement 1 of the query text is "CREATE TABLE a/);
  // The same string run twice with one statement start counts on: 3 is the first statement again.
  assert.equal((await chooseDdlStatement(message(text, 3, 'CREATE TABLE'))).ok, true);
  assert.equal((await chooseDdlStatement(message('SELECT 1', 1, 'CREATE TABLE'))).ok, false);
  assert.match(JSON.stringify(await chooseDdlStatement(message('CREATE TABLE (', 1, 'CREATE TABLE'))), /does not parse here/);
});

test('CONCURRENTLY is taken out of the statement, never out of a literal or a quoted name', async () => {
  await loadParser();
  assert.equal(withoutConcurrently('CREATE INDEX CONCURRENTLY "concurrently" ON t (x)'), 'CREATE INDEX  "concurrently" ON t (x)');
  assert.equal(withoutConcurrently('drop index concurrently i'), 'drop index  i');
  assert.equal(withoutConcurrently('REINDEX (VERBOSE, CONCURRENTLY) TABLE t'), 'REINDEX (VERBOSE, CONCURRENTLY false) TABLE t');
  assert.equal(withoutConcurrently(`CREATE INDEX i ON t ((x = 'CONCURRENTLY'))`), undefined);
  const chosen = await chooseDdlStatement(message('CREATE INDEX CONCURRENTLY "ü_i" ON "ü" ("é")', 1, 'CREATE INDEX'));
  assert.deepEqual(chosen, { ok: true, statement: 'CREATE INDEX  "ü_i" ON "ü" ("é")', rewritten: 'without CONCURRENTLY' });
});
