/** Connection strings carry passwords: everything that prints one goes through redactDsn. */

export function redactDsn(dsn: string): string {
  try {
    const url = new URL(dsn);
    if (url.password) url.password = '*****';
    for (const key of [...url.searchParams.keys()]) {
      if (/pass/i.test(key)) url.searchParams.set(key, '*****');
    }
    return url.toString();
  } catch {
    // key=value form
    return dsn.replace(/(password\s*=\s*)('([^'\\]|\\.)*'|\S+)/gi, '$1*****');
  }
}

/** host:port for messages, without user or password. */
export function describeEndpoint(dsn: string): string {
  try {
    const url = new URL(dsn);
    return `${url.hostname || 'localhost'}:${url.port || '5432'}/${url.pathname.replace(/^\//, '') || 'postgres'}`;
  } catch {
    const host = /host\s*=\s*(\S+)/i.exec(dsn)?.[1] ?? 'localhost';
    const port = /port\s*=\s*(\d+)/i.exec(dsn)?.[1] ?? '5432';
    const db = /dbname\s*=\s*(\S+)/i.exec(dsn)?.[1] ?? 'postgres';
    return `${host}:${port}/${db}`;
  }
}

/** Hides any password that a driver or server error may have echoed. */
export function scrubSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 3) out = out.split(secret).join('*****');
  }
  return out.replace(/(postgres(?:ql)?:\/\/[^:/@\s]+:)[^@\s]+@/g, '$1*****@');
}
