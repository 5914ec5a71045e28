/**
 * Changes to the configuration file made by membership commands: `node add` lists the new node, `node remove`
 * takes it out. The file is rewritten whole (JSON, 2-space indent) through a temporary file and a rename, so a
 * reader (an agent reloading on SIGHUP) sees the old file or the new one, never half of one. Other keys are kept.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
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
  const temporary = `${path}.pgmesh-${process.pid}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(raw, null, 2)}\n`, { mode: 0o600 });
  renameSync(temporary, path);
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
