/**
 * Messages of the logical replication stream, named as PostgreSQL names them.
 * - Replication (CopyBoth) messages: https://www.postgresql.org/docs/current/protocol-replication.html
 * - pgoutput messages: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 * OIDs and XIDs are unsigned 32-bit numbers; LSNs are bigint; timestamps are microseconds since 2000-01-01.
 */
import type { Lsn } from '../core/lsn.ts';
import type { PgTimestamp } from '../core/pg-time.ts';

/** 'w': WAL data carrying one pgoutput message. */
export interface XLogData {
  readonly kind: 'xlogdata';
  readonly walStart: Lsn;
  readonly walEnd: Lsn;
  readonly sendTime: PgTimestamp;
  readonly data: Buffer;
}

/** 'k': the server's keepalive. */
export interface PrimaryKeepalive {
  readonly kind: 'keepalive';
  readonly walEnd: Lsn;
  readonly sendTime: PgTimestamp;
  readonly replyRequested: boolean;
}

export type ReplicationMessage = XLogData | PrimaryKeepalive;

/** 'r': our standby status update. */
export interface StandbyStatusUpdate {
  readonly written: Lsn;
  readonly flushed: Lsn;
  readonly applied: Lsn;
  readonly clientTime: PgTimestamp;
  readonly replyRequested: boolean;
}

/** One column value of a TupleData: null, an unchanged TOASTed value that was not sent, or the text form. */
export type TupleValue =
  | { readonly kind: 'null' }
  | { readonly kind: 'unchanged' }
  | { readonly kind: 'text'; readonly value: string }
  | { readonly kind: 'binary'; readonly value: Buffer };

export type Tuple = readonly TupleValue[];

export interface RelationColumn {
  /** True when the column is part of the replica identity (flag bit 1). */
  readonly isKey: boolean;
  readonly name: string;
  readonly typeOid: number;
  readonly typeModifier: number;
}

export interface BeginMessage {
  readonly tag: 'begin';
  readonly finalLsn: Lsn;
  readonly commitTime: PgTimestamp;
  readonly xid: number;
}

export interface CommitMessage {
  readonly tag: 'commit';
  readonly flags: number;
  readonly commitLsn: Lsn;
  readonly endLsn: Lsn;
  readonly commitTime: PgTimestamp;
}

export interface OriginMessage {
  readonly tag: 'origin';
  readonly originLsn: Lsn;
  readonly name: string;
}

export interface RelationMessage {
  readonly tag: 'relation';
  /** Present inside a streamed transaction (protocol 2+). */
  readonly xid?: number;
  readonly relationOid: number;
  readonly schema: string;
  readonly name: string;
  /** 'd' default, 'n' nothing, 'f' full, 'i' index. */
  readonly replicaIdentity: 'd' | 'n' | 'f' | 'i';
  readonly columns: readonly RelationColumn[];
}

export interface TypeMessage {
  readonly tag: 'type';
  readonly xid?: number;
  readonly typeOid: number;
  readonly schema: string;
  readonly name: string;
}

export interface InsertMessage {
  readonly tag: 'insert';
  readonly xid?: number;
  readonly relationOid: number;
  readonly newTuple: Tuple;
}

export interface UpdateMessage {
  readonly tag: 'update';
  readonly xid?: number;
  readonly relationOid: number;
  /** 'K': the old key (the key changed); 'O': the whole old row (REPLICA IDENTITY FULL); absent otherwise. */
  readonly oldKind?: 'key' | 'old';
  readonly oldTuple?: Tuple;
  readonly newTuple: Tuple;
}

export interface DeleteMessage {
  readonly tag: 'delete';
  readonly xid?: number;
  readonly relationOid: number;
  readonly oldKind: 'key' | 'old';
  readonly oldTuple: Tuple;
}

export interface TruncateMessage {
  readonly tag: 'truncate';
  readonly xid?: number;
  readonly cascade: boolean;
  readonly restartIdentity: boolean;
  readonly relationOids: readonly number[];
}

export interface LogicalMessage {
  readonly tag: 'message';
  readonly xid?: number;
  readonly transactional: boolean;
  readonly lsn: Lsn;
  readonly prefix: string;
  readonly content: Buffer;
}

export interface StreamStartMessage {
  readonly tag: 'stream_start';
  readonly xid: number;
  readonly firstSegment: boolean;
}

export interface StreamStopMessage {
  readonly tag: 'stream_stop';
}

export interface StreamCommitMessage {
  readonly tag: 'stream_commit';
  readonly xid: number;
  readonly flags: number;
  readonly commitLsn: Lsn;
  readonly endLsn: Lsn;
  readonly commitTime: PgTimestamp;
}

export interface StreamAbortMessage {
  readonly tag: 'stream_abort';
  readonly xid: number;
  readonly subXid: number;
  /** Protocol 4 with streaming = parallel only. */
  readonly abortLsn?: Lsn;
  readonly abortTime?: PgTimestamp;
}

export type PgOutputMessage =
  | BeginMessage
  | CommitMessage
  | OriginMessage
  | RelationMessage
  | TypeMessage
  | InsertMessage
  | UpdateMessage
  | DeleteMessage
  | TruncateMessage
  | LogicalMessage
  | StreamStartMessage
  | StreamStopMessage
  | StreamCommitMessage
  | StreamAbortMessage;
