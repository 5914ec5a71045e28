/**
 * The CLI as scripts use it: the real `pgmesh` command (tests/support/cli.ts) against real servers.
 * Topology: one server where pgmesh was never installed; then 2 servers, created by the CLI with a table that has no
 * key, linked, first without agents and then with both running.
 * Scenario: commands on the uninitialized node, bad option values, --json errors, cluster create's partial success,
 * status --check before and after the agents stream, status --watch into a pipe, ddl as a LOGIN-only role, node
 * add's output.
 * Without the code under test: `relation "pgmesh.conflict" does not exist` instead of "not initialized"; `ddl 'select
 * 1'` says it ran and replicates (exit 0) on a node without pgmesh; errors are prose even with --json; `conflicts
 * --type bogus` and `demo --rate -1` are accepted; cluster create exits 1 under a "linked" success line; status exits 0
 * with no link streaming (and has no --check); --watch writes clear-screen codes into a pipe, without timestamps;
 * node add's info-level JSON log lines come out between its progress lines.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pgmesh, spawnPgmesh } from '../support/cli.ts';
import { eventually, withCluster, withServer } from '../support/cluster.ts';
import { dsnAs } from '../support/roles.ts';

interface JsonError {
  readonly error: { readonly code: string; readonly message: string };
}

function jsonError(stdout: string): JsonError['error'] {
  const parsed = JSON.parse(stdout) as JsonError;
  assert.equal(typeof parsed.error?.code, 'string', `an error object: ${stdout}`);
  return parsed.error;
}

test('a node without pgmesh: every command says "not initialized", in text and in JSON', { timeout: 120_000 }, async () => {
  await withServer('bare', async (server, sql) => {
    const config = join(server.dataDir, '..', 'cluster.json');
    // Two nodes in two databases of the server (resume needs a peer); neither has pgmesh.
    await sql.unsafe('CREATE DATABASE second');
    const second = new URL(server.dsn);
    second.pathname = '/second';
    writeFileSync(config, JSON.stringify({ nodes: [{ name: 'n1', dsn: server.dsn }, { name: 'n2', dsn: second.href }] }));
    await sql.unsafe('CREATE TABLE t (id int PRIMARY KEY)');
    const runs: string[][] = [
      ['conflicts', '--node', 'n1'],
      ['conflicts', 'restore', '1', '--node', 'n1'],
      ['exceptions', 'list', '--node', 'n1'],
      ['exceptions', 'replay', '1', '--node', 'n1'],
      ['exceptions', 'discard', '1', '--node', 'n1'],
      ['resume', '--node', 'n1', '--peer', 'n2'],
      ['ddl', 'select 1', '--node', 'n1'],
      ['tables', 'add', 'public.t'],
      ['tables', 'remove', 'public.t'],
      ['tables', 'policy', 'public.t', '--conflicts', 'keep_local'],
      ['tables', 'delta', 'public.t', 'id'],
    ];
    for (const args of runs) {
      const text = await pgmesh(args, { config });
      assert.equal(text.code, 1, `pgmesh ${args.join(' ')} fails:\n${text.output}`);
      // The wording of the commands that always checked (tables, start) or the one added for the others.
      assert.match(text.stderr, /not initialized|has no pgmesh catalog; run "pgmesh init"/, `pgmesh ${args.join(' ')}`);
      assert.doesNotMatch(text.output, /does not exist|replicates/, `pgmesh ${args.join(' ')}`);
      assert.equal(text.stdout, '', `pgmesh ${args.join(' ')}: nothing on stdout`);

      const json = await pgmesh([...args, '--json'], { config });
      assert.equal(json.code, 1);
      assert.equal(jsonError(json.stdout).code, 'NOT_INITIALIZED', `pgmesh ${args.join(' ')} --json`);
    }

    // Bad input: exit 2, code USAGE (the command line) or CONFIG_INVALID (the configuration).
    const bogus = await pgmesh(['conflicts', '--node', 'n1', '--type', 'bogus', '--json'], { config });
    assert.equal(bogus.code, 2, bogus.output);
    assert.equal(jsonError(bogus.stdout).code, 'USAGE');
    assert.equal(bogus.stderr, '', 'with --json the error is the answer, no help text');
    const rate = await pgmesh(['demo', '--rate', '-1']);
    assert.equal(rate.code, 2, rate.output);
    assert.match(rate.stderr, /--rate/);
    const unknown = await pgmesh(['status', '--json'], { config: join(server.dataDir, 'no-such.json') });
    assert.equal(unknown.code, 2, unknown.output);
    assert.equal(jsonError(unknown.stdout).code, 'CONFIG_INVALID');
  });
});

test('cluster create with a table left out, status --check, and status --watch into a pipe', { timeout: 240_000 }, async () => {
  const schema = 'CREATE TABLE keyed (id int PRIMARY KEY, v text); CREATE TABLE loose (v text)';
  await withCluster({ nodes: 2, schema, link: false }, async (cluster) => {
    // Partial success: exit 1, and neither the text nor the JSON says it all went well.
    const created = await pgmesh(['cluster', 'create'], { config: cluster.configPath });
    assert.equal(created.code, 1, created.output);
    assert.match(created.stdout, /INCOMPLETE: 1 table\(s\) do not replicate: public\.loose/);
    assert.doesNotMatch(created.stdout, /cluster created;/);
    const again = await pgmesh(['cluster', 'create', '--json'], { config: cluster.configPath });
    assert.equal(again.code, 1, again.output);
    const result = JSON.parse(again.stdout) as { complete: boolean; notReplicated: string[] };
    assert.equal(result.complete, false);
    assert.deepEqual(result.notReplicated, ['public.loose']);

    // No agent: no link streams; --check says so for each, and exits 1. Plain status keeps its exit code 0.
    const plain = await pgmesh(['status'], { config: cluster.configPath });
    assert.equal(plain.code, 0, plain.output);
    const down = await pgmesh(['status', '--check', '--json'], { config: cluster.configPath });
    assert.equal(down.code, 1, down.output);
    const health = JSON.parse(down.stdout) as { healthy: boolean; problems: { kind: string; node: string; peer?: string }[] };
    assert.equal(health.healthy, false);
    assert.deepEqual(
      health.problems.filter((p) => p.kind === 'link_not_streaming').map((p) => `${p.peer} -> ${p.node}`).sort(),
      ['n1 -> n2', 'n2 -> n1'],
    );
    const text = await pgmesh(['status', '--check'], { config: cluster.configPath });
    assert.equal(text.code, 1);
    assert.match(text.stdout, /check: 2 problem\(s\)\n {2}n1 -> n2 is not streaming/);

    await cluster.startAgents();
    await eventually(async () => (await pgmesh(['status', '--check'], { config: cluster.configPath })).code === 0, {
      timeoutMs: 60_000,
      what: 'status --check to pass once both agents stream',
    });

    // --watch into a pipe: appended refreshes, each with its time, no terminal escape codes.
    const watch = spawnPgmesh(['status', '--watch', '0.5'], { config: cluster.configPath });
    let seen = '';
    watch.child.stdout?.on('data', (chunk: Buffer) => (seen += chunk.toString()));
    try {
      await eventually(() => (seen.match(/^--- \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/gm) ?? []).length >= 2, {
        timeoutMs: 30_000,
        what: () => `two timestamped refreshes; so far:\n${seen}`,
      });
    } finally {
      watch.child.kill('SIGINT');
      await watch.exited;
    }
    assert.doesNotMatch(seen, /\x1b/, 'no escape codes into a pipe');

    // A LOGIN-only role (no right in schema pgmesh, as an application's) runs ddl: the check that the node has pgmesh
    // reads the system catalogs, which it may (to_regclass('pgmesh.local_node') fails: permission denied for schema).
    await cluster.node('n1').sql.unsafe(`CREATE ROLE app LOGIN PASSWORD 'app-pw'`);
    const asApp = await pgmesh(['ddl', 'select 1', '--node', 'n1'], { config: cluster.configPath, env: { PGMESH_DSN_N1: dsnAs(cluster.node('n1'), 'app', 'app-pw') } });
    assert.equal(asApp.code, 0, asApp.output);
    assert.match(asApp.stdout, /^ran on n1; it replicates to n2/);

    // node add runs agent steps in-process: their log lines stay out of what it prints (stdout one JSON document).
    const n3 = await cluster.startServer('n3', schema);
    // Its password in PGMESH_DSN_N3, not on the command line (where pgmesh refuses it).
    const added = await pgmesh(['node', 'add', 'n3', '--from', 'n1', '--json'], {
      config: cluster.configPath,
      env: { PGMESH_DSN_N3: n3.server.dsn },
      timeoutMs: 120_000,
    });
    assert.equal(added.code, 0, added.output);
    assert.equal((JSON.parse(added.stdout) as { name?: string }).name ?? 'n3', 'n3');
    assert.doesNotMatch(added.stderr, /"level":\s*30/, `no info-level log lines:\n${added.stderr}`);
  });
});
