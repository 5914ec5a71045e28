/**
 * Connection service files (pg_service.conf), as libpq reads them: the user's file (PGSERVICEFILE, or
 * ~/.pg_service.conf), then the system's (PGSYSCONFDIR/pg_service.conf); the first that defines the service wins,
 * whole. https://www.postgresql.org/docs/current/libpq-pgservice.html
 *
 * Read here: no npm package reads this format, and an INI parser would cut values at ";" or "#" (a password may
 * hold them) where libpq takes the rest of the line.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ConninfoProblem } from './conninfo.ts';

export type Env = Readonly<Record<string, string | undefined>>;

/** Where Debian's libpq looks for the system's file when PGSYSCONFDIR is not set. */
const DEFAULT_SYSCONFDIR = '/etc/postgresql-common';

/** The files searched for a service, in order. `servicefile` is the connection string's keyword (PostgreSQL 18). */
export function serviceFiles(env: Env, servicefile: string | undefined): string[] {
  const user = servicefile ?? env.PGSERVICEFILE ?? join(env.HOME ?? homedir(), '.pg_service.conf');
  return [user, join(env.PGSYSCONFDIR ?? DEFAULT_SYSCONFDIR, 'pg_service.conf')];
}

/** The keywords a service defines, as written; throws ConninfoProblem when no file defines it. */
export function readService(name: string, files: readonly string[]): [string, string][] {
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw new ConninfoProblem(`names service ${name}, but the service file ${file} cannot be read: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    const found = serviceIn(text, name, file);
    if (found) return found;
  }
  throw new ConninfoProblem(`names service ${name}, which is not defined in ${files.join(' nor in ')}; add a [${name}] section or fix the name`);
}

/** The section's pairs, or undefined when the file has no such section. Lines are "[name]", "keyword=value", "# ...". */
function serviceIn(text: string, name: string, file: string): [string, string][] | undefined {
  let current: string | undefined;
  let pairs: [string, string][] | undefined;
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    if (line.startsWith('[')) {
      if (!line.endsWith(']')) throw new ConninfoProblem(`uses the service file ${file}, whose line ${index + 1} opens a section without closing it with "]"`);
      current = line.slice(1, -1);
      if (current === name && pairs === undefined) pairs = [];
      return;
    }
    if (current !== name || pairs === undefined) return;
    const eq = line.indexOf('=');
    // Never quote the line: it may be a password.
    if (eq < 0) throw new ConninfoProblem(`uses the service file ${file}, whose line ${index + 1} is not keyword=value`);
    const keyword = line.slice(0, eq).trim();
    if (keyword === 'service') throw new ConninfoProblem(`uses the service file ${file}, whose service ${name} names another service (line ${index + 1}); services do not nest`);
    pairs.push([keyword, line.slice(eq + 1).trim()]);
  });
  return pairs;
}
