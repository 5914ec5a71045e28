/**
 * Changes to the configuration file made by membership commands: `node add` lists the new node, `node remove`
 * takes it out. The file is rewritten whole (JSON, 2-space indent) through a temporary file and a rename, so a
 * reader (an agent reloading on SIGHUP) sees the old file or the new one, never half of one. Other keys are kept.
 *
 * The file holds connection strings, maybe with passwords. The temporary file gets a random name in the file's own
 * folder and is created exclusively without following links (a name planted in advance, a symbolic link to where
 * an attacker can read, makes the write fail instead of receiving the configuration); it gets the file's mode and
 * owner before any byte is written. A configuration that is itself a symbolic link is not rewritten: the rename
 * would replace the link, not the file it points to.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fchmodSync, fchownSync, fsyncSync, lstatSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { PgmeshError } from '../core/errors.ts';

interface RawConfig {
  nodes?: { name: string; dsn: string }[];
  [key: string]: unknown;
}

function readRaw(path: string): RawConfig {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as RawConfig;
  } catch (error) {
    throw new PgmeshError('CONFIG_INVALID', `cannot read config file ${path}: ${(error as Error).message.split('\n')[0]}`);
  }
}

function writeRaw(path: string, raw: RawConfig): void {
  const info = lstatSync(path);
  if (info.isSymbolicLink()) {
    throw new PgmeshError(
      'CONFIG_INVALID',
      `config file ${path} is a symbolic link, which pgmesh does not rewrite (the new file would replace the link); give --config the file it points to`,
    );
  }
  const mode = info.mode & 0o7777;
  const temporary = join(dirname(path), `.${basename(path)}.${randomBytes(12).toString('hex')}.tmp`);
  let fd: number;
  try {
    fd = openSync(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  } catch (error) {
    throw new PgmeshError('CONFIG_INVALID', `cannot write config file ${path}: creating a temporary file in its folder failed (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  try {
    // Created 0600; the file's own mode (not the umask's) and owner before the content.
    fchmodSync(fd, mode);
    if (process.getuid?.() === 0) fchownSync(fd, info.uid, info.gid);
    writeSync(fd, `${JSON.stringify(raw, null, 2)}\n`);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(temporary, path);
  } catch (error) {
    try {
      closeSync(fd);
    } catch {
      // closed already
    }
    rmSync(temporary, { force: true });
    throw new PgmeshError('CONFIG_INVALID', `cannot write config file ${path}: ${(error as Error).message}`);
  }
}

/** Adds a node to the file's node list; true when it was added, false when a node of that name is listed already. */
export function addNodeToConfigFile(path: string, node: { readonly name: string; readonly dsn: string }): boolean {
  const raw = readRaw(path);
  const nodes = raw.nodes ?? [];
  if (nodes.some((n) => n.name === node.name)) return false;
  writeRaw(path, { ...raw, nodes: [...nodes, { name: node.name, dsn: node.dsn }] });
  return true;
}

/** Removes a node from the file's node list; true when it was listed. */
export function removeNodeFromConfigFile(path: string, name: string): boolean {
  const raw = readRaw(path);
  const nodes = raw.nodes ?? [];
  if (!nodes.some((n) => n.name === name)) return false;
  writeRaw(path, { ...raw, nodes: nodes.filter((n) => n.name !== name) });
  return true;
}
