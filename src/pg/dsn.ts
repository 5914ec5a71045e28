/**
 * Where a connection goes and how, resolved as libpq resolves it: the connection string (URL or key=value), then the
 * service it names (pg_service.conf), then the PG* environment variables, then libpq's defaults (the Unix socket,
 * the operating-system user, a database named after the user, sslmode=prefer).
 * https://www.postgresql.org/docs/current/libpq-envars.html
 *
 * Connection strings carry passwords: everything that prints one goes through redactDsn, and no message here
 * repeats a value that may be one.
 */
import { existsSync } from 'node:fs';
import { homedir, userInfo } from 'node:os';
import { join } from 'node:path';
import { ConninfoProblem, isUrl, keywordProblem, parseConninfo, rawQuery, type Keyword, type Keywords } from './conninfo.ts';
import { readService, serviceFiles, type Env } from './service-file.ts';

export type { Env } from './service-file.ts';

/** sslmode values as libpq names them. */
export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

/** Everything pgmesh needs to open a connection, resolved; `password` is the one given, not yet the .pgpass one. */
export interface ConnectionParameters {
  /** Host name or IP address (an IPv6 address without brackets), or the directory of a Unix socket. */
  readonly host: string;
  /** The address to connect to instead of resolving `host`, which still names the server for TLS and .pgpass. */
  readonly hostaddr: string | undefined;
  readonly port: number;
  readonly dbname: string;
  readonly user: string;
  readonly password: string | undefined;
  readonly passfile: string;
  readonly sslmode: SslMode;
  readonly sslrootcert: string | undefined;
  readonly sslcert: string | undefined;
  readonly sslkey: string | undefined;
  readonly sslpassword: string | undefined;
  readonly sslsni: boolean;
  readonly sslnegotiation: 'postgres' | 'direct';
  readonly connectTimeoutS: number | undefined;
  /** Server command-line options ("-c name=value"), sent in the startup packet. */
  readonly options: string | undefined;
}

/** Where a connection goes, as the socket needs it. */
export interface DsnTarget {
  /** Host name or IP address, without the brackets of an IPv6 address; the socket's directory for a Unix socket. */
  readonly host: string;
  readonly port: number;
  /** A Unix socket's path. */
  readonly path?: string;
}

/** libpq's environment variable for each keyword pgmesh honours. */
const ENVIRONMENT: Partial<Record<Keyword, string>> = {
  host: 'PGHOST',
  hostaddr: 'PGHOSTADDR',
  port: 'PGPORT',
  dbname: 'PGDATABASE',
  user: 'PGUSER',
  password: 'PGPASSWORD',
  passfile: 'PGPASSFILE',
  options: 'PGOPTIONS',
  application_name: 'PGAPPNAME',
  sslmode: 'PGSSLMODE',
  sslrootcert: 'PGSSLROOTCERT',
  sslcert: 'PGSSLCERT',
  sslkey: 'PGSSLKEY',
  sslsni: 'PGSSLSNI',
  sslnegotiation: 'PGSSLNEGOTIATION',
  connect_timeout: 'PGCONNECT_TIMEOUT',
  client_encoding: 'PGCLIENTENCODING',
  gssencmode: 'PGGSSENCMODE',
  channel_binding: 'PGCHANNELBINDING',
  target_session_attrs: 'PGTARGETSESSIONATTRS',
  load_balance_hosts: 'PGLOADBALANCEHOSTS',
};

/** libpq's variables for keywords pgmesh refuses: set, they would be ignored, with less protection than asked for. */
const UNSUPPORTED_ENVIRONMENT: Readonly<Record<string, string>> = {
  PGREQUIREAUTH: 'require_auth',
  PGSSLCRL: 'sslcrl',
  PGSSLCRLDIR: 'sslcrldir',
  PGSSLCERTMODE: 'sslcertmode',
  PGREQUIREPEER: 'requirepeer',
  PGSSLMINPROTOCOLVERSION: 'ssl_min_protocol_version',
  PGSSLMAXPROTOCOLVERSION: 'ssl_max_protocol_version',
  PGKRBSRVNAME: 'krbsrvname',
  PGGSSLIB: 'gsslib',
};

/** Where libpq builds look for the server's socket: Debian's, then the upstream default. */
const SOCKET_DIRECTORIES = ['/var/run/postgresql', '/tmp'];

/** The socket directory used when no host is given: the first that holds the port's socket, or that exists. */
export function defaultSocketDirectory(port: number): string {
  return (
    SOCKET_DIRECTORIES.find((dir) => existsSync(join(dir, `.s.PGSQL.${port}`))) ??
    SOCKET_DIRECTORIES.find((dir) => existsSync(dir)) ??
    '/tmp'
  );
}

/** Resolves a connection string against its service and the environment; throws ConninfoProblem. */
export function resolveConnection(dsn: string, env: Env = process.env): ConnectionParameters {
  const given = parseConninfo(dsn);
  const service = given.service ?? env.PGSERVICE;
  const keywords: Keywords = { ...given };
  if (service) {
    for (const [keyword, value] of readService(service, serviceFiles(env, given.servicefile))) {
      const problem = keywordProblem(keyword);
      if (problem) throw new ConninfoProblem(`uses service ${service}, which ${problem}`);
      if (keywords[keyword as Keyword] === undefined) keywords[keyword as Keyword] = value;
    }
  }
  for (const [variable, keyword] of Object.entries(UNSUPPORTED_ENVIRONMENT)) {
    if (env[variable]) throw new ConninfoProblem(`is used with ${variable} set in the environment, and ${keywordProblem(keyword)?.replace(/^sets \w+: /, '')}; unset it`);
  }
  for (const [keyword, variable] of Object.entries(ENVIRONMENT) as [Keyword, string][]) {
    const value = env[variable];
    if (keywords[keyword] === undefined && value !== undefined && value !== '') keywords[keyword] = value;
  }
  return parameters(keywords, env);
}

function oneOf<T extends string>(keyword: string, value: string | undefined, allowed: readonly T[], fallback: T, hint = ''): T {
  if (value === undefined || value === '') return fallback;
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new ConninfoProblem(`has ${keyword}=${value.slice(0, 40)}, which pgmesh does not support; use one of ${allowed.join(', ')}${hint}`);
}

function parameters(k: Keywords, env: Env): ConnectionParameters {
  for (const [keyword, value] of [
    ['host', k.host],
    ['hostaddr', k.hostaddr],
    ['port', k.port],
  ] as const) {
    if (value?.includes(',')) throw new ConninfoProblem(`names several servers in ${keyword} (a list with ","); a node is one server: give one`);
  }
  const portText = k.port || '5432';
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) throw new ConninfoProblem(`has port ${portText.slice(0, 20)}; give the port the server listens on (5432 by default)`);
  const sslmode = oneOf('sslmode', k.sslmode, SSL_MODES, 'prefer');
  const sslnegotiation = oneOf('sslnegotiation', k.sslnegotiation, ['postgres', 'direct'] as const, 'postgres');
  if (sslnegotiation === 'direct' && !['require', 'verify-ca', 'verify-full'].includes(sslmode)) {
    throw new ConninfoProblem('has sslnegotiation=direct, which needs sslmode=require, verify-ca or verify-full');
  }
  oneOf('sslsni', k.sslsni, ['0', '1'], '1');
  oneOf('gssencmode', k.gssencmode, ['disable', 'allow', 'prefer'], 'disable', ' (pgmesh does not use GSSAPI encryption; TLS is sslmode)');
  oneOf('channel_binding', k.channel_binding, ['disable', 'prefer'], 'prefer', ' (pgmesh does not do SCRAM channel binding)');
  oneOf('target_session_attrs', k.target_session_attrs, ['any'], 'any', ' (a node is one server)');
  oneOf('load_balance_hosts', k.load_balance_hosts, ['disable', 'random'], 'disable');
  if (k.client_encoding !== undefined && !/^(utf-?8|unicode)$/i.test(k.client_encoding)) {
    throw new ConninfoProblem(`has client_encoding=${k.client_encoding.slice(0, 20)}; pgmesh reads and writes UTF8 (remove it)`);
  }
  let connectTimeoutS: number | undefined;
  if (k.connect_timeout !== undefined && k.connect_timeout !== '') {
    if (!/^\d+$/.test(k.connect_timeout)) throw new ConninfoProblem('has a connect_timeout that is not a whole number of seconds');
    // As libpq: 0 waits for ever, and less than 2 seconds is 2.
    const seconds = Number(k.connect_timeout);
    connectTimeoutS = seconds === 0 ? 0 : Math.max(2, seconds);
  }
  let osUser = 'postgres';
  try {
    osUser = userInfo().username;
  } catch {
    // No passwd entry for this uid (a container): libpq fails there; "postgres" is the usual role.
  }
  const user = k.user || osUser;
  return {
    host: k.host || (k.hostaddr ? k.hostaddr : defaultSocketDirectory(port)),
    hostaddr: k.hostaddr || undefined,
    port,
    dbname: k.dbname || user,
    user,
    password: k.password,
    passfile: k.passfile || join(env.HOME ?? homedir(), '.pgpass'),
    sslmode,
    sslrootcert: k.sslrootcert || undefined,
    sslcert: k.sslcert || undefined,
    sslkey: k.sslkey || undefined,
    sslpassword: k.sslpassword || undefined,
    sslsni: k.sslsni !== '0',
    sslnegotiation,
    connectTimeoutS,
    options: k.options || undefined,
  };
}

/** Whether the host names a Unix socket's directory. */
export function isSocketDirectory(host: string): boolean {
  return host.startsWith('/');
}

/** Where the socket connects: the socket's path, or hostaddr (else host) and port. */
export function dsnTarget(params: ConnectionParameters): DsnTarget {
  if (isSocketDirectory(params.host) && !params.hostaddr) return { host: params.host, port: params.port, path: join(params.host, `.s.PGSQL.${params.port}`) };
  return { host: params.hostaddr ?? params.host, port: params.port };
}

/**
 * Why pgmesh cannot use this connection string (with its service and the environment), or undefined when it can.
 * The answer continues "the connection string of node n1 ..." and never repeats the string.
 */
export function dsnProblem(dsn: string, env: Env = process.env): string | undefined {
  try {
    resolveConnection(dsn, env);
    return undefined;
  } catch (error) {
    if (error instanceof ConninfoProblem) return error.message;
    throw error;
  }
}

/** host:port/dbname (a socket as its directory) for messages and the catalog, without user or password. */
export function describeEndpoint(dsn: string, env: Env = process.env): string {
  try {
    const params = resolveConnection(dsn, env);
    const host = params.host.includes(':') ? `[${params.host}]` : params.host;
    return `${host}:${params.port}/${params.dbname}`;
  } catch {
    if (!isUrl(dsn)) {
      const host = /host\s*=\s*([^\s']+)/i.exec(dsn)?.[1] ?? 'localhost';
      const port = /port\s*=\s*(\d+)/i.exec(dsn)?.[1] ?? '5432';
      return `${host}:${port} (invalid connection string)`;
    }
    // Show only what is after the last "@" of the host part, never the user information.
    const afterScheme = dsn.slice(dsn.indexOf('://') + 3);
    const hostPart = afterScheme.split(/[?/]/)[0] ?? '';
    return `${hostPart.slice(hostPart.lastIndexOf('@') + 1) || 'localhost'} (invalid connection string)`;
  }
}

/**
 * The connection string without its password, for a file pgmesh writes: a URL loses the password of its user
 * information and its ?password=, a key=value string its password=. Everything else is kept as written.
 */
export function withoutPassword(dsn: string): string {
  if (isUrl(dsn)) {
    const question = dsn.indexOf('?');
    const base = question < 0 ? dsn : dsn.slice(0, question);
    const afterScheme = base.indexOf('://') + 3;
    const authorityEnd = base.slice(afterScheme).search(/[/#]/);
    const authority = authorityEnd < 0 ? base.slice(afterScheme) : base.slice(afterScheme, afterScheme + authorityEnd);
    const at = authority.lastIndexOf('@');
    const userInfo = at < 0 ? '' : authority.slice(0, at);
    const user = userInfo.includes(':') ? userInfo.slice(0, userInfo.indexOf(':')) : userInfo;
    const cleanAuthority = at < 0 ? authority : `${user}${user ? '@' : ''}${authority.slice(at + 1)}`;
    const rest = authorityEnd < 0 ? '' : base.slice(afterScheme + authorityEnd);
    const query = rawQuery(dsn)
      .filter(([key]) => key !== 'password')
      .map(([key, value]) => `${key}=${value}`)
      .join('&');
    return `${base.slice(0, afterScheme)}${cleanAuthority}${rest}${query ? `?${query}` : ''}`;
  }
  const keywords = parseConninfo(dsn);
  return Object.entries(keywords)
    .filter(([keyword]) => keyword !== 'password')
    .map(([keyword, value]) => `${keyword}=${/^[^\s'\\]+$/.test(value) ? value : `'${value.replace(/[\\']/g, '\\$&')}'`}`)
    .join(' ');
}

/** Whether a connection string itself carries a password (not its service or the environment). */
export function hasPassword(dsn: string): boolean {
  try {
    return parseConninfo(dsn).password !== undefined;
  } catch {
    return dsnPassword(dsn) !== undefined;
  }
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

/** The password a connection string carries, if any (to scrub it from text that a driver or server produced). */
export function dsnPassword(dsn: string): string | undefined {
  if (isUrl(dsn)) {
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
