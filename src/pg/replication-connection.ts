/**
 * A walsender connection (`replication=database`) and START_REPLICATION for a logical slot with pgoutput.
 * https://www.postgresql.org/docs/current/protocol-replication.html
 * A new START_REPLICATION needs a new connection: after the stream ends, the connection is closed.
 */
import type { Duplex } from 'node:stream';
import { PgmeshError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import { connectionError, openSql, type Sql } from './connect.ts';
import { quoteIdent, quoteLiteral } from './quote.ts';

export interface SlotState {
  readonly exists: boolean;
  readonly active: boolean;
  readonly activePid: number | null;
  /** 'reserved' | 'extended' | 'unreserved' | 'lost' */
  readonly walStatus: string | null;
  readonly confirmedFlush: string | null;
}

/** What IDENTIFY_SYSTEM says of the server a replication connection reached. */
export interface SystemIdentity {
  readonly systemIdentifier: string;
  readonly database: string;
}

export class ReplicationConnection {
  private constructor(
    private readonly sql: Sql,
    readonly node: string,
    /** Kept from the connect: the agent checks it against the peer's identity recorded at link time. */
    readonly system: SystemIdentity,
  ) {}

  /** `signal` gives up the connection attempt (a peer that does not answer) when it aborts. */
  static async open(dsn: string, node: string, applicationName: string, logger: Logger, signal?: AbortSignal): Promise<ReplicationConnection> {
    signal?.throwIfAborted();
    const sql = openSql(dsn, { node, applicationName, logger, replication: true, max: 1 });
    const abort = () => void sql.end({ timeout: 0 }).catch(() => undefined);
    signal?.addEventListener('abort', abort, { once: true });
    let system: SystemIdentity;
    try {
      const rows = await sql.unsafe<{ systemid: string; dbname: string | null }[]>('IDENTIFY_SYSTEM');
      system = { systemIdentifier: String(rows[0]?.systemid ?? ''), database: rows[0]?.dbname ?? '' };
    } catch (error) {
      await sql.end({ timeout: 1 }).catch(() => undefined);
      throw connectionError(error, node, dsn);
    } finally {
      signal?.removeEventListener('abort', abort);
    }
    return new ReplicationConnection(sql, node, system);
  }

  /** The pgmesh node of the database reached (its name and cluster id), or nulls where it has no pgmesh catalog. */
  async pgmeshNode(): Promise<{ nodeName: string | null; clusterId: string | null }> {
    const installed = await this.sql.unsafe<{ ok: boolean }[]>(`SELECT pg_catalog.to_regclass('pgmesh.local_node') IS NOT NULL AS ok`);
    if (!installed[0]?.ok) return { nodeName: null, clusterId: null };
    const rows = await this.sql.unsafe<{ node_name: string | null; cluster_id: string | null }[]>(
      `SELECT n.node_name, n.cluster_id::pg_catalog.text AS cluster_id FROM pgmesh.local_node n`,
    );
    return { nodeName: rows[0]?.node_name ?? null, clusterId: rows[0]?.cluster_id ?? null };
  }

  async slotState(slot: string): Promise<SlotState> {
    const rows = await this.sql.unsafe<
      { active: boolean; active_pid: number | null; wal_status: string | null; confirmed_flush_lsn: string | null }[]
    >(
      // Only a slot of the database connected to: another database of the server may have one of the same name (slots
      // are server-wide), which is not this node's and would stream another database's changes.
      `SELECT active, active_pid, wal_status, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots
        WHERE slot_name = ${quoteLiteral(slot)} AND database = pg_catalog.current_database()`,
    );
    const row = rows[0];
    if (!row) return { exists: false, active: false, activePid: null, walStatus: null, confirmedFlush: null };
    return {
      exists: true,
      active: row.active,
      activePid: row.active_pid,
      walStatus: row.wal_status,
      confirmedFlush: row.confirmed_flush_lsn,
    };
  }

  /**
   * Creates a logical slot (pgoutput) and exports the snapshot it starts from: a transaction that runs
   * `SET TRANSACTION SNAPSHOT` with the name sees exactly the transactions that committed before the slot's
   * consistent point, and the slot streams exactly those that commit after it. The snapshot lives until the next
   * command on this connection or its close: keep the connection idle while the snapshot is used.
   */
  async createSlotExportingSnapshot(slot: string): Promise<{ readonly consistentPoint: Lsn; readonly snapshotName: string }> {
    try {
      const rows = await this.sql.unsafe<{ consistent_point: string; snapshot_name: string | null }[]>(
        `CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput (SNAPSHOT 'export')`,
      );
      const row = rows[0];
      if (!row?.snapshot_name) throw new Error('the server returned no snapshot name');
      return { consistentPoint: parseLsn(row.consistent_point), snapshotName: row.snapshot_name };
    } catch (error) {
      throw new PgmeshError('CONNECTION_FAILED', `creating slot ${slot} on node ${this.node} failed: ${(error as Error).message}`, {
        context: { node: this.node, slot },
        cause: error,
      });
    }
  }

  /** Starts streaming; the returned duplex yields one CopyData payload per chunk and takes status updates. */
  async startReplication(slot: string, startLsn: Lsn, publication: string, protocolVersion: number, extra: { streaming?: boolean } = {}): Promise<Duplex> {
    const options = [
      `proto_version ${quoteLiteral(String(protocolVersion))}`,
      `publication_names ${quoteLiteral(quoteIdent(publication))}`,
      // Only changes made on the peer itself: what it applied from others reaches us from them directly.
      `origin 'none'`,
      `messages 'true'`,
      // Large transactions are sent while in progress instead of being spilled to the peer's disk first.
      ...(extra.streaming ? [`streaming 'on'`] : []),
    ];
    const command = `START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(startLsn)} (${options.join(', ')})`;
    try {
      return (await this.sql.unsafe(command).writable()) as unknown as Duplex;
    } catch (error) {
      throw new PgmeshError('CONNECTION_FAILED', `START_REPLICATION on node ${this.node} failed: ${(error as Error).message}`, {
        context: { node: this.node, slot },
        cause: error,
      });
    }
  }

  async close(): Promise<void> {
    // START_REPLICATION never completes by itself: close the socket now instead of waiting for it.
    await this.sql.end({ timeout: 0 }).catch(() => undefined);
  }
}
