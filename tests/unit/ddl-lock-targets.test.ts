/**
 * Which tables `pgmesh ddl --lock` fences for a query string (src/ddl/ddl-lock.ts): the tables its DDL statements
 * name, none for statements that change no existing table, every replicated table when that cannot be told.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lockTargets } from '../../src/ddl/ddl-lock.ts';

test('the tables named by ALTER TABLE, CREATE INDEX, renames and DROP TABLE, quoted as written', async () => {
  assert.deepEqual(
    await lockTargets(`ALTER TABLE s.orders DROP COLUMN note; UPDATE x SET a = 1; CREATE INDEX ON "Items" (v);
                       ALTER TABLE items RENAME COLUMN a TO b; DROP TABLE a, s.b`),
    { all: false, tables: ['"s"."orders"', '"Items"', '"items"', '"a"', '"s"."b"'] },
  );
});

test('nothing to fence for a new table, a comment or a new sequence', async () => {
  assert.deepEqual(await lockTargets(`CREATE TABLE t (id int PRIMARY KEY); COMMENT ON TABLE t IS 'x'; CREATE SEQUENCE q`), { all: false, tables: [] });
});

test('every replicated table when the statement does not tell which', async () => {
  assert.deepEqual(await lockTargets(`ALTER TABLE t ADD COLUMN c int; ALTER TYPE status ADD VALUE 'x'`), { all: true });
  assert.deepEqual(await lockTargets(`DROP SCHEMA s CASCADE`), { all: true });
  assert.deepEqual(await lockTargets(`CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)`), { all: true });
  assert.deepEqual(await lockTargets(`ALTER TABLE t ADD COLUMN`), { all: true });
});
