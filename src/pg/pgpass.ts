/**
 * The password file (~/.pgpass, or PGPASSFILE, or the passfile keyword), read as libpq reads it: only when the
 * connection has no password of its own and the server asks for one; ignored unless it is a plain file that only its
 * owner can read or write. https://www.postgresql.org/docs/current/libpq-pgpass.html
 * Lines are matched by pgpass (node-postgres's reader).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Writable } from 'node:stream';
import helper from 'pgpass/lib/helper.js';
import { defaultSocketDirectory, isSocketDirectory, type ConnectionParameters } from './dsn.ts';

let quieted = false;

/** pgpass writes its warnings (a file that cannot be read) to stderr; pgmesh checks the file itself and says so. */
function quietPgpass(): void {
  if (quieted) return;
  quieted = true;
  helper.warnTo(new Writable({ write: (_chunk, _encoding, done) => done() }));
}

export type PasswordFileLookup =
  | { readonly kind: 'found'; readonly password: string }
  | { readonly kind: 'none' }
  | { readonly kind: 'ignored'; readonly why: string };

export async function passwordFromFile(params: ConnectionParameters): Promise<PasswordFileLookup> {
  quietPgpass();
  const file = params.passfile;
  let info;
  try {
    info = await stat(file);
  } catch {
    return { kind: 'none' };
  }
  if (!info.isFile()) return { kind: 'ignored', why: `password file ${file} is not a plain file` };
  if ((info.mode & 0o077) !== 0) {
    return { kind: 'ignored', why: `password file ${file} has group or world access; permissions should be u=rw (0600) or less (chmod 600 ${file})` };
  }
  // As libpq: a socket in the default directory matches "localhost"; another socket matches its directory.
  const host = isSocketDirectory(params.host) && params.host === defaultSocketDirectory(params.port) ? 'localhost' : params.host;
  const password = await new Promise<string | undefined>((resolve) =>
    helper.getPassword({ host, port: String(params.port), database: params.dbname, user: params.user }, createReadStream(file), resolve),
  );
  return password === undefined ? { kind: 'none' } : { kind: 'found', password };
}
