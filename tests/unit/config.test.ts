/**
 * Configuration: defaults < file < environment < flags, validated all at once. A typo must not fall back to a
 * default silently, every problem is listed in one error, and no password from a connection string is echoed.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_TUNING, findNode, joiningDsn, loadConfig, type ConfigSources } from '../../src/config/config.ts';
import { PgmeshError } from '../../src/core/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'pgmesh-config-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const SECRET = 'Sup3r-secret-pw';
const DSN1 = `postgres://app:${SECRET}@db1.example:5432/app`;
const DSN2 = 'postgres://app@db2.example:5432/app';
let files = 0;

function file(content: unknown): string {
  const path = join(dir, `config-${++files}.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

const twoNodes = { nodes: [{ name: 'n1', dsn: DSN1 }, { name: 'n2', dsn: DSN2 }] };

/** Loads and expects CONFIG_INVALID; returns the message after checking that it shows no password. */
function problemsOf(sources: ConfigSources): string {
  let message = '';
  assert.throws(
    () => loadConfig(sources),
    (error: unknown) => {
      assert.ok(error instanceof PgmeshError);
      assert.equal(error.code, 'CONFIG_INVALID');
      message = error.message;
      return true;
    },
  );
  assert.ok(!message.includes(SECRET), `the message shows a password:\n${message}`);
  return message;
}

test('a minimal file gets the defaults', () => {
  const config = loadConfig({ file: file(twoNodes) });
  assert.deepEqual(config.nodes, twoNodes.nodes);
  assert.equal(config.maxNodes, 16);
  assert.equal(config.logLevel, 'info');
  assert.deepEqual(config.tuning, DEFAULT_TUNING);
});

test('every problem is reported at once, in one error', () => {
  const message = problemsOf({
    file: file({
      node: [],
      maxNodes: '8',
      logLevel: 'verbose',
      nodes: [
        { name: 'N1', dsn: DSN1, password: SECRET },
        { name: 'n2', dsn: DSN2 },
        { name: 'n2', dsn: `host=db3 password=${SECRET} sslcrl=/etc/crl.pem` },
        { name: 'n4' },
      ],
      tuning: { retryBaseMS: 100, feedbackIntervalMs: 1, maxBatchRows: 'many', streamLargeTransactions: 'yes' },
    }),
  });
  const expected = [
    /unknown key "node" \(known: nodes, maxNodes, logLevel, tuning\)/,
    /nodes\[0\]: unknown key "password" \(known: name, dsn\)/,
    /nodes\[3\]\.dsn must be a connection string/,
    /"maxNodes" must be a number/,
    /"logLevel" must be one of debug, info, warn, error, silent/,
    /tuning: unknown key "retryBaseMS" \(known: feedbackIntervalMs, .*retryBaseMs/,
    /tuning\.maxBatchRows must be a number/,
    /tuning\.streamLargeTransactions must be true or false/,
    /nodes\[0\]\.name "N1": use 1-40 lowercase letters, digits or "_", starting with a letter/,
    /nodes\[2\]\.name "n2" appears twice/,
    /nodes\[2\]\.dsn: the connection string of node n2 sets sslcrl: pgmesh does not support certificate revocation lists/,
    /tuning\.feedbackIntervalMs = 1 must be between 50 and 60000/,
  ];
  for (const pattern of expected) assert.match(message, pattern);
  assert.match(message, new RegExp(`^the configuration has ${expected.length} problem\\(s\\):\\n- `));
  assert.equal(message.split('\n- ').length - 1, expected.length, message);
});

test('tuning.streamLargeTransactions: off by default, true or false from the file', () => {
  assert.equal(DEFAULT_TUNING.streamLargeTransactions, false);
  const config = loadConfig({ file: file({ ...twoNodes, tuning: { streamLargeTransactions: true } }) });
  assert.equal(config.tuning.streamLargeTransactions, true);
});

test('unknown keys are rejected at the top level, in a node and in tuning', () => {
  assert.match(problemsOf({ file: file({ ...twoNodes, maxnodes: 4 }) }), /unknown key "maxnodes" \(known: /);
  assert.match(
    problemsOf({ file: file({ nodes: [{ name: 'n1', dsn: DSN1, host: 'db1' }] }) }),
    /nodes\[0\]: unknown key "host" \(known: name, dsn\)/,
  );
  assert.match(problemsOf({ file: file({ ...twoNodes, tuning: { retryMaxMS: 5 } }) }), /tuning: unknown key "retryMaxMS"/);
});

test('PGMESH_DSN_<NODE> replaces a node\'s connection string, so the password can stay out of the file', () => {
  const fileDsn = 'postgres://app@db1.example/app';
  const path = file({ nodes: [{ name: 'n1', dsn: fileDsn }, { name: 'db_east', dsn: DSN2 }] });
  const config = loadConfig({ file: path, env: { PGMESH_DSN_N1: DSN1, PGMESH_DSN_DB_EAST: undefined } });
  assert.deepEqual(config.nodes.map((n) => n.dsn), [DSN1, DSN2]);
  const east = `postgres://app:${SECRET}@db2.example:5432/app`;
  const upper = loadConfig({ file: path, env: { PGMESH_DSN_DB_EAST: east } });
  assert.deepEqual(upper.nodes.map((n) => n.dsn), [fileDsn, east]);
  // An empty variable is "not set", not an empty connection string.
  assert.equal(loadConfig({ file: path, env: { PGMESH_DSN_N1: '' } }).nodes[0]?.dsn, fileDsn);
  // A bad override is reported under the variable's name: the file is fine, so that is where to look.
  const message = problemsOf({ file: path, env: { PGMESH_DSN_N1: `postgres://app:${SECRET}@db1:port/app` } });
  assert.match(message, /^the configuration has 1 problem/);
  assert.match(message, /PGMESH_DSN_N1: the connection string of node n1 is not a valid URL/);
  // A placeholder in the file does not matter when the variable replaces it.
  const placeholder = file({ nodes: [{ name: 'n1', dsn: 'set PGMESH_DSN_N1' }, { name: 'n2', dsn: DSN2 }] });
  assert.equal(loadConfig({ file: placeholder, env: { PGMESH_DSN_N1: DSN1 } }).nodes[0]?.dsn, DSN1);
  assert.match(problemsOf({ file: placeholder }), /nodes\[0\]\.dsn: the connection string of node n1 is not a connection string/);
});

test('a PGMESH_DSN_ variable for a node that is not configured is an error, not silently ignored', () => {
  const path = file({ nodes: [{ name: 'n1', dsn: DSN1 }, { name: 'n2', dsn: DSN2 }] });
  const message = problemsOf({ file: path, env: { PGMESH_DSN_N3: DSN1, PGMESH_DSN_N1: DSN1 } });
  assert.match(message, /PGMESH_DSN_N3 is set, but the configuration has no node n3 \(nodes: n1, n2\); fix its name or unset it/);
  assert.ok(!message.includes(SECRET), 'the variable\'s value is not shown');
  // Empty means not set.
  assert.equal(loadConfig({ file: path, env: { PGMESH_DSN_N3: '' } }).nodes.length, 2);
});

test('node add: the joining node\'s PGMESH_DSN_<NODE> is honoured before the file lists it', () => {
  const path = file({ nodes: [{ name: 'n1', dsn: DSN1 }, { name: 'n2', dsn: DSN2 }] });
  const env = { PGMESH_DSN_N3: `host=db3 password=${SECRET}` };
  assert.equal(loadConfig({ file: path, env, joining: 'n3' }).nodes.length, 2);
  assert.equal(joiningDsn(env, 'n3'), env.PGMESH_DSN_N3);
  // Only for that node.
  assert.match(problemsOf({ file: path, env, joining: 'n4' }), /PGMESH_DSN_N3 is set, but the configuration has no node n3/);
});

test('connection strings are checked with the PG* variables and service files of the environment', () => {
  const path = file({ nodes: [{ name: 'n1', dsn: 'service=east' }, { name: 'n2', dsn: DSN2 }] });
  assert.match(problemsOf({ file: path, env: { PGSERVICEFILE: join(dir, 'none.conf'), PGSYSCONFDIR: dir } }), /nodes\[0\]\.dsn: the connection string of node n1 names service east, which is not defined/);
  const services = join(dir, 'services.conf');
  writeFileSync(services, `[east]\nhost=db2.example\ndbname=app\nuser=app\npassword=${SECRET}\n`);
  // The service points where n2 is: the same database twice.
  assert.match(problemsOf({ file: path, env: { PGSERVICEFILE: services } }), /node n2 has the same server and database as node n1 \(db2\.example:5432\/app\)/);
});

test('retryMaxMs below retryBaseMs is refused', () => {
  const path = file({ nodes: [{ name: 'n1', dsn: DSN1 }, { name: 'n2', dsn: DSN2 }], tuning: { retryBaseMs: 2000, retryMaxMs: 1000 } });
  assert.match(problemsOf({ file: path }), /tuning\.retryMaxMs = 1000 must not be below tuning\.retryBaseMs = 2000/);
});

test('flags beat the environment, which beats the file, which beats the defaults', () => {
  const path = file({ ...twoNodes, logLevel: 'warn', maxNodes: 8 });
  const env = { PGMESH_LOG_LEVEL: 'error', PGMESH_MAX_NODES: '12' };
  const flags = { logLevel: 'debug', maxNodes: '20' };
  const pick = (sources: ConfigSources) => {
    const c = loadConfig(sources);
    return [c.logLevel, c.maxNodes];
  };
  assert.deepEqual(pick({ file: path, env, flags }), ['debug', 20]);
  assert.deepEqual(pick({ file: path, env }), ['error', 12]);
  assert.deepEqual(pick({ file: path }), ['warn', 8]);
  assert.deepEqual(pick({ file: file(twoNodes) }), ['info', 16]);
  // PGMESH_CONFIG names the file when no --config is given; --config wins over it.
  const other = file({ ...twoNodes, logLevel: 'silent' });
  assert.equal(loadConfig({ env: { PGMESH_CONFIG: other } }).logLevel, 'silent');
  assert.equal(loadConfig({ file: path, env: { PGMESH_CONFIG: other } }).logLevel, 'warn');
  // A bad value from the environment is a problem even when the file's value was fine.
  assert.match(problemsOf({ file: path, env: { PGMESH_LOG_LEVEL: 'loud' } }), /log level "loud" must be one of/);
  assert.match(problemsOf({ file: path, env: { PGMESH_MAX_NODES: '3.5' } }), /max nodes "3\.5" must be a whole number/);
});

test('duplicate node names are refused', () => {
  const message = problemsOf({ file: file({ nodes: [{ name: 'n1', dsn: DSN1 }, { name: 'n2', dsn: DSN2 }, { name: 'n1', dsn: DSN2 }] }) });
  assert.match(message, /nodes\[2\]\.name "n1" appears twice/);
});

test('node names must be usable bare in slot and origin names', () => {
  const good = ['n1', 'a', 'east_1', `n${'x'.repeat(39)}`];
  assert.deepEqual(
    loadConfig({ file: file({ maxNodes: 16, nodes: good.map((name) => ({ name, dsn: `${DSN2}_${name}` })) }) }).nodes.map((n) => n.name),
    good,
  );
  for (const bad of ['N1', '1n', 'n-1', 'n 1', '', '_n', 'n1;drop', 'ñ1', `n${'x'.repeat(40)}`]) {
    const message = problemsOf({ file: file({ nodes: [{ name: bad, dsn: DSN2 }, { name: 'ok', dsn: DSN2 }] }) });
    assert.ok(message.includes(`nodes[0].name "${bad}": use 1-40 lowercase letters`), message);
  }
});

test('maxNodes must leave room for the configured nodes', () => {
  assert.match(problemsOf({ file: file({ ...twoNodes, maxNodes: 1 }) }), /maxNodes 1 must be a whole number from 2 to 1024/);
  const three = { maxNodes: 2, nodes: [...twoNodes.nodes, { name: 'n3', dsn: DSN2 }] };
  assert.match(problemsOf({ file: file(three) }), /3 nodes are configured but maxNodes is 2/);
});

test('a file that cannot be read or parsed says so, and shows none of its text', () => {
  assert.match(problemsOf({ file: join(dir, 'missing.json') }), /cannot read config file .*missing\.json/);
  assert.match(problemsOf({ file: file([twoNodes]) }), /the top level must be a JSON object/);
  // V8 quotes the text around a syntax error; here that text holds the password.
  const broken = `{"nodes": [{"name": "n1", "dsn": "${DSN1}"},]}`;
  assert.match(problemsOf({ file: file(broken) }), /config file .* is not valid JSON: Unexpected token ']'$/);
  const positioned = `{\n  "nodes": [{"name": "n1", "dsn": "${DSN1}"}]\n  "maxNodes": 4\n}`;
  assert.match(problemsOf({ file: file(positioned) }), /is not valid JSON: Expected ',' or '}' after property value at line 3, column 3$/);
});

test('findNode names the nodes that exist', () => {
  const config = loadConfig({ file: file(twoNodes) });
  assert.equal(findNode(config, 'n2').dsn, DSN2);
  assert.throws(() => findNode(config, 'n9'), (error: unknown) => {
    assert.ok(error instanceof PgmeshError);
    assert.equal(error.code, 'UNKNOWN_NODE');
    assert.equal(error.message, 'node "n9" is not in the configuration (nodes: n1, n2)');
    return true;
  });
});
