/**
 * Topology: small clusters of 2 or 3 real servers; agents in this process; the real `pgmesh` CLI in child processes.
 * Scenario: the bad input a user meets first: server settings pgmesh cannot run with, a wrong password, a peer that
 * is not there (a closed port, and a port that accepts and never answers), a table without a primary key, a table
 * name that does not exist, an agent started for a node that was never initialized, a malformed configuration.
 * Each must end quickly with a message that says what to do, the right exit code, and no password anywhere.
 * Without the code under test: driver stack traces, commands that hang on a dead peer, a node half-installed after
 * a refusal, one node publishing a table another cannot take (which stops that whole stream), passwords in output.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from '../../src/agent/agent.ts';
import { clusterStatus, createCluster } from '../../src/cluster/cluster-ops.ts';
import { loadConfig, type ClusterConfig } from '../../src/config/config.ts';
import { PgmeshError } from '../../src/core/errors.ts';
import { silentLogger } from '../../src/core/logger.ts';
import { freePort } from '../../src/embedded/embedded-server.ts';
import { assertNoSecret, pgmesh } from '../support/cli.ts';
import { eventually, localDdl, withCluster, type Sql, type TestCluster, type TestNode } from '../support/cluster.ts';

/** Awaits a promise that must fail with a PgmeshError, and returns that error. */
async function refusal(promise: Promise<unknown>): Promise<PgmeshError> {
  const error = await promise.then(
    () => assert.fail('expected a refusal, but it succeeded'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof PgmeshError, `not a PgmeshError: ${String(error)}`);
  return error;
}

function writeConfig(cluster: TestCluster, name: string, content: unknown): string {
  const path = join(cluster.baseDir, name);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return path;
}

function dsnWithPassword(node: TestNode, password: string): string {
  return node.server.dsn.replace(`:${encodeURIComponent(node.server.password)}@`, `:${encodeURIComponent(password)}@`);
}

async function hasCatalog(node: TestNode): Promise<boolean> {
  const rows = await node.sql.unsafe<{ ok: boolean }[]>(`SELECT to_regnamespace('pgmesh') IS NOT NULL AS ok`);
  return rows[0]?.ok === true;
}

async function count(sql: Sql, query: string): Promise<number> {
  const rows = await sql.unsafe<{ n: string }[]>(`SELECT count(*)::text AS n FROM ${query}`);
  return Number(rows[0]?.n);
}

test('server settings: every problem of every node in one error, with fixes that work, and nothing installed', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, link: false }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];

    n1.server.configure({ wal_level: 'replica' });
    await n1.server.restart();
    const walOnly = await refusal(createCluster(cluster.config, silentLogger));
    assert.equal(walOnly.code, 'SERVER_SETTINGS');
    assert.equal(
      walOnly.message,
      "node n1 has wal_level=replica (needs logical): set wal_level = logical (ALTER SYSTEM SET wal_level = 'logical') and restart the server",
    );
    // Refused before anything was installed, on either node.
    assert.deepEqual([await hasCatalog(n1), await hasCatalog(n2)], [false, false]);
    const check = await pgmesh(['check'], { config: cluster.configPath });
    assert.equal(check.code, 1, check.output);
    assert.match(check.stdout, /^n1: node n1 has wal_level=replica \(needs logical\): set wal_level = logical/m);
    assert.match(check.stdout, /^n2: ok$/m);

    n1.server.configure({ wal_level: 'logical', track_commit_timestamp: 'off' });
    await n1.server.restart();
    const trackOnly = await refusal(createCluster(cluster.config, silentLogger));
    assert.equal(
      trackOnly.message,
      'node n1 has track_commit_timestamp=off (needs on): set track_commit_timestamp = on (ALTER SYSTEM SET track_commit_timestamp = on) ' +
        'and restart the server; last-update-wins needs commit timestamps',
    );

    // Both on n1, and one on n2: all three in one error.
    n1.server.configure({ wal_level: 'replica' });
    n2.server.configure({ track_commit_timestamp: 'off' });
    await Promise.all([n1.server.restart(), n2.server.restart()]);
    const all = await refusal(createCluster(cluster.config, silentLogger));
    const lines = all.message.split('\n');
    assert.equal(lines.length, 3, all.message);
    assert.match(lines[0] as string, /^node n1 has wal_level=replica /);
    assert.match(lines[1] as string, /^node n1 has track_commit_timestamp=off /);
    assert.match(lines[2] as string, /^node n2 has track_commit_timestamp=off /);
    assert.deepEqual([await hasCatalog(n1), await hasCatalog(n2)], [false, false]);

    // Do exactly what the message says, and the same command succeeds.
    for (const line of lines) {
      const node = cluster.node(/^node (\w+) /.exec(line)?.[1] as string);
      const statement = /\((ALTER SYSTEM SET [^)]+)\)/.exec(line)?.[1];
      assert.ok(statement, `no statement to run in: ${line}`);
      await node.sql.unsafe(statement);
    }
    await Promise.all([n1.server.restart(), n2.server.restart()]);
    const created = await createCluster(cluster.config, silentLogger);
    assert.equal(created.slotsCreated, 2);
    const checked = await pgmesh(['check'], { config: cluster.configPath });
    assert.equal(checked.code, 0, checked.output);
    assert.equal(checked.stdout, 'n1: ok\nn2: ok\n');

    // A node that answers but whose catalog lacks what status reads is not UNREACHABLE, and is told how to upgrade.
    await n2.sql.unsafe('ALTER VIEW pgmesh.progress RENAME TO progress_old');
    const status = await pgmesh(['status'], { config: cluster.configPath });
    assert.equal(status.code, 1, status.output);
    assert.match(status.stdout, /^n2\s+\S+\s+up\s/m);
    assert.match(status.stdout, /^! node n2: its pgmesh catalog is older than this pgmesh \(.*\); run "pgmesh init --node n2" to upgrade it$/m);
  });
});

test('a wrong password: the message names the node and says to check the password, and shows no password', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, link: false, schema: 'CREATE TABLE t (id int PRIMARY KEY)' }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const real = n1.server.password; // every node of the harness has it, so n2's connection string carries it too
    const wrong = `Wr0ng-${Math.random().toString(36).slice(2, 10)}`;
    const secrets = [real, wrong];
    const nodes = [
      { name: 'n1', dsn: dsnWithPassword(n1, wrong) },
      { name: 'n2', dsn: n2.server.dsn },
    ];
    const path = writeConfig(cluster, 'wrong-password.json', { nodes });
    const config = loadConfig({ file: path });
    const authMessage = /cannot log in to node n1 \(127\.0\.0\.1:\d+\/postgres\): password authentication failed for user "postgres"; check the user and password in its connection string/;

    const create = await refusal(createCluster(config, silentLogger));
    assert.equal(create.code, 'AUTH_FAILED');
    assert.match(create.message, authMessage);
    assert.doesNotMatch(create.message, /n2/);
    assertNoSecret(create.message, secrets, 'cluster create');
    assertNoSecret(JSON.stringify(create), secrets, 'the error as JSON');

    const status = await clusterStatus(config, silentLogger);
    assert.deepEqual(status.nodes.map((n) => [n.name, n.reachable]), [['n1', false], ['n2', true]]);
    assert.match(status.nodes[0]?.error ?? '', authMessage);
    assertNoSecret(JSON.stringify(status), secrets, 'status');

    const agent = await refusal(Agent.start(config, 'n1', silentLogger));
    assert.equal(agent.code, 'AUTH_FAILED');
    assert.match(agent.message, authMessage);

    // Every command that connects, through the real CLI; they run at once, none may hang.
    const commands = [
      ['check'],
      ['cluster', 'create'],
      ['status'],
      ['status', '--json'],
      ['init', '--node', 'n1'],
      ['tables', 'add', 'public.t'],
      ['tables', 'list'],
      ['start', '--node', 'n1'],
    ];
    const results = await Promise.all(commands.map((args) => pgmesh(args, { config: path })));
    for (const [i, result] of results.entries()) {
      const what = `pgmesh ${commands[i]?.join(' ')}`;
      assert.equal(result.code, 1, `${what}: ${result.output}`);
      assert.match(result.output, /node n1/, what);
      assert.match(result.output, /check the user and password/, what);
      assertNoSecret(result.output, secrets, what);
    }
    assert.match(results[2]?.stdout ?? '', /^n1\s+127\.0\.0\.1:\d+\/postgres\s+UNREACHABLE/m);

    // PGMESH_DSN_N1 replaces the file's connection string, both ways.
    const fixed = await pgmesh(['check'], { config: path, env: { PGMESH_DSN_N1: n1.server.dsn } });
    assert.equal(fixed.code, 0, fixed.output);
    const good = writeConfig(cluster, 'good.json', { nodes: [{ name: 'n1', dsn: n1.server.dsn }, nodes[1]] });
    const broken = await pgmesh(['check'], { config: good, env: { PGMESH_DSN_N1: dsnWithPassword(n1, wrong) } });
    assert.equal(broken.code, 1, broken.output);
    assert.match(broken.stdout, authMessage);
    assertNoSecret(broken.output, secrets, 'check with PGMESH_DSN_N1');

    // No password at all (kept out of the file, and PGMESH_DSN_N1 forgotten).
    const bare = writeConfig(cluster, 'no-password.json', {
      nodes: [{ name: 'n1', dsn: `postgres://postgres@127.0.0.1:${n1.server.port}/postgres` }, nodes[1]],
    });
    const missing = await pgmesh(['check'], { config: bare });
    assert.equal(missing.code, 1, missing.output);
    assert.match(missing.stdout, /^n1: cannot log in to node n1 .*check the user and password in its connection string \(or in PGMESH_DSN_N1, its service, PGPASSWORD, or the password file ~\/\.pgpass\)$/m);
    assertNoSecret(missing.output, secrets, 'check without a password');
    // Both places the message names work.
    const viaEnv = await Promise.all([
      pgmesh(['check'], { config: bare, env: { PGPASSWORD: real } }),
      pgmesh(['check'], { config: bare, env: { PGMESH_DSN_N1: n1.server.dsn } }),
    ]);
    for (const r of viaEnv) assert.equal(r.code, 0, r.output);
  });
});

test('a peer that is not there: cluster create and status name it, quickly, and change nothing', { timeout: 120_000 }, async () => {
  await withCluster({ nodes: 2, link: false }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const closedPort = await freePort();
    const real = n1.server.password;
    const absent = { name: 'n3', dsn: `postgres://postgres:${encodeURIComponent(real)}@127.0.0.1:${closedPort}/postgres` };
    const path = writeConfig(cluster, 'absent-peer.json', { nodes: [{ name: 'n1', dsn: n1.server.dsn }, { name: 'n2', dsn: n2.server.dsn }, absent] });
    const config = loadConfig({ file: path });
    const refused = `cannot reach node n3 at 127.0.0.1:${closedPort}/postgres: connection refused; is the server running, and does listen_addresses/port match?`;

    const startedAt = Date.now();
    const create = await refusal(createCluster(config, silentLogger));
    assert.equal(create.code, 'CONNECTION_FAILED');
    assert.equal(create.message, refused);
    // Refused at once, not retried until some deadline (a generous bound: the machine may be busy).
    assert.ok(Date.now() - startedAt < 30_000, `took ${Date.now() - startedAt} ms`);
    assert.deepEqual([await hasCatalog(n1), await hasCatalog(n2)], [false, false]);

    const [cli, status, json] = await Promise.all([
      pgmesh(['cluster', 'create'], { config: path, timeoutMs: 20_000 }),
      pgmesh(['status'], { config: path, timeoutMs: 20_000 }),
      pgmesh(['status', '--json'], { config: path, timeoutMs: 20_000 }),
    ]);
    assert.equal(cli.code, 1, cli.output);
    assert.equal(cli.stderr, `pgmesh: ${refused}\n`);
    assert.equal(status.code, 1, status.output);
    assert.match(status.stdout, /^n1\s+\S+\s+not initialized/m);
    assert.match(status.stdout, new RegExp(`^n3\\s+127\\.0\\.0\\.1:${closedPort}/postgres\\s+UNREACHABLE`, 'm'));
    assert.ok(status.stdout.includes(`! ${refused}`), status.stdout);
    assert.equal(json.code, 1, json.output);
    const parsed = JSON.parse(json.stdout) as { nodes: { name: string; reachable: boolean }[] };
    assert.deepEqual(parsed.nodes.map((n) => [n.name, n.reachable]), [['n1', true], ['n2', true], ['n3', false]]);
    for (const r of [cli, status, json]) assertNoSecret(r.output, [real], 'output');

    // A port that accepts connections and never answers (a hung server, a black-holing proxy): a timeout, not a hang.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const port = (silent.address() as { port: number }).port;
      // Three such nodes (three databases behind that port): connecting to them one after the other would wait
      // three connect timeouts.
      const silentDsn = (db: string) => `postgres://postgres:${encodeURIComponent(real)}@127.0.0.1:${port}/${db}`;
      const silentConfig = writeConfig(cluster, 'silent-peer.json', {
        nodes: [{ name: 'n1', dsn: n1.server.dsn }, ...['n4', 'n5', 'n6'].map((name) => ({ name, dsn: silentDsn(name) }))],
      });
      const timed = async (args: string[]) => {
        const before = Date.now();
        const result = await pgmesh(args, { config: silentConfig, timeoutMs: 45_000 });
        return { ...result, ms: Date.now() - before };
      };
      const [hung, check, create] = await Promise.all([timed(['status']), timed(['check']), timed(['cluster', 'create'])]);
      const timeout = (name: string) => `cannot reach node ${name} at 127.0.0.1:${port}/${name} (CONNECT_TIMEOUT); check the host name, the network and firewalls`;
      assert.equal(hung.code, 1, hung.output);
      assert.match(hung.stdout, /^n4\s+\S+\s+UNREACHABLE/m);
      assert.ok(hung.stdout.includes(`! ${timeout('n4')}`), hung.stdout);
      assert.equal(check.code, 1, check.output);
      assert.ok(check.stdout.includes(`n6: ${timeout('n6')}`), check.stdout);
      assert.equal(create.code, 1, create.output);
      assert.equal(create.stderr, `pgmesh: ${['n4', 'n5', 'n6'].map(timeout).join('\n')}\n`);
      // status and check wait 5 s for a connection, cluster create 10 s: once, not once per silent node. Waiting
      // for the three nodes one after the other would take at least 15 s and 30 s however idle the machine, so
      // these bounds hold on a busy machine and still fail a sequential wait.
      assert.ok(hung.ms < 15_000 && check.ms < 15_000 && create.ms < 30_000, `took ${hung.ms}, ${check.ms} and ${create.ms} ms`);
      for (const r of [hung, check, create]) assertNoSecret(r.output, [real], 'output with silent peers');
      assert.equal(await hasCatalog(n1), false);
    } finally {
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });
});

test('a running agent retries a peer that is down, with backoff, and keeps replicating with the others', { timeout: 120_000 }, async () => {
  const schema = 'CREATE TABLE kv (k int PRIMARY KEY, v text)';
  await withCluster({ nodes: 3, schema, tuning: { retryBaseMs: 100, retryMaxMs: 800 } }, async (cluster) => {
    const [n1, n2, n3] = [cluster.node('n1'), cluster.node('n2'), cluster.node('n3')];
    const rows = async (node: TestNode) =>
      (await node.sql.unsafe<{ k: number }[]>('SELECT k FROM kv ORDER BY k')).map((r) => r.k);
    const peerOf = (agentNode: string, peer: string) => {
      const status = cluster.agents.get(agentNode)?.status().peers.find((p) => p.peer === peer);
      assert.ok(status, `${agentNode} has no status for ${peer}`);
      return status;
    };

    await n3.server.stop(); // its port is closed now
    const startedAt = Date.now();
    await cluster.startAgents(['n1', 'n2']);
    await n1.sql.unsafe(`INSERT INTO kv VALUES (1, 'n1')`);
    await n2.sql.unsafe(`INSERT INTO kv VALUES (2, 'n2')`);
    await eventually(async () => (await rows(n1)).length === 2 && (await rows(n2)).length === 2, { what: 'n1 and n2 to exchange rows while n3 is down' });
    assert.equal(peerOf('n1', 'n2').state, 'streaming');

    await eventually(() => peerOf('n1', 'n3').restarts >= 4, { timeoutMs: 15_000, what: 'n1 to retry n3 several times' });
    // Four failures against a refused port take milliseconds; the backoff waits 50, 100 and 200 ms at least between them.
    assert.ok(Date.now() - startedAt >= 350, `4 attempts in ${Date.now() - startedAt} ms: no backoff`);
    const down = peerOf('n1', 'n3');
    assert.ok(down.state === 'waiting' || down.state === 'starting', down.state);
    assert.equal(down.lastError?.code, 'CONNECTION_FAILED');
    assert.match(down.lastError?.message ?? '', /^cannot reach node n3 at 127\.0\.0\.1:\d+\/postgres: connection refused; is the server running/);
    assertNoSecret(JSON.stringify(cluster.agents.get('n1')?.status()), [n1.server.password], 'agent status');
    // From here the wait is capped at retryMaxMs (800 ms, at least half of it): it keeps trying, neither faster nor slower.
    const before = { restarts: peerOf('n1', 'n3').restarts, at: Date.now() };
    await eventually(() => peerOf('n1', 'n3').restarts >= before.restarts + 3, { timeoutMs: 10_000, what: 'n1 to keep retrying n3' });
    assert.ok(Date.now() - before.at >= 1_000, `3 retries in ${Date.now() - before.at} ms`);

    const status = await pgmesh(['status'], { config: cluster.configPath, timeoutMs: 20_000 });
    assert.equal(status.code, 1, status.output);
    assert.match(status.stdout, /^n3\s+\S+\s+UNREACHABLE/m);
    assert.match(status.stdout, /^n1\s+n2\s+yes\s/m);
    assert.match(status.stdout, /^n2\s+n1\s+yes\s/m);

    // n3 comes back: both agents connect to it by themselves, and its changes arrive.
    await n3.server.start();
    await eventually(() => peerOf('n1', 'n3').state === 'streaming' && peerOf('n2', 'n3').state === 'streaming', {
      timeoutMs: 20_000,
      what: 'n1 and n2 to stream from n3 again',
    });
    await n3.sql.unsafe(`INSERT INTO kv VALUES (3, 'n3')`);
    await eventually(async () => (await rows(n1)).includes(3) && (await rows(n2)).includes(3), { what: "n3's row to reach n1 and n2" });
    const healthy = await pgmesh(['status'], { config: cluster.configPath });
    assert.equal(healthy.code, 0, healthy.output);

    // The same with a peer whose password is wrong: retried, reported, not printed; the other peer unaffected.
    await cluster.stopAgent('n1');
    const wrong = `Wr0ng-${Math.random().toString(36).slice(2, 10)}`;
    const config: ClusterConfig = {
      ...cluster.config,
      nodes: cluster.config.nodes.map((n) => (n.name === 'n3' ? { ...n, dsn: dsnWithPassword(n3, wrong) } : n)),
    };
    const agent = await Agent.start(config, 'n1', silentLogger);
    try {
      const peer = (name: string) => agent.status().peers.find((p) => p.peer === name);
      await eventually(() => peer('n3')?.lastError?.code === 'AUTH_FAILED' && (peer('n3')?.restarts ?? 0) >= 2, {
        timeoutMs: 15_000,
        what: 'n1 to report the wrong password for n3',
      });
      assert.match(peer('n3')?.lastError?.message ?? '', /^cannot log in to node n3 .*check the user and password/);
      assertNoSecret(JSON.stringify(agent.status()), [n1.server.password, wrong], 'agent status');
      await n2.sql.unsafe(`INSERT INTO kv VALUES (4, 'n2')`);
      await eventually(async () => (await rows(n1)).includes(4), { what: "n2's row to reach n1 while n3's password is wrong" });
      assert.equal(peer('n2')?.state, 'streaming');
    } finally {
      await agent.stop();
    }
  });
});

test('tables: no primary key, unknown names, a table on one node only; refused with the fix, the rest replicates', { timeout: 120_000 }, async () => {
  const schema = `CREATE TABLE keyed (id int PRIMARY KEY, v text);
                  CREATE TABLE nokey (a int, b text);
                  CREATE TABLE "Orders" (id int PRIMARY KEY);`;
  await withCluster({ nodes: 2, link: false, schema }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const config = cluster.configPath;

    // Before anything is installed: `start` stops at once and says what to run; so does `tables add`.
    const [start, unknownNode, early] = await Promise.all([
      pgmesh(['start', '--node', 'n1'], { config }),
      pgmesh(['start', '--node', 'n9'], { config }),
      pgmesh(['tables', 'add', 'public.keyed'], { config }),
    ]);
    assert.equal(start.code, 1, start.output);
    assert.match(start.stderr, /^pgmesh: node n1 has no pgmesh catalog; run "pgmesh init" for it first$/m);
    assert.equal(unknownNode.code, 2, unknownNode.output);
    assert.match(unknownNode.stderr, /node "n9" is not in the configuration \(nodes: n1, n2\)/);
    assert.equal(early.code, 1, early.output);
    assert.match(early.stderr, /node n1 has no pgmesh catalog; run "pgmesh init" for it first\nnode n2 has no pgmesh catalog/);

    // Initialized but not linked: `start` says to link.
    const init = await pgmesh(['init', '--node', 'n1', '--no-tables'], { config });
    assert.equal(init.code, 0, init.output);
    const unlinked = await pgmesh(['start', '--node', 'n1'], { config });
    assert.equal(unlinked.code, 1, unlinked.output);
    assert.match(unlinked.stderr, /node n1 is not linked with n2; run "pgmesh cluster create"/);

    // Every table by default: the one without a primary key is reported once, with the fix; the others are added.
    // The table left out makes it a failure (exit 1), as README says.
    const created = await pgmesh(['cluster', 'create'], { config });
    assert.equal(created.code, 1, created.output);
    assert.equal(created.stderr, 'pgmesh: not replicated: public.nokey; fix what is said above for each, then run "pgmesh tables add"\n');
    const fix =
      'NOT replicated: table "public"."nokey" has no primary key; pgmesh needs one to find the same row on every node. ' +
      'Add one (ALTER TABLE "public"."nokey" ADD PRIMARY KEY (...)), then run "pgmesh tables add public.nokey"';
    assert.equal(created.stdout.split(fix).length - 1, 1, created.stdout);
    assert.match(created.stdout, /n1: replicating public\.keyed/);
    assert.match(created.stdout, /n2: replicating public\.Orders/);
    // Naming it explicitly is a failure.
    const explicit = await pgmesh(['cluster', 'create', '--tables', 'public.nokey'], { config });
    assert.equal(explicit.code, 1, explicit.output);
    assert.ok(explicit.stdout.includes(fix), explicit.stdout);

    await cluster.startAgents();
    // One transaction writes both tables: when its keyed row has arrived, a nokey row would have too.
    await n1.sql.begin(async (tx) => {
      await tx.unsafe(`INSERT INTO nokey VALUES (1, 'local only')`);
      await tx.unsafe(`INSERT INTO keyed VALUES (1, 'replicated')`);
    });
    await eventually(async () => (await count(n2.sql, 'keyed')) === 1, { what: 'the keyed row to reach n2' });
    assert.equal(await count(n2.sql, 'nokey'), 0);
    // Not in the publication, so an UPDATE without a replica identity still works on the node itself.
    await n1.sql.unsafe(`UPDATE nokey SET b = 'updated' WHERE a = 1`);

    const [noKey, unknown, malformed] = await Promise.all([
      pgmesh(['tables', 'add', 'public.nokey'], { config }),
      pgmesh(['tables', 'add', 'public.nosuch', 'public.orders'], { config }),
      pgmesh(['tables', 'add', 'keyed'], { config }),
    ]);
    assert.equal(noKey.code, 1, noKey.output);
    assert.ok(noKey.stdout.includes(fix), noKey.stdout);
    assert.equal(unknown.code, 1, unknown.output);
    assert.match(unknown.stdout, /NOT replicated: table "public"."nosuch" does not exist; check the schema and name \(names are case-sensitive\)$/m);
    assert.match(unknown.stdout, /NOT replicated: table "public"."orders" does not exist; .*; did you mean public\.Orders\?$/m);
    assert.equal(malformed.code, 2, malformed.output);
    assert.match(malformed.stderr, /table "keyed" must be written schema\.table \(for example public\.orders\)/);

    // A table on one node only is added on none: n2 could not place its changes, and that would stop n1 -> n2.
    await localDdl(n1, 'CREATE TABLE only_n1 (id int PRIMARY KEY)'); // by hand on n1 only (DDL otherwise replicates)
    const lonely = await pgmesh(['tables', 'add', 'public.only_n1'], { config });
    assert.equal(lonely.code, 1, lonely.output);
    assert.match(
      lonely.stdout,
      /NOT replicated: table public\.only_n1 is not replicated on any node, because every node must replicate it: it does not exist on n2; create it there with the same columns and primary key/,
    );
    assert.equal(await count(n1.sql, `pg_publication_tables WHERE pubname = 'pgmesh' AND tablename = 'only_n1'`), 0);
    // `init` adds the tables of its one node; the next `tables add` says where the table is already published.
    const initAgain = await pgmesh(['init', '--node', 'n1'], { config });
    assert.equal(initAgain.code, 0, initAgain.output);
    const published = await pgmesh(['tables', 'add', 'public.only_n1'], { config });
    assert.equal(published.code, 1, published.output);
    assert.match(published.stdout, /table public\.only_n1 is replicated on n1 but cannot be on every node .*: it does not exist on n2; create it there/);
    await n1.sql.unsafe(`INSERT INTO keyed VALUES (2, 'still replicated')`);
    await eventually(async () => (await count(n2.sql, 'keyed')) === 2, { what: 'keyed to keep replicating' });

    // Follow the fix for nokey, on every node: then it replicates.
    for (const node of [n1, n2]) await localDdl(node, 'ALTER TABLE nokey ADD PRIMARY KEY (a)'); // by hand on each (DDL otherwise replicates)
    const added = await pgmesh(['tables', 'add', 'public.nokey'], { config });
    assert.equal(added.code, 0, added.output);
    assert.match(added.stdout, /n1: replicating public\.nokey\n\s+n2: replicating public\.nokey/);
    await n1.sql.unsafe(`INSERT INTO nokey VALUES (2, 'now replicated')`);
    await eventually(async () => (await count(n2.sql, 'nokey WHERE a = 2')) === 1, { what: 'the nokey row to reach n2 once it has a key' });
  });
});

test('malformed configuration: exit code 2, every problem listed, no password', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgmesh-bad-config-'));
  try {
    const secret = 'Conf1g-secret';
    const file = (name: string, text: string) => {
      writeFileSync(join(dir, name), text);
      return join(dir, name);
    };
    const [unknownKeys, invalidJson, keyValue, none] = await Promise.all([
      pgmesh(['status'], {
        config: file('unknown.json', JSON.stringify({ nodes: [{ name: 'n1', dsn: `postgres://u:${secret}@127.0.0.1:1/db`, pasword: secret }], tuning: { retryMS: 1 } })),
      }),
      pgmesh(['check'], { config: file('invalid.json', `{"nodes": [{"name": "n1", "dsn": "postgres://u:${secret}@h/db"},]}`) }),
      pgmesh(['cluster', 'create'], { config: file('keyvalue.json', JSON.stringify({ nodes: [{ name: 'n1', dsn: `host=h password=${secret} sslcrl=/etc/crl.pem` }, { name: 'N2', dsn: 'postgres://h/db' }] })) }),
      pgmesh(['status']),
    ]);
    assert.equal(unknownKeys.code, 2, unknownKeys.output);
    assert.match(unknownKeys.stderr, /the configuration has 2 problem\(s\):\n- nodes\[0\]: unknown key "pasword" \(known: name, dsn\)\n- tuning: unknown key "retryMS"/);
    assert.equal(invalidJson.code, 2, invalidJson.output);
    assert.match(invalidJson.stderr, /is not valid JSON: Unexpected token '\]'\n/);
    assert.equal(keyValue.code, 2, keyValue.output);
    assert.match(keyValue.stderr, /nodes\[0\]\.dsn: the connection string of node n1 sets sslcrl: pgmesh does not support certificate revocation lists/);
    assert.match(keyValue.stderr, /nodes\[1\]\.name "N2": use 1-40 lowercase letters/);
    assert.equal(none.code, 2, none.output);
    assert.match(none.stderr, /no configuration: pass --config <file\.json> or set PGMESH_CONFIG/);
    for (const r of [unknownKeys, invalidJson, keyValue, none]) {
      assertNoSecret(r.output, [secret], 'output');
      assert.doesNotMatch(r.output, /\n\s+at /, 'a stack trace');
    }
    const usage = await pgmesh(['tables', 'add']);
    assert.equal(usage.code, 2, usage.output);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
