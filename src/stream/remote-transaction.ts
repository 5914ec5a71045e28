/**
 * Where the stream side and the apply side meet. A remote transaction arrives as a sequence of events,
 * `begin`, `change`..., `commit`, in commit order; it is never held whole in memory, so a transaction of
 * any size streams through with bounded memory.
 */
import type { Lsn } from '../core/lsn.ts';
import type { PgTimestamp } from '../core/pg-time.ts';
import type { RelationMessage, Tuple } from '../protocol/messages.ts';

export type RemoteChange =
  | { readonly kind: 'insert'; readonly relation: RelationMessage; readonly newTuple: Tuple }
  | {
      readonly kind: 'update';
      readonly relation: RelationMessage;
      /** The old key when the key changed (or the whole old row under REPLICA IDENTITY FULL). */
      readonly oldTuple: Tuple | undefined;
      readonly newTuple: Tuple;
    }
  | { readonly kind: 'delete'; readonly relation: RelationMessage; readonly oldTuple: Tuple }
  | {
      readonly kind: 'truncate';
      readonly relations: readonly RelationMessage[];
      readonly cascade: boolean;
      readonly restartIdentity: boolean;
    }
  | { readonly kind: 'message'; readonly prefix: string; readonly content: Buffer; readonly lsn: Lsn };

export type StreamEvent =
  | { readonly kind: 'begin'; readonly xid: number; readonly finalLsn: Lsn; readonly commitTime: PgTimestamp }
  | { readonly kind: 'change'; readonly change: RemoteChange }
  | { readonly kind: 'commit'; readonly commitLsn: Lsn; readonly endLsn: Lsn; readonly commitTime: PgTimestamp };

/** What the apply side tells the stream: what is durable locally, so it can be acknowledged to the peer. */
export interface ProgressSink {
  /** The end LSN of the last remote transaction whose local commit is flushed to disk. */
  reportDurable(lsn: Lsn): void;
}
