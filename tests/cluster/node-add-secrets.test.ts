/**
 * Topology: a 2-node cluster (n1, n2, agents in this process) and a third server that joins as n3 through the CLI.
 * Scenario: the operator keeps n3's password out of the command line and out of the file, as README says:
 * `PGMESH_DSN_N3=postgres://...:password@... pgmesh node add n3`. The join completes, the configuration lists n3 with
 * its connection string without the password, and the output shows no password; `--dsn` with a password in it is
 * refused before anything is done.
 * Without the code under test: node add refused PGMESH_DSN_N3 ("the configuration has no node n3"), so the password
 * had to go on the command line (readable by every user in ps), from where node add wrote it into the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { assertNoSecret, pgmesh } from '../support/cli.ts';
import { withCluster } from '../support/cluster.ts';

test('node add takes the new node\'s connection string from PGMESH_DSN_<NODE> and writes no password into the config', { timeout: 240_000 }, async () => {
  await withCluster({ nodes: 2, schema: 'CREATE TABLE items (id bigint PRIMARY KEY, label text);' }, async (cluster) => {
    await cluster.startAgents();
    await cluster.node('n1').sql`INSERT INTO items VALUES (1, 'one'), (2, 'two')`;
    const n3 = await cluster.startServer('n3', 'CREATE TABLE items (id bigint PRIMARY KEY, label text);');
    const password = n3.server.password;

    const onCommandLine = await pgmesh(['node', 'add', 'n3', '--from', 'n1', '--dsn', n3.server.dsn], { config: cluster.configPath });
    assert.equal(onCommandLine.code, 2, onCommandLine.output);
    assert.match(onCommandLine.stderr, /--dsn carries a password, which every user of this machine can read on a command line; give the connection string in PGMESH_DSN_N3/);
    assertNoSecret(onCommandLine.output, [password], 'the refusal');

    const add = await pgmesh(['node', 'add', 'n3', '--from', 'n1'], { config: cluster.configPath, env: { PGMESH_DSN_N3: n3.server.dsn }, timeoutMs: 180_000 });
    assert.equal(add.code, 0, add.output);
    assert.match(add.stdout, /node n3 joined from n1/);
    assertNoSecret(add.output, [password], 'node add');
    const file = readFileSync(cluster.configPath, 'utf8');
    const listed = (JSON.parse(file) as { nodes: { name: string; dsn: string }[] }).nodes.find((n) => n.name === 'n3');
    // (The test cluster's own entries carry the password it gave them; n3's, written by pgmesh, does not.)
    assert.equal(listed?.dsn, `postgres://postgres@127.0.0.1:${n3.server.port}/postgres`);
    assert.equal((await n3.sql<{ n: string }[]>`SELECT count(*)::text AS n FROM items`)[0]?.n, '2');
  });
});
