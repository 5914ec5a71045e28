/**
 * textArrayLiteral builds the text[] literals that multi-row apply statements unnest, so every value must come
 * back from the server exactly as it went in: quotes, backslashes, braces, commas, spaces, the word NULL,
 * empty strings, any Unicode. Checked by hand for the escaping and against a real server for the meaning.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import postgres from 'postgres';
import { textArrayLiteral } from '../../src/pg/text-array.ts';
import { EmbeddedServer } from '../../src/embedded/embedded-server.ts';
import { PG_MAJOR } from '../support/cluster.ts';
import { makeServerTempDir } from '../../src/embedded/server-user.ts';

test('every element is quoted; " and \\ are escaped; null is NULL', () => {
  assert.equal(textArrayLiteral([]), '{}');
  assert.equal(textArrayLiteral(['a']), '{"a"}');
  assert.equal(textArrayLiteral(['', null, 'NULL']), '{"",NULL,"NULL"}');
  assert.equal(textArrayLiteral(['say "hi"', 'C:\\dir\\']), '{"say \\"hi\\"","C:\\\\dir\\\\"}');
  assert.equal(textArrayLiteral(['{a,b}', ' padded ', 'tab\there', 'line\nbreak']), '{"{a,b}"," padded ","tab\there","line\nbreak"}');
  assert.equal(textArrayLiteral(['ünïcødé ✓', '😀']), '{"ünïcødé ✓","😀"}');
});

let server: EmbeddedServer | undefined;
let sql: postgres.Sql<Record<string, never>> | undefined;
let baseDir = '';

before(async () => {
  baseDir = makeServerTempDir('pgmesh-text-array-');
  server = await EmbeddedServer.create({ name: 'ta', baseDir, major: PG_MAJOR, password: `pw-${Math.random().toString(36).slice(2)}` });
  await server.start();
  // As pgmesh's own sessions: values as text, no type fetching.
  sql = postgres(server.dsn, { max: 1, fetch_types: false, types: {}, onnotice: () => undefined }) as unknown as postgres.Sql<Record<string, never>>;
});

after(async () => {
  await sql?.end({ timeout: 1 }).catch(() => undefined);
  await server?.stop().catch(() => server?.kill());
  rmSync(baseDir, { recursive: true, force: true });
});

/** What the server makes of the literal: the elements in order, NULL as null. */
async function roundTrip(values: readonly (string | null)[]): Promise<(string | null)[]> {
  assert.ok(sql);
  const rows = await sql.unsafe<{ v: string | null; n: string }[]>(
    `SELECT u.v, (SELECT cardinality($1::text[]))::text AS n FROM unnest($1::text[]) WITH ORDINALITY AS u(v, o) ORDER BY u.o`,
    [textArrayLiteral(values)],
  );
  if (values.length > 0) assert.equal(rows[0]?.n, String(values.length));
  return rows.map((r) => r.v);
}

test('the server reads back exactly the values, for the awkward cases', async () => {
  const awkward = [
    '',
    null,
    'NULL',
    'null',
    ' ',
    ' leading and trailing ',
    '"',
    '\\',
    '\\"',
    '"\\',
    '{',
    '}',
    '{"a",NULL}',
    'a,b',
    "it's",
    'tab\tnew\nline\rcr',
    'ünïcødé ✓ 😀 \u200b',
    'x'.repeat(10_000),
  ];
  assert.deepEqual(await roundTrip(awkward), awkward);
  assert.deepEqual(await roundTrip([]), []);
  assert.deepEqual(await roundTrip([null]), [null]);
});

test('property: any strings (without NUL, which text cannot hold) round-trip through the server', async () => {
  const element = fc.option(
    fc.string({ unit: fc.oneof(fc.constantFrom('"', '\\', '{', '}', ',', ' ', '\n', "'", 'N', 'U', 'L'), fc.string({ unit: 'grapheme', maxLength: 1 })), maxLength: 12 }),
    { nil: null, freq: 6 },
  );
  await fc.assert(
    fc.asyncProperty(fc.array(element, { maxLength: 8 }), async (values) => {
      fc.pre(values.every((v) => v === null || !v.includes('\0')));
      assert.deepEqual(await roundTrip(values), values);
    }),
    { numRuns: 300 },
  );
});
