/**
 * Who the embedded servers run as, and where that user can reach what a server needs.
 *
 * PostgreSQL refuses to run as root, so as root the servers run as the `postgres` user. That user must be able to
 * execute the binaries and enter the data folder; a checkout in a private directory (root's home is mode 700 on most
 * systems, `mktemp -d` makes 700 folders) holds both out of its reach. Then:
 * - the binaries of the npm package are copied once into the system's temporary folder (`pgmesh-pg<major>-<version>`,
 *   owned by root, not writable by others, reused by later runs), and
 * - callers put data folders under `makeServerTempDir()` instead of the private folder (the demo does; tests always do).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, chmodSync, existsSync, lstatSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join, relative } from 'node:path';
import { PgmeshError } from '../core/errors.ts';
import type { PostgresBinaries } from './postgres-binaries.ts';

export interface PosixIds {
  readonly uid: number;
  readonly gid: number;
  readonly name: string;
}

/** As root, PostgreSQL must run as another user: the `postgres` user, created when missing. Undefined when not root. */
export function serverUser(): PosixIds | undefined {
  if (userInfo().uid !== 0) return undefined;
  const lookup = (): PosixIds | undefined => {
    try {
      const uid = Number(execFileSync('id', ['-u', 'postgres'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim());
      return { uid, gid, name: 'postgres' };
    } catch {
      return undefined;
    }
  };
  const found = lookup();
  if (found) return found;
  try {
    execFileSync('groupadd', ['-f', 'postgres']);
    execFileSync('useradd', ['-g', 'postgres', '-M', '-s', '/usr/sbin/nologin', 'postgres']);
  } catch (cause) {
    throw new PgmeshError('INTERNAL', 'running as root, and could not create the "postgres" user that PostgreSQL must run as', {
      cause,
    });
  }
  const created = lookup();
  if (!created) throw new PgmeshError('INTERNAL', 'created the "postgres" user but cannot look it up');
  return created;
}

/** Whether `user` can enter the folder `dir` (every folder on the way must let it through). True when not root. */
export function canEnter(user: PosixIds | undefined, dir: string): boolean {
  if (!user) return true;
  try {
    // A process of that user tries: the kernel's answer, ACLs and all, rather than a reading of mode bits.
    execFileSync('/bin/sh', ['-c', 'cd -- "$1"', 'sh', dir], { uid: user.uid, gid: user.gid, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The system's temporary folder, or /tmp when TMPDIR is out of the server user's reach. */
export function serverTempRoot(user: PosixIds | undefined = serverUser()): string {
  for (const candidate of [tmpdir(), '/tmp', '/var/tmp']) {
    if (existsSync(candidate) && canEnter(user, candidate)) return candidate;
  }
  throw new PgmeshError(
    'CONFIG_INVALID',
    `PostgreSQL runs as the "${user?.name}" user here, and it can enter none of ${tmpdir()}, /tmp, /var/tmp; set TMPDIR to a folder it can enter`,
  );
}

/** A new, empty folder for servers' data and logs that the server user can reach; the caller removes it. */
export function makeServerTempDir(prefix: string): string {
  const dir = mkdtempSync(join(serverTempRoot(), prefix));
  chmodSync(dir, 0o755);
  return dir;
}

const staged = new Map<string, PostgresBinaries>();

/**
 * The binaries, where the server user can execute them: in place when it can, else a copy in the temporary folder.
 * The copy is made under a fresh name and renamed into place, so concurrent runs (test files run two at a time) never
 * see half of one; an existing copy is used only if root owns it, nobody else may write it, and it is complete.
 */
export function reachableBinaries(binaries: PostgresBinaries, user: PosixIds | undefined = serverUser()): PostgresBinaries {
  if (!user || canExecute(user, binaries.postgres)) return binaries;
  const known = staged.get(binaries.root);
  if (known) return known;
  const root = serverTempRoot(user);
  const target = join(root, `pgmesh-pg${binaries.major}-${binaries.version}`);
  if (!trustedCopy(target)) {
    const partial = mkdtempSync(`${target}.partial-`);
    try {
      cpSync(binaries.root, partial, { recursive: true, verbatimSymlinks: true });
      writeFileSync(join(partial, COMPLETE), `${binaries.version}\n`);
      chmodSync(partial, 0o755);
      try {
        renameSync(partial, target);
      } catch {
        // Another run renamed its copy into place first (or a stale, untrusted folder is in the way).
        if (!trustedCopy(target)) {
          throw new PgmeshError(
            'CONFIG_INVALID',
            `PostgreSQL runs as the "${user.name}" user here and cannot reach the binaries in ${binaries.root}; copying them to ${target} failed because that path exists and is not a complete copy owned by root: remove it and try again`,
          );
        }
      }
    } finally {
      rmSync(partial, { recursive: true, force: true });
    }
  }
  const moved = relocate(binaries, target);
  if (!canExecute(user, moved.postgres)) {
    throw new PgmeshError(
      'CONFIG_INVALID',
      `PostgreSQL runs as the "${user.name}" user here, and it can execute neither ${binaries.postgres} nor its copy ${moved.postgres}; check the permissions of ${root}`,
    );
  }
  staged.set(binaries.root, moved);
  return moved;
}

const COMPLETE = '.pgmesh-complete';

function trustedCopy(dir: string): boolean {
  try {
    const stat = lstatSync(dir);
    return stat.isDirectory() && stat.uid === process.getuid?.() && (stat.mode & 0o022) === 0 && existsSync(join(dir, COMPLETE));
  } catch {
    return false;
  }
}

function relocate(binaries: PostgresBinaries, root: string): PostgresBinaries {
  const at = (path: string) => join(root, relative(binaries.root, path));
  return { ...binaries, root, initdb: at(binaries.initdb), postgres: at(binaries.postgres) };
}

function canExecute(user: PosixIds, file: string): boolean {
  try {
    execFileSync(file, ['--version'], { uid: user.uid, gid: user.gid, stdio: 'ignore', cwd: '/' });
    return true;
  } catch {
    return false;
  }
}
