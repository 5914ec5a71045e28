/**
 * COPY between two servers as a stream: `COPY (...) TO STDOUT` on one connection piped into `COPY ... FROM STDIN` on
 * another, chunk by chunk, so that a table of any size passes through with the memory of a few socket buffers.
 * Text format: it is what both ends agree on whatever the types' OIDs are (binary arrays carry element OIDs).
 */
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { openSql, type ReservedSql, type Sql } from './connect.ts';
import { quoteLiteral } from './quote.ts';

export interface CopyCounts {
  readonly rows: number;
  readonly bytes: number;
}

/** Where copies read from: a server, and a snapshot that a transaction there has exported. */
export interface SnapshotSource {
  readonly dsn: string;
  readonly node: string;
  readonly snapshotName: string;
  readonly applicationName: string;
  readonly logger: Logger;
}

const NEWLINE = 0x0a;

/**
 * Streams `copyOut` (a COPY ... TO STDOUT statement), run in the source's exported snapshot, into `copyIn` (a
 * COPY ... FROM STDIN run on `to`). Rows are counted as lines: in text format a row ends with a newline and newlines
 * inside values are escaped. `onProgress` is called after every chunk with the totals so far.
 *
 * Each copy reads on a connection of its own, closed afterwards: the driver pauses its socket when the consumer is
 * slower, and when that happens on the last chunk of a COPY nothing resumes it, so the next query on that connection
 * would never get its answer. The transaction and the COPY go in one message, so a reconnect can never run the COPY
 * outside the snapshot.
 */
export async function copyFromSnapshot(
  source: SnapshotSource,
  copyOut: string,
  to: Sql | ReservedSql,
  copyIn: string,
  onProgress?: (counts: CopyCounts) => void,
): Promise<CopyCounts> {
  const from = openSql(source.dsn, { node: source.node, applicationName: source.applicationName, logger: source.logger, max: 1 });
  try {
    let rows = 0;
    let bytes = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        for (let i = chunk.indexOf(NEWLINE); i !== -1; i = chunk.indexOf(NEWLINE, i + 1)) rows++;
        onProgress?.({ rows, bytes });
        callback(null, chunk);
      },
    });
    const readable = await from
      .unsafe(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT ${quoteLiteral(source.snapshotName)}; ${copyOut}`)
      .readable();
    const sink = await to.unsafe(copyIn).writable();
    let finished = false;
    const done = pipeline(readable, counter, sink).then(() => {
      finished = true;
    });
    // The driver completes the sink when the server confirms the COPY; an error the server sends after the last
    // chunk (after CopyDone: a duplicate key in the last rows, say) is not passed to the sink, which would then never
    // finish. A query queued behind the COPY is answered only after the COPY's own answer: if the sink has not
    // finished a moment after that, the COPY failed. (Queued once the driver has sent CopyDone, on the next turn.)
    const settled = new Promise<void>((resolve, reject) => {
      counter.once('end', () =>
        setImmediate(() => {
          to.unsafe('SELECT 1')
            .then(() => new Promise((r) => setTimeout(r, 1000)))
            .then(() => {
              if (finished) resolve();
              else reject(new PgmeshError('APPLY_FAILED', `the receiving server refused the end of a COPY (${copyIn}); see its log`));
            }, reject);
        }),
      );
      done.then(resolve, reject);
    });
    await Promise.race([done, settled]);
    return { rows, bytes };
  } finally {
    await from.end({ timeout: 0 }).catch(() => undefined);
  }
}

/**
 * Runs one read-only query in the source's exported snapshot, on a connection of its own (closed afterwards; see
 * copyFromSnapshot), the transaction and the query in one message. The query takes no parameters: quote literals.
 */
export async function queryInSnapshot<T extends object>(source: SnapshotSource, query: string): Promise<T[]> {
  const sql = openSql(source.dsn, { node: source.node, applicationName: source.applicationName, logger: source.logger, max: 1 });
  try {
    const results: unknown[] = await sql.unsafe(
      `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT ${quoteLiteral(source.snapshotName)}; ${query}; COMMIT`,
    );
    // The driver starts a new result set at each row description after a completed command: the statements before
    // the query share the first set, the query's rows are the last one.
    const last = results[results.length - 1];
    return (Array.isArray(last) ? last : []) as T[];
  } finally {
    await sql.end({ timeout: 0 }).catch(() => undefined);
  }
}
