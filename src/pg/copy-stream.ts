/**
 * COPY between two servers as a stream: `COPY (...) TO STDOUT` on one connection piped into `COPY ... FROM STDIN` on
 * another, chunk by chunk, so that a table of any size passes through with the memory of a few socket buffers.
 * Text format: it is what both ends agree on whatever the types' OIDs are (binary arrays carry element OIDs).
 */
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PgmeshError } from '../core/errors.ts';
import type { ReservedSql, Sql } from './connect.ts';

export interface CopyCounts {
  readonly rows: number;
  readonly bytes: number;
}

const NEWLINE = 0x0a;

/**
 * Streams `copyOut` (a COPY ... TO STDOUT statement run on `from`) into `copyIn` (a COPY ... FROM STDIN run on `to`).
 * Rows are counted as lines: in text format a row ends with a newline and newlines inside values are escaped.
 * `onProgress` is called after every chunk with the totals so far.
 */
export async function copyBetween(
  from: Sql | ReservedSql,
  copyOut: string,
  to: Sql | ReservedSql,
  copyIn: string,
  onProgress?: (counts: CopyCounts) => void,
): Promise<CopyCounts> {
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
  const source = await from.unsafe(copyOut).readable();
  const sink = await to.unsafe(copyIn).writable();
  let finished = false;
  const done = pipeline(source, counter, sink).then(() => {
    finished = true;
  });
  // The driver completes the sink when the server confirms the COPY; an error the server sends after the last
  // chunk (after CopyDone) is not passed to the sink, which would then never finish. A query queued behind the COPY
  // is answered only after the COPY's own answer: if the sink has not finished by a moment after that, it failed.
  const settled = new Promise<void>((resolve, reject) => {
    counter.once('end', () => {
      to.unsafe('SELECT 1')
        .then(() => new Promise((r) => setTimeout(r, 1000)))
        .then(() => {
          if (finished) resolve();
          else reject(new PgmeshError('APPLY_FAILED', `the receiving server refused the end of a COPY (${copyIn}); see its log`));
        }, reject);
    });
    done.then(resolve, reject);
  });
  await Promise.race([done, settled]);
  return { rows, bytes };
}
