/**
 * Does the driver pipeline the apply session's statements? The applier (src/apply/applier.ts) sends statements on a
 * reserved postgres.js connection without awaiting them and counts on the driver to keep many on the wire. This
 * probe sends the applier's pattern for one-row transactions (BEGIN; INSERT ... ; SELECT f($1..); COMMIT; SELECT)
 * N times through the same kinds of handles and prints the time per statement, next to the round-trip time of a
 * single awaited statement: if a mode costs about one round trip per statement, it is not pipelining.
 *
 * Usage: npx tsx bench/driver-pipeline.ts [--txns 5000]
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import postgres from 'postgres';
import { EmbeddedServer } from '../src/embedded/embedded-server.ts';
import { parseMajor } from '../src/embedded/postgres-binaries.ts';
import { makeServerTempDir } from '../src/embedded/server-user.ts';

type Sql = postgres.Sql<Record<string, never>>;
type Handle = Pick<Sql, 'unsafe'>;

const STATEMENTS_PER_TXN = 5;

async function applyPattern(handle: Handle, txns: number, base: number, preDescribed: boolean): Promise<number> {
  const insert = 'INSERT INTO probe (id, v) SELECT $1::text::int, $2::text';
  const finish = 'SELECT $1::text::int + 0 AS x';
  if (preDescribed) {
    // A statement that is already prepared is sent without waiting for its Describe reply.
    await handle.unsafe(insert, ['0', 'x'], { prepare: true }).describe();
    await handle.unsafe(finish, ['0'], { prepare: true }).describe();
  }
  const pending: Promise<unknown>[] = [];
  const started = performance.now();
  for (let i = 0; i < txns; i++) {
    const id = String(base + i);
    pending.push(handle.unsafe('BEGIN'));
    pending.push(handle.unsafe(insert, [id, 'payload'], { prepare: true }));
    pending.push(handle.unsafe(finish, [id], { prepare: true }));
    pending.push(handle.unsafe('COMMIT'));
    pending.push(handle.unsafe('SELECT 1'));
    // Like the applier: wait for room only when many replies are outstanding.
    if (pending.length >= 500) await Promise.all(pending.splice(0, 250));
  }
  await Promise.all(pending);
  return ((performance.now() - started) * 1000) / (txns * STATEMENTS_PER_TXN);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { txns: { type: 'string', default: '5000' } } });
  const txns = Number(values.txns);
  const baseDir = makeServerTempDir('pgmesh-probe-');
  const server = await EmbeddedServer.create({ name: 'p1', baseDir, major: parseMajor(process.env.PGMESH_PG_MAJOR, 'PGMESH_PG_MAJOR'), password: 'probe' });
  await server.start();
  const open = (maxPipeline?: number): Sql =>
    postgres(server.dsn, {
      max: 1,
      fetch_types: false,
      onnotice: () => undefined,
      connection: { synchronous_commit: 'off' },
      ...(maxPipeline ? { max_pipeline: maxPipeline } : {}),
    }) as unknown as Sql;
  try {
    const setup = open();
    await setup.unsafe('CREATE TABLE probe (id int PRIMARY KEY, v text)');
    const started = performance.now();
    for (let i = 0; i < 1000; i++) await setup.unsafe('SELECT 1');
    const rttUs = (performance.now() - started);
    await setup.end();
    process.stdout.write(`one awaited statement at a time (a round trip each): ${rttUs.toFixed(1)} us per statement\n`);
    let base = 1;
    const modes: { name: string; maxPipeline?: number; reserve: boolean; preDescribed: boolean }[] = [
      { name: 'reserved connection (as the applier)', reserve: true, preDescribed: false },
      { name: 'reserved, statements described first', reserve: true, preDescribed: true },
      { name: 'reserved, described first, max_pipeline 1000', reserve: true, preDescribed: true, maxPipeline: 1000 },
      { name: 'pool of one connection (not reserved)', reserve: false, preDescribed: false },
    ];
    for (const mode of modes) {
      const sql = open(mode.maxPipeline);
      await sql.unsafe('SELECT 1');
      const reserved = mode.reserve ? await sql.reserve() : undefined;
      const us = await applyPattern(reserved ?? sql, txns, base, mode.preDescribed);
      base += txns;
      reserved?.release();
      await sql.end();
      process.stdout.write(`${mode.name.padEnd(48)} ${us.toFixed(1).padStart(7)} us per statement, ${(1e6 / (us * STATEMENTS_PER_TXN)).toFixed(0).padStart(6)} txn/s\n`);
    }
  } finally {
    await server.stop();
    rmSync(baseDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
