/**
 * Topology: 2 real servers, linked (they also listen on ::1); the real `pgmesh` CLI in child processes.
 * Scenario: one table of bad input, as a hostile tester types it: malformed ids and numbers, a peer that is not one,
 * configurations with no nodes or one database for two nodes, connection strings with a broken %-escape, an
 * unknown sslmode, two passwords or several hosts, a file without end, an environment variable in the wrong case;
 * and the inputs that must work (an IPv6 host, ?password=), and a refused table that must fail the command.
 * Each row: the exit code README defines (2 bad input, 1 failure, 0 success), a message that says what to do, no
 * stack trace, no "unexpected error", no password.
 * Without the code under test: Number() reading "0x10" as 16 and 9007199254740993 as ...992, "invalid input syntax
 * for type bigint: NaN", --limit abc ignored, --watch 0 accepted, exit 0 for a peer that does not exist, check
 * printing nothing for no nodes, "URI malformed" naming no node, ENOTFOUND for [::1], ?password= ignored, sslmode
 * not checked, /dev/zero read until memory runs out, PGMESH_DSN_n1 said to name no node n1, cluster create exit 0.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertNoSecret, pgmesh, type CliOptions } from '../support/cli.ts';
import { withCluster } from '../support/cluster.ts';

interface Row {
  /** The arguments after --config. */
  readonly args: readonly string[];
  /** A configuration (written to a file), a path, or the cluster's own configuration when absent. */
  readonly config?: unknown;
  readonly env?: Readonly<Record<string, string>>;
  readonly code: 0 | 1 | 2;
  /** Matched against stdout and stderr together. */
  readonly says: RegExp;
}

/** Runs fn over the items, at most `width` at a time (each is a node process: the machine has 2 cores). */
async function inBatches<T, R>(items: readonly T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += width) out.push(...(await Promise.all(items.slice(i, i + width).map(fn))));
  return out;
}

test('bad input, one row each: exit code 2 (or 1 for a failure), a message that says what to do', { timeout: 300_000 }, async () => {
  const schema = 'CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE nokey (a int)';
  await withCluster({ nodes: 2, schema, settings: { listen_addresses: '127.0.0.1,::1' } }, async (cluster) => {
    const [n1, n2] = [cluster.node('n1'), cluster.node('n2')];
    const password = n1.server.password; // both servers have it
    const pw = encodeURIComponent(password);
    const port = n1.server.port;
    const second = { name: 'n2', dsn: n2.server.dsn };
    const withN1 = (dsn: string) => ({ nodes: [{ name: 'n1', dsn }, second] });
    const rows: Row[] = [
      // Ids: decimal digits only, exact as bigint.
      { args: ['exceptions', 'replay', 'abc', '--node', 'n1'], code: 2, says: /value 'abc' is invalid for argument 'id'\. Give the id as a whole number from 1 to 9223372036854775807/ },
      { args: ['exceptions', 'replay', '0x10', '--node', 'n1'], code: 2, says: /value '0x10' is invalid for argument 'id'/ },
      { args: ['exceptions', 'discard', '1e3', '--node', 'n1'], code: 2, says: /value '1e3' is invalid for argument 'id'/ },
      { args: ['exceptions', 'replay', '-1', '--node', 'n1'], code: 2, says: /value '-1' is invalid for argument 'id'/ },
      { args: ['exceptions', 'replay', '9223372036854775808', '--node', 'n1'], code: 2, says: /value '9223372036854775808' is invalid for argument 'id'/ },
      { args: ['exceptions', 'replay', '9007199254740993', '--node', 'n1'], code: 2, says: /^pgmesh: there is no exception 9007199254740993 on this node; "pgmesh exceptions list" shows them$/m },
      // Numbers of options.
      { args: ['conflicts', '--node', 'n1', '--limit', '-1'], code: 2, says: /option '--limit <n>' argument '-1' is invalid\. Give a whole number from 1 to 100000\./ },
      { args: ['conflicts', '--node', 'n1', '--limit', 'abc'], code: 2, says: /option '--limit <n>' argument 'abc' is invalid/ },
      { args: ['conflicts', '--node', 'n1', '--limit', '0'], code: 2, says: /option '--limit <n>' argument '0' is invalid/ },
      { args: ['status', '--watch', 'abc'], code: 2, says: /option '--watch <seconds>' argument 'abc' is invalid\. Give a number of seconds from 0\.5 to 3600\./ },
      { args: ['status', '--watch', '0'], code: 2, says: /option '--watch <seconds>' argument '0' is invalid/ },
      { args: ['status', '--watch', '-1'], code: 2, says: /option '--watch <seconds>' argument '-1' is invalid/ },
      // A peer that is not one.
      { args: ['resume', '--node', 'n1', '--peer', 'n9'], code: 2, says: /^pgmesh: --peer n9: there is no node n9 in the configuration \(peers of n1: n2\)$/m },
      { args: ['resume', '--node', 'n1', '--peer', 'n1'], code: 2, says: /^pgmesh: --peer n1 is the node itself; give the peer whose stream to n1 is paused \(n2\)$/m },
      // Configurations.
      { args: ['check'], config: { nodes: [] }, code: 2, says: /there are no nodes: list them in "nodes"/ },
      {
        args: ['check'],
        // Another user, the same database: what counts is where it points.
        config: { nodes: [{ name: 'n1', dsn: n1.server.dsn }, { name: 'n2', dsn: `postgres://app@127.0.0.1:${port}/postgres` }] },
        code: 2,
        says: /nodes\[1\]\.dsn: node n2 has the same server and database as node n1 \(127\.0\.0\.1:\d+\/postgres\); each node must be a database of its own/,
      },
      { args: ['check'], config: '/dev/zero', code: 2, says: /config file \/dev\/zero is larger than 1 MiB; is it the right file\?/ },
      { args: ['check'], env: { PGMESH_DSN_n1: n1.server.dsn }, code: 2, says: /PGMESH_DSN_n1 is set, but the variable for node n1 is PGMESH_DSN_N1 \(upper case\); rename it/ },
      // Connection strings.
      {
        args: ['check'],
        config: withN1(`postgres://postgres:${pw}%ZZ@127.0.0.1:${port}/postgres`),
        code: 2,
        says: /nodes\[0\]\.dsn: the connection string of node n1 has a % in its password that is not followed by two hexadecimal digits; write a % itself as %25/,
      },
      { args: ['check'], config: withN1(`${n1.server.dsn}?sslmode=bogus`), code: 2, says: /node n1 has sslmode=bogus, which pgmesh does not support; use one of disable, allow, prefer, require, verify-ca, verify-full/ },
      { args: ['check'], config: withN1(`${n1.server.dsn}?password=${pw}`), code: 2, says: /node n1 gives a password twice, after the user name and as \?password=; keep one/ },
      { args: ['check'], config: withN1(`postgres://postgres:${pw}@127.0.0.1:${port},127.0.0.1:1/postgres`), code: 2, says: /node n1 names several hosts \(a list with ","\); a node is one server: give one host:port/ },
      // What must work: an IPv6 host, the password as ?password= (as libpq takes it; and a wrong one is a login failure).
      { args: ['check'], config: withN1(`postgres://postgres:${pw}@[::1]:${port}/postgres`), code: 0, says: /^n1: ok\nn2: ok\n$/ },
      { args: ['check'], config: withN1(`postgres://postgres@127.0.0.1:${port}/postgres?password=${pw}`), code: 0, says: /^n1: ok\nn2: ok\n$/ },
      { args: ['check'], config: withN1(`postgres://postgres@127.0.0.1:${port}/postgres?password=wrong`), code: 1, says: /^n1: cannot log in to node n1 .*check the user and password/m },
      // A failure: a table left out.
      { args: ['cluster', 'create'], code: 1, says: /^pgmesh: not replicated: public\.nokey; fix what is said above for each, then run "pgmesh tables add"$/m },
    ];
    const results = await inBatches([...rows.entries()], 4, ([i, row]) => {
      let config = cluster.configPath;
      if (typeof row.config === 'string') config = row.config;
      else if (row.config !== undefined) {
        config = join(cluster.baseDir, `row-${i}.json`);
        writeFileSync(config, JSON.stringify(row.config));
      }
      const options: CliOptions = { config, ...(row.env ? { env: row.env } : {}) };
      // A run that hangs (status --watch 0 would refresh forever) is that row's failure.
      return pgmesh(row.args, options).catch((error: unknown) => ({ code: null, output: (error as Error).message }));
    });
    // Every row is checked before failing, so one run shows every row that is wrong.
    const wrong: string[] = [];
    for (const [i, row] of rows.entries()) {
      const result = results[i] ?? { code: null, output: '(not run)' };
      const what = `row ${i}: pgmesh ${row.args.join(' ')}${row.config !== undefined ? ` with ${JSON.stringify(row.config)}` : ''}`;
      try {
        assert.equal(result.code, row.code, 'exit code');
        assert.match(result.output, row.says);
        assert.doesNotMatch(result.output, /unexpected error|\n\s+at /);
        assertNoSecret(result.output, [password], 'the output');
      } catch (error) {
        wrong.push(`${what}: ${(error as Error).message.split('\n')[0]}\n${result.output}`);
      }
    }
    assert.deepEqual(wrong, [], wrong.join('\n\n'));
  });
});
