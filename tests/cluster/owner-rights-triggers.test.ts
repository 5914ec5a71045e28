/**
 * Topology: 2 nodes, full mesh, agents in this process (as the installing superuser).
 * Scenario: an application role `app` that owns only its schema creates an enum, casts from it to json and jsonb
 * whose functions make `app` a superuser when they run as one, and replicated tables that use the enum: as a plain
 * column, as the primary key, as a unique column, and inside an array key. It then deletes, changes keys and unique
 * values as `app`. pgmesh's tombstone, key-change and unique-release triggers run as the catalog's owner; they must
 * not call the casts (they spell keys as the apply statements do, by the enum's output function) and the tombstones
 * and claims they write must be those the other node writes when it applies the same changes. A key that pgmesh
 * cannot spell without the cast (an array of the enum) is refused with PM010.
 * Without the code under test (to_jsonb on the whole row in the definer triggers): the first DELETE runs app.evil as
 * the superuser and `app` is a superuser on n1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, withCluster, type Sql, type TestCluster } from '../support/cluster.ts';
import { isSuperuser, withRole } from '../support/roles.ts';

const SCHEMA = `
CREATE ROLE app LOGIN PASSWORD 'app-pw';
CREATE SCHEMA app AUTHORIZATION app;
SET ROLE app;
CREATE TYPE app.mood AS ENUM ('happy', 'sad', 'calm');
CREATE TABLE app.notes (id integer PRIMARY KEY, mood app.mood);
CREATE TABLE app.tags (name app.mood PRIMARY KEY, n integer);
CREATE TABLE app.labels (id integer PRIMARY KEY, mood app.mood UNIQUE);
CREATE TABLE app.pairs (id app.mood[] PRIMARY KEY);
INSERT INTO app.notes VALUES (1, 'happy'), (2, 'sad');
INSERT INTO app.tags VALUES ('happy', 1), ('sad', 2);
INSERT INTO app.labels VALUES (1, 'happy'), (2, 'calm');
INSERT INTO app.pairs VALUES ('{happy,sad}');
RESET ROLE;
`;

// Created by app on n1 (whose guard is disabled): the attack is on n1's triggers. The statements replicate; n2's guard
// refuses the casts there (exceptions), and n2's apply statements must spell the same keys without any cast.
const CASTS = `
CREATE FUNCTION app.evil(v app.mood) RETURNS json LANGUAGE plpgsql AS $fn$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    ALTER ROLE app SUPERUSER;
  END IF;
  RETURN to_json(v::text);
END
$fn$;
CREATE FUNCTION app.evilb(v app.mood) RETURNS jsonb LANGUAGE sql AS $fn$ SELECT app.evil(v)::jsonb $fn$;
CREATE CAST (app.mood AS json) WITH FUNCTION app.evil(app.mood);
CREATE CAST (app.mood AS jsonb) WITH FUNCTION app.evilb(app.mood);
`;

const asApp = <T>(cluster: TestCluster, node: string, body: (sql: Sql) => Promise<T>): Promise<T> => withRole(cluster.node(node), 'app', 'app-pw', body);

async function stored(cluster: TestCluster, node: string): Promise<string[]> {
  const rows = await cluster.node(node).sql.unsafe<{ line: string }[]>(
    `SELECT relid::regclass || ' ' || pkey AS line FROM pgmesh.tombstone
     UNION ALL SELECT relid::regclass || ' claim ' || value || ' ' || pkey FROM pgmesh.unique_claim ORDER BY 1`,
  );
  return rows.map((r) => r.line);
}

test('the definer triggers never call a cast that a table owner created, and spell keys as the apply side does', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, schema: SCHEMA }, async (cluster) => {
    await cluster.startAgents();
    // pgmesh refuses such casts on types of replicated tables (owner-code-sql.ts); the triggers must hold without that
    // guard too (defence in depth), so n1's superuser disables it here.
    await cluster.node('n1').sql.unsafe(`ALTER EVENT TRIGGER pgmesh_owner_code_guard DISABLE`);
    await asApp(cluster, 'n1', (sql) => sql.begin((tx) => tx.unsafe(CASTS)));
    await asApp(cluster, 'n1', async (sql) => {
      await sql.unsafe(`DELETE FROM app.notes WHERE id = 1`);
      await sql.unsafe(`DELETE FROM app.tags WHERE name = 'happy'`);
      await sql.unsafe(`UPDATE app.tags SET name = 'calm' WHERE name = 'sad'`);
      await sql.unsafe(`UPDATE app.labels SET mood = 'sad' WHERE id = 1`);
      await sql.unsafe(`DELETE FROM app.labels WHERE id = 2`);
    });
    assert.equal(await isSuperuser(cluster.node('n1'), 'app'), false, 'a trigger ran app.evil as the superuser');

    const expected = [
      'app.labels [2]',
      'app.labels claim ["calm"] [2]',
      'app.labels claim ["happy"] [1]',
      'app.notes [1]',
      'app.tags ["happy"]',
      'app.tags ["sad"]',
    ];
    assert.deepEqual(await stored(cluster, 'n1'), expected);
    // n2 applied the same changes with its apply statements: the same tombstones and claims, spelled alike (and the
    // claim on the value that the update took, which the apply side records as well).
    const applied = [...expected, 'app.labels claim ["sad"] [1]'].sort();
    let seen: string[] = [];
    await eventually(async () => JSON.stringify((seen = await stored(cluster, 'n2'))) === JSON.stringify(applied), {
      what: () => `n2 to store ${JSON.stringify(applied)} (it has ${JSON.stringify(seen)})`,
    });

    // An array of the enum as a key: refused, never spelled with the cast.
    const refused = await asApp(cluster, 'n1', (sql) => sql.unsafe(`DELETE FROM app.pairs`)).then(
      () => undefined,
      (error: { code?: string }) => error.code,
    );
    assert.equal(refused, 'PM010');
    assert.equal(await isSuperuser(cluster.node('n1'), 'app'), false, 'a trigger ran app.evil as the superuser');
  });
});
