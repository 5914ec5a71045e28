/**
 * sslmode with libpq's meaning, as the driver's `ssl` option.
 * https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION
 * - disable: no TLS. allow, prefer (the default): TLS when the server offers it, plain otherwise, the server's
 *   certificate not checked (pgmesh's allow asks for TLS first, like prefer: a server that offers TLS gets it).
 * - require: TLS or no connection; the certificate is checked against the CA file when there is one (sslrootcert,
 *   or ~/.postgresql/root.crt), as libpq does.
 * - verify-ca: TLS, the certificate signed by the CA of sslrootcert. verify-full: that, and the certificate names the
 *   host (the host keyword, also when hostaddr gives the address). sslrootcert=system trusts the system's CAs.
 * A Unix socket never uses TLS (the server does not offer it there), whatever sslmode says, as in libpq.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { ConnectionOptions } from 'node:tls';
import { ConninfoProblem } from './conninfo.ts';
import { isSocketDirectory, type ConnectionParameters, type Env } from './dsn.ts';

/** What postgres.js takes as `ssl`: false, 'prefer' (TLS when offered, not verified), or options for tls.connect. */
export type DriverSsl = false | 'prefer' | ConnectionOptions;

export interface TlsChoice {
  readonly ssl: DriverSsl;
  /** No connection without TLS. */
  readonly required: boolean;
}

function readPem(keyword: string, file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConninfoProblem(`has ${keyword}=${file}, which cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'}); give a PEM file this user can read`);
  }
}

/** libpq's default files under ~/.postgresql, used when they exist. */
function defaultFile(env: Env, name: string): string | undefined {
  const file = join(env.HOME ?? homedir(), '.postgresql', name);
  try {
    readFileSync(file);
    return file;
  } catch {
    return undefined;
  }
}

export function tlsChoice(params: ConnectionParameters, env: Env = process.env): TlsChoice {
  if (params.sslmode === 'disable' || (isSocketDirectory(params.host) && !params.hostaddr)) return { ssl: false, required: false };
  if (params.sslmode === 'allow' || params.sslmode === 'prefer') {
    if (params.sslcert) throw new ConninfoProblem(`gives sslcert with sslmode=${params.sslmode}; a client certificate is sent with sslmode=require, verify-ca or verify-full`);
    return { ssl: 'prefer', required: false };
  }
  const system = params.sslrootcert === 'system';
  if (system && params.sslmode !== 'verify-full') {
    throw new ConninfoProblem(`has sslrootcert=system with sslmode=${params.sslmode}; the system's CAs vouch for names, so use sslmode=verify-full`);
  }
  const rootcert = system ? undefined : (params.sslrootcert ?? defaultFile(env, 'root.crt'));
  if (!system && !rootcert && params.sslmode !== 'require') {
    throw new ConninfoProblem(
      `has sslmode=${params.sslmode} but no CA certificate to check the server with; give sslrootcert=<file> (the CA that signed the server's certificate), or sslrootcert=system for the system's CAs`,
    );
  }
  const certfile = params.sslcert ?? defaultFile(env, 'postgresql.crt');
  const keyfile = params.sslkey ?? (certfile ? (params.sslcert ? undefined : defaultFile(env, 'postgresql.key')) : undefined);
  if (certfile && !keyfile) throw new ConninfoProblem('gives sslcert without sslkey; give the client certificate\'s key file too');
  const options: ConnectionOptions = {
    // The name the certificate must carry: the host keyword, not hostaddr.
    host: params.host,
    servername: isIP(params.host) || !params.sslsni ? undefined : params.host,
    ...(rootcert ? { ca: readPem('sslrootcert', rootcert) } : {}),
    ...(certfile ? { cert: readPem('sslcert', certfile) } : {}),
    ...(keyfile ? { key: readPem('sslkey', keyfile) } : {}),
    ...(params.sslpassword ? { passphrase: params.sslpassword } : {}),
  };
  if (params.sslmode === 'verify-full') return { ssl: { ...options, rejectUnauthorized: true }, required: true };
  // verify-ca, and require with a CA file: the chain is checked, the name is not.
  if (rootcert) return { ssl: { ...options, rejectUnauthorized: true, checkServerIdentity: () => undefined }, required: true };
  return { ssl: { ...options, rejectUnauthorized: false }, required: true };
}
