/**
 * The workloads of the apply benchmark. Each one is generated on the publisher while the consumer is stopped, by
 * a procedure that COMMITs inside its loop: every iteration is its own transaction, exactly as if a client had sent
 * it (the WAL and so the decoded stream are the same), without a client round trip and an fsync per transaction
 * (the generating session uses synchronous_commit=off; the server keeps fsync on).
 *
 * The table is pgbench_accounts' shape (int key, two ints, char(84) filler). A marker row written last, in its own
 * transaction, tells when the subscriber has applied everything before it (see apply-throughput.ts).
 */

export interface Workload {
  readonly name: string;
  readonly description: string;
  readonly txns: number;
  readonly rowsPerTxn: number;
  /** Rows present on both nodes before the subscription or cluster exists (the update workload needs them). */
  readonly preloadRows: number;
  /**
   * Transaction t writes keys t * rowsPerTxn + 1 .. (t + 1) * rowsPerTxn, and nothing else: the highest key on the
   * subscriber tells how far its apply has come (an index probe), so the bench can sample the rate during the run.
   */
  readonly progressByKey: boolean;
  /** Runs on the publisher, in a session with synchronous_commit=off. */
  readonly generate: string;
}

export const TABLE = 'bench_accounts';
export const MARKER_TABLE = 'bench_marker';

export const SCHEMA = `
CREATE TABLE ${TABLE} (aid integer PRIMARY KEY, bid integer NOT NULL, abalance integer NOT NULL, filler character(84));
CREATE TABLE ${MARKER_TABLE} (id integer PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now());

CREATE PROCEDURE bench_insert_txns(txns integer, rows_per_txn integer) LANGUAGE plpgsql AS $$
BEGIN
  FOR t IN 0 .. txns - 1 LOOP
    INSERT INTO ${TABLE} (aid, bid, abalance, filler)
    SELECT g, 1 + g / 100000, 0, '' FROM generate_series(t * rows_per_txn + 1, (t + 1) * rows_per_txn) g;
    COMMIT;
  END LOOP;
END $$;

-- pgbench's "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid", one per transaction.
-- aid walks the table in a scattered order (i * 7919 mod n is a permutation when n is not a multiple of 7919),
-- so every update touches another row, on another page, as pgbench's random aid mostly does.
CREATE PROCEDURE bench_update_txns(txns integer, accounts integer) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 0 .. txns - 1 LOOP
    UPDATE ${TABLE} SET abalance = abalance + (i % 1000) - 500
     WHERE aid = ((i::bigint * 7919) % accounts)::integer + 1;
    COMMIT;
  END LOOP;
END $$;
`;

export function preloadSql(rows: number): string {
  return `INSERT INTO ${TABLE} (aid, bid, abalance, filler) SELECT g, 1 + g / 100000, 0, '' FROM generate_series(1, ${rows}) g`;
}

/**
 * `--preload`: rows that make the table large before the workload runs, below every key a workload writes (keys
 * -rows .. -1), so that every workload runs unchanged against a table that already holds them.
 */
export function largeTableSql(rows: number): string {
  return `INSERT INTO ${TABLE} (aid, bid, abalance, filler) SELECT -g, 0, 0, '' FROM generate_series(1, ${rows}) g`;
}

/** The workloads at a scale (1 = default: the full bench takes about 15 minutes on 2 cores). */
export function workloads(scale: number): Workload[] {
  const count = (n: number): number => Math.max(1, Math.round(n * scale));
  const smallTxns = count(50_000);
  let updateTxns = smallTxns;
  // Keep the update order a permutation: the table size must not be a multiple of the stride.
  if (updateTxns % 7919 === 0) updateTxns++;
  const bulkTxns = count(500);
  const bigRows = count(1_000_000);
  return [
    {
      name: 'insert-1row',
      description: `${smallTxns} transactions of one INSERT`,
      txns: smallTxns,
      rowsPerTxn: 1,
      preloadRows: 0,
      progressByKey: true,
      generate: `CALL bench_insert_txns(${smallTxns}, 1)`,
    },
    {
      name: 'update-1row',
      description: `${updateTxns} transactions of one UPDATE (pgbench-like, ${updateTxns} accounts)`,
      txns: updateTxns,
      rowsPerTxn: 1,
      preloadRows: updateTxns,
      progressByKey: false,
      generate: `CALL bench_update_txns(${updateTxns}, ${updateTxns})`,
    },
    {
      name: 'bulk-1000',
      description: `${bulkTxns} transactions of 1000 INSERTed rows`,
      txns: bulkTxns,
      rowsPerTxn: 1000,
      preloadRows: 0,
      progressByKey: true,
      generate: `CALL bench_insert_txns(${bulkTxns}, 1000)`,
    },
    {
      name: 'one-big-txn',
      description: `one transaction of ${bigRows} INSERTed rows`,
      txns: 1,
      rowsPerTxn: bigRows,
      preloadRows: 0,
      progressByKey: true,
      generate: `CALL bench_insert_txns(1, ${bigRows})`,
    },
  ];
}
