/**
 * Connection strings as libpq reads them: a URL (postgres://user:password@host:port/dbname?keyword=value) or
 * key=value pairs (host=db1 port=5432 dbname=app), into libpq's keywords.
 * https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING
 *
 * The URL's user information, host, port and database are read by pg-connection-string (node-postgres's parser);
 * its query is read here with libpq's rules (percent-escapes only, a keyword at most once, keywords only), since
 * pg-connection-string would keep any query parameter and read certificate files while parsing. The key=value form
 * has no maintained parser on npm: its grammar is a few lines (below).
 *
 * Problems are sentences that continue "the connection string of node n1 ..." and never repeat the string, which
 * may hold a password.
 */
import { parse as parseUrl } from 'pg-connection-string';

const URL_PREFIX = /^postgres(?:ql)?:\/\//i;

export function isUrl(dsn: string): boolean {
  return URL_PREFIX.test(dsn);
}

/** A connection string pgmesh cannot use; the message continues "the connection string of node n1 ...". */
export class ConninfoProblem extends Error {
  override readonly name = 'ConninfoProblem';
}

/**
 * libpq's keywords that pgmesh honours; the value says what pgmesh does with it when that is not plain.
 * A keyword that libpq knows and pgmesh does not honour is refused: silently ignoring sslcrl or require_auth would
 * connect with less protection than the operator asked for.
 */
export const KEYWORDS = [
  'host',
  'hostaddr',
  'port',
  'dbname',
  'user',
  'password',
  'passfile',
  'service',
  'servicefile',
  'connect_timeout',
  'options',
  'application_name',
  'fallback_application_name',
  'sslmode',
  'sslrootcert',
  'sslcert',
  'sslkey',
  'sslpassword',
  'sslsni',
  'sslnegotiation',
  // Accepted for strings written for other tools; pgmesh keeps its own TCP keepalives.
  'keepalives',
  'keepalives_idle',
  'keepalives_interval',
  'keepalives_count',
  // Accepted with the values that match what pgmesh does (checked in dsn.ts).
  'client_encoding',
  'gssencmode',
  'channel_binding',
  'target_session_attrs',
  'load_balance_hosts',
] as const;

export type Keyword = (typeof KEYWORDS)[number];
export type Keywords = Partial<Record<Keyword, string>>;

/** libpq keywords pgmesh refuses, with the reason a user can act on. */
const UNSUPPORTED: Readonly<Record<string, string>> = {
  require_auth: 'pgmesh does not support require_auth (it refuses a password in clear on its own: see PGMESH_ALLOW_CLEARTEXT_PASSWORD)',
  sslcrl: 'pgmesh does not support certificate revocation lists (sslcrl)',
  sslcrldir: 'pgmesh does not support certificate revocation lists (sslcrldir)',
  sslcertmode: 'pgmesh does not support sslcertmode; give sslcert and sslkey, or neither',
  sslcompression: 'TLS compression is not supported',
  ssl_min_protocol_version: 'pgmesh does not support ssl_min_protocol_version (Node.js negotiates TLS 1.2 or later)',
  ssl_max_protocol_version: 'pgmesh does not support ssl_max_protocol_version',
  requirepeer: 'pgmesh does not support requirepeer',
  krbsrvname: 'pgmesh does not support GSSAPI/Kerberos authentication',
  gsslib: 'pgmesh does not support GSSAPI/Kerberos authentication',
  gssdelegation: 'pgmesh does not support GSSAPI/Kerberos authentication',
  tcp_user_timeout: 'pgmesh does not support tcp_user_timeout',
  replication: 'pgmesh opens replication connections itself; remove replication',
  min_protocol_version: 'pgmesh does not support min_protocol_version',
  max_protocol_version: 'pgmesh does not support max_protocol_version',
};

/** Why a keyword is refused: not libpq's, or libpq's but not supported. */
export function keywordProblem(keyword: string): string | undefined {
  if ((KEYWORDS as readonly string[]).includes(keyword)) return undefined;
  const unsupported = UNSUPPORTED[keyword];
  if (unsupported) return `sets ${keyword}: ${unsupported}`;
  return `has the unknown keyword "${keyword}"; libpq's keywords that pgmesh honours are ${KEYWORDS.join(', ')} (server settings go in options='-c name=value')`;
}

/** The keywords a connection string sets, as written (no defaults); throws ConninfoProblem. */
export function parseConninfo(dsn: string): Keywords {
  const pairs = isUrl(dsn) ? urlPairs(dsn) : /=/.test(dsn) || dsn.trim() === '' ? keyValuePairs(dsn) : notAConnectionString();
  const out: Keywords = {};
  for (const [keyword, value] of pairs) {
    const problem = keywordProblem(keyword);
    if (problem) throw new ConninfoProblem(problem);
    out[keyword as Keyword] = value;
  }
  return out;
}

function notAConnectionString(): never {
  throw new ConninfoProblem('is not a connection string; write key=value pairs (host=db1 port=5432 dbname=app user=app) or a URL (postgres://user@host:port/dbname)');
}

/**
 * key=value pairs separated by whitespace; a value is a word, or single-quoted, with backslash escaping the next
 * character in both. A keyword given twice keeps its last value, as in libpq.
 */
function keyValuePairs(text: string): [string, string][] {
  const pairs: [string, string][] = [];
  let i = 0;
  const skipSpace = () => {
    while (i < text.length && /\s/.test(text[i] as string)) i++;
  };
  for (;;) {
    skipSpace();
    if (i >= text.length) return pairs;
    const start = i;
    while (i < text.length && text[i] !== '=' && !/\s/.test(text[i] as string)) i++;
    const keyword = text.slice(start, i);
    skipSpace();
    // Not echoed: the word may be the tail of an unquoted password with a space in it.
    if (text[i] !== '=') {
      throw new ConninfoProblem(`has a word without "=" after it; write keyword=value pairs separated by spaces, and quote a value that holds spaces (password='a b')`);
    }
    i++;
    skipSpace();
    let value = '';
    if (text[i] === "'") {
      i++;
      for (;;) {
        if (i >= text.length) throw new ConninfoProblem(`has an unterminated quoted value for ${keyword}; close it with ' (a ' or \\ inside is written \\' or \\\\)`);
        const c = text[i] as string;
        if (c === '\\' && i + 1 < text.length) {
          value += text[i + 1];
          i += 2;
        } else if (c === "'") {
          i++;
          break;
        } else {
          value += c;
          i++;
        }
      }
    } else {
      while (i < text.length && !/\s/.test(text[i] as string)) {
        if (text[i] === '\\' && i + 1 < text.length) i++;
        value += text[i];
        i++;
      }
    }
    pairs.push([keyword, value]);
  }
}

/** The host part of a URL, after any user information: "db1:5432", "[::1]:5432", "h1,h2". */
function urlHostPart(dsn: string): string {
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

/** The query's parameters as written (not decoded): [key, value]. */
export function rawQuery(dsn: string): [string, string][] {
  const question = dsn.indexOf('?');
  if (question < 0) return [];
  const hash = dsn.indexOf('#', question);
  return dsn
    .slice(question + 1, hash < 0 ? undefined : hash)
    .split('&')
    .filter((part) => part !== '')
    .map((part) => {
      const eq = part.indexOf('=');
      return eq < 0 ? [part, ''] : [part.slice(0, eq), part.slice(eq + 1)];
    });
}

function urlPairs(dsn: string): [string, string][] {
  // Not echoed: with an unencoded "/" in the password, what looks like the host part is the password.
  if (urlHostPart(dsn).includes(',')) throw new ConninfoProblem('names several hosts (a list with ","); a node is one server: give one host:port');
  let url: URL;
  try {
    url = new URL(dsn);
  } catch {
    throw new ConninfoProblem(
      'is not a valid URL; percent-encode the characters @ : / ? # % and spaces in the user name and password ' +
        '(encodeURIComponent), and check that the port is a number',
    );
  }
  for (const [part, text] of [
    ['user name', url.username],
    ['password', url.password],
    ['host', url.hostname],
    ['database name', url.pathname],
  ] as const) {
    if (!decodes(text)) throw new ConninfoProblem(`has a % in its ${part} that is not followed by two hexadecimal digits; write a % itself as %25`);
  }
  if (url.port === '0') throw new ConninfoProblem('has port 0; give the port the server listens on (5432 by default)');
  const query = rawQuery(dsn);
  const seen = new Set<string>();
  const pairs: [string, string][] = [];
  for (const [key, value] of query) {
    if (!decodes(key) || !decodes(value)) {
      throw new ConninfoProblem(`has a % in its query (?${decodes(key) ? decodeURIComponent(key) : '...'}=) that is not followed by two hexadecimal digits; write a % itself as %25`);
    }
    const keyword = decodeURIComponent(key);
    if (seen.has(keyword)) throw new ConninfoProblem(`gives ?${keyword}= more than once; keep one`);
    seen.add(keyword);
    // As libpq reads a query: percent-escapes only, a "+" stays a "+".
    pairs.push([keyword, decodeURIComponent(value)]);
  }
  if (seen.has('password') && url.password) throw new ConninfoProblem('gives a password twice, after the user name and as ?password=; keep one');
  // The URL without its query, for pg-connection-string: user, password, host, port, database.
  const question = dsn.indexOf('?');
  const parts = parseUrl(question < 0 ? dsn.replace(/#.*$/, '') : dsn.slice(0, question));
  const fromUrl: [string, string][] = [];
  if (parts.user) fromUrl.push(['user', parts.user]);
  if (parts.password) fromUrl.push(['password', parts.password]);
  if (parts.host) fromUrl.push(['host', parts.host]);
  if (parts.port) fromUrl.push(['port', String(parts.port)]);
  // The database as libpq decodes it (pg-connection-string leaves escapes such as %2F in it).
  if (url.pathname.length > 1) fromUrl.push(['dbname', decodeURIComponent(url.pathname.slice(1))]);
  // The query's keywords come after the URL's parts and win over them (?host= and ?port= as in libpq).
  return [...fromUrl, ...pairs];
}
