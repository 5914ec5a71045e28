/** Connection strings carry passwords: everything that prints one goes through redactDsn. */

const URL_PREFIX = /^postgres(?:ql)?:\/\//i;

/** sslmode values as libpq names them; postgres.js turns any other text into a TLS connection that verifies everything. */
const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];

/**
 * Run-time parameters that pgmesh sets on every session it opens (it reads the server's text in that form). In the
 * URL's query, postgres.js would send them instead of pgmesh's values.
 */
const PGMESH_PARAMETERS = ['datestyle', 'timezone', 'intervalstyle', 'extra_float_digits', 'standard_conforming_strings', 'client_encoding', 'replication', 'session_replication_role'];

/** Where a connection string points, as the socket needs it. */
export interface DsnTarget {
  /** Host name or IP address, without the brackets of an IPv6 address. */
  readonly host: string;
  readonly port: number;
  /** A Unix socket: the host part was a (percent-encoded) directory. */
  readonly path?: string;
}

/**
 * Why pgmesh cannot use this connection string, or undefined when it can. The answer continues "the connection
 * string of node n1 ..." and never repeats the string, which may hold a password.
 */
export function dsnProblem(dsn: string): string | undefined {
  if (!URL_PREFIX.test(dsn)) {
    return /=/.test(dsn)
      ? 'is in key=value form, which pgmesh does not support; write it as a URL: postgres://user:password@host:port/dbname'
      : 'is not a connection string; write it as a URL: postgres://user:password@host:port/dbname';
  }
  // Not echoed: with an unencoded "/" in the password, what looks like the host part is the password.
  if (dsnHostPart(dsn).includes(',')) return 'names several hosts (a list with ","); a node is one server: give one host:port';
  let url: URL;
  try {
    url = new URL(dsn);
  } catch {
    return (
      'is not a valid URL; percent-encode the characters @ : / ? # % and spaces in the user name and password ' +
      '(encodeURIComponent), and check that the port is a number'
    );
  }
  for (const [part, text] of [
    ['user name', url.username],
    ['password', url.password],
    ['host', url.hostname],
    ['database name', url.pathname],
  ] as const) {
    if (!decodes(text)) return `has a % in its ${part} that is not followed by two hexadecimal digits; write a % itself as %25`;
  }
  if (url.port === '0') return 'has port 0; give the port the server listens on (5432 by default)';
  for (const [key, value] of rawQuery(dsn)) {
    if (!decodes(key) || !decodes(value)) return `has a % in its query (?${decodes(key) ? decodeURIComponent(key) : '...'}=) that is not followed by two hexadecimal digits; write a % itself as %25`;
  }
  const query = url.searchParams;
  for (const key of new Set(query.keys())) {
    if (query.getAll(key).length > 1) return `gives ?${key}= more than once; keep one`;
    if (PGMESH_PARAMETERS.includes(key.toLowerCase())) return `sets ${key} in its query, which pgmesh sets itself on every session; remove it`;
  }
  const sslmode = query.get('sslmode');
  if (sslmode !== null && !SSL_MODES.includes(sslmode)) {
    return `has sslmode=${sslmode}, which is not an sslmode; use one of ${SSL_MODES.join(', ')}`;
  }
  if (query.has('password') && url.password) {
    return 'gives a password twice, after the user name and as ?password=; keep one';
  }
  return undefined;
}

/** The host part of a URL, after any user information: "db1:5432", "[::1]:5432", "h1,h2". */
function dsnHostPart(dsn: string): string {
  const afterScheme = dsn.slice(dsn.indexOf('://') + 3);
  const authority = afterScheme.split(/[?/#]/)[0] ?? '';
  return authority.slice(authority.lastIndexOf('@') + 1);
}

function decodes(text: string): boolean {
  try {
    decodeURIComponent(text);
    return true;
  } catch {
    return false;
  }
}

/** Where a connection string that dsnProblem accepts points. */
export function dsnTarget(dsn: string): DsnTarget {
  const url = new URL(dsn);
  const port = url.port ? Number(url.port) : 5432;
  const host = decodeURIComponent(url.hostname);
  if (host.startsWith('/')) return { host, port, path: `${host}/.s.PGSQL.${port}` };
  return { host: host.replace(/^\[(.*)\]$/, '$1') || 'localhost', port };
}

/** The query's parameters as written (not decoded): [key, value]. */
function rawQuery(dsn: string): [string, string][] {
  const question = dsn.indexOf('?');
  if (question < 0) return [];
  const hash = dsn.indexOf('#', question);
  const query = dsn.slice(question + 1, hash < 0 ? undefined : hash);
  return query
    .split('&')
    .filter((part) => part !== '')
    .map((part) => {
      const eq = part.indexOf('=');
      return eq < 0 ? [part, ''] : [part.slice(0, eq), part.slice(eq + 1)];
    });
}

/**
 * The connection string the driver gets, and the password it is told apart: postgres.js sends a `?password=`
 * query parameter to the server as a run-time parameter, while libpq (and so pgmesh) reads it as the password.
 * Decoded as libpq does (percent-escapes only; a "+" stays a "+").
 */
export function splitQueryPassword(dsn: string): { dsn: string; password: string | undefined } {
  const raw = rawQuery(dsn).find(([key]) => key === 'password');
  if (!raw) return { dsn, password: undefined };
  const question = dsn.indexOf('?');
  const hash = dsn.indexOf('#', question);
  const rest = rawQuery(dsn)
    .filter(([key]) => key !== 'password')
    .map(([key, value]) => `${key}=${value}`)
    .join('&');
  return { dsn: `${dsn.slice(0, question)}${rest ? `?${rest}` : ''}${hash < 0 ? '' : dsn.slice(hash)}`, password: decodeURIComponent(raw[1]) };
}

/** postgres.js parses a URL whose host part may list several hosts ("h1:5432,h2:5433"): it keeps the first one. */
function parseLikeDriver(dsn: string): URL {
  const afterScheme = dsn.slice(dsn.indexOf('://') + 3);
  const hostPart = afterScheme.split(/[?/]/)[0] ?? '';
  const hosts = decodeURIComponent(hostPart.slice(hostPart.indexOf('@') + 1));
  return new URL(dsn.replace(hosts, hosts.split(',')[0] ?? ''));
}

export function redactDsn(dsn: string): string {
  try {
    const url = new URL(dsn);
    if (url.password) url.password = '*****';
    for (const key of [...url.searchParams.keys()]) {
      if (/pass/i.test(key)) url.searchParams.set(key, '*****');
    }
    return url.toString();
  } catch {
    // key=value form, or a URL that does not parse (which may still hold a password)
    return scrubSecrets(dsn, []).replace(/((?:^|[\s?&])[^\s=&]*pass[^\s=&]*\s*=\s*)('([^'\\]|\\.)*'|[^\s&]+)/gi, '$1*****');
  }
}

/** host:port/dbname for messages, without user or password. */
export function describeEndpoint(dsn: string): string {
  if (URL_PREFIX.test(dsn)) {
    try {
      const url = parseLikeDriver(dsn);
      const afterScheme = dsn.slice(dsn.indexOf('://') + 3);
      const hostPart = afterScheme.split(/[?/]/)[0] ?? '';
      const hosts = hostPart.slice(hostPart.lastIndexOf('@') + 1);
      const host = hosts.includes(',') ? hosts : `${url.hostname || 'localhost'}:${url.port || '5432'}`;
      return `${host}/${decodeURIComponent(url.pathname.replace(/^\//, '')) || 'postgres'}`;
    } catch {
      // Not parsable: show only what is after the last "@" of the host part, never the user information.
      const afterScheme = dsn.slice(dsn.indexOf('://') + 3);
      const hostPart = afterScheme.split(/[?/]/)[0] ?? '';
      return `${hostPart.slice(hostPart.lastIndexOf('@') + 1) || 'localhost'} (invalid connection string)`;
    }
  }
  const host = /host\s*=\s*(\S+)/i.exec(dsn)?.[1] ?? 'localhost';
  const port = /port\s*=\s*(\d+)/i.exec(dsn)?.[1] ?? '5432';
  const db = /dbname\s*=\s*(\S+)/i.exec(dsn)?.[1] ?? 'postgres';
  return `${host}:${port}/${db}`;
}

/** The password a connection string carries, if any (to scrub it from text that a driver or server produced). */
export function dsnPassword(dsn: string): string | undefined {
  if (URL_PREFIX.test(dsn)) {
    const afterScheme = dsn.slice(dsn.indexOf('://') + 3);
    const userInfo = afterScheme.split(/[?/]/)[0] ?? '';
    const at = userInfo.lastIndexOf('@');
    const colon = userInfo.indexOf(':');
    if (at > 0 && colon >= 0 && colon < at) {
      const raw = userInfo.slice(colon + 1, at);
      try {
        return decodeURIComponent(raw) || undefined;
      } catch {
        return raw || undefined;
      }
    }
    const query = /[?&][^=&]*pass[^=&]*=([^&#]*)/i.exec(dsn)?.[1];
    if (!query) return undefined;
    try {
      return decodeURIComponent(query);
    } catch {
      return query;
    }
  }
  const match = /password\s*=\s*('((?:[^'\\]|\\.)*)'|\S+)/i.exec(dsn);
  if (!match) return undefined;
  return match[2] !== undefined ? match[2].replace(/\\(.)/g, '$1') : match[1];
}

/** Hides any password that a driver or server error may have echoed. */
export function scrubSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 3) out = out.split(secret).join('*****');
  }
  return out.replace(/(postgres(?:ql)?:\/\/[^:/@\s]+:)[^\s]+@/gi, '$1*****@');
}
