/** Connection strings carry passwords: everything that prints one goes through redactDsn. */

const URL_PREFIX = /^postgres(?:ql)?:\/\//i;

/**
 * Why the driver (postgres.js) cannot use this connection string, or undefined when it can. The answer continues
 * "the connection string of node n1 ..." and never repeats the string, which may hold a password.
 */
export function dsnProblem(dsn: string): string | undefined {
  if (!URL_PREFIX.test(dsn)) {
    return /=/.test(dsn)
      ? 'is in key=value form, which pgmesh does not support; write it as a URL: postgres://user:password@host:port/dbname'
      : 'is not a connection string; write it as a URL: postgres://user:password@host:port/dbname';
  }
  try {
    parseLikeDriver(dsn);
  } catch {
    return (
      'is not a valid URL; percent-encode the characters @ : / ? # % and spaces in the user name and password ' +
      '(encodeURIComponent), and check that the port is a number'
    );
  }
  return undefined;
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
    const query = /[?&][^=&]*pass[^=&]*=([^&]*)/i.exec(dsn)?.[1];
    return query ? decodeURIComponent(query) : undefined;
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
