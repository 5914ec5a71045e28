/**
 * `pgmesh node remove`: a node leaves the cluster. When it is reachable, what it committed first reaches every other
 * node (a marker transaction on it, which every other node must apply: their agents must be streaming from it);
 * then its slots, origins and catalog rows are removed on every node, and on the node itself its slots, links and
 * publication. It keeps its data and its pgmesh catalog (conflicts, exceptions), marked 'removed': its agent refuses
 * to start. When it is not reachable, its changes that others have not received are lost, which needs `force`.
 */
import { PgmeshError, errorMessage } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { formatLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import { connectionError, openSql, type Sql } from '../pg/connect.ts';
import type { ClusterConfig } from '../config/config.ts';
import { PUBLICATION } from '../cluster/catalog-schema.ts';
import { findNode } from '../config/config.ts';
import { dropSlotIfExists, dropSlotsFor, unlinkPeer } from './links.ts';
import { readMembership, setMembership } from './membership-state.ts';

export interface RemoveNodeOptions {
  readonly name: string;
  /** Remove it although it is unreachable or its changes could not be drained (they are lost). */
  readonly force?: boolean | undefined;
  readonly drainTimeoutMs?: number | undefined;
}

export interface RemoveNodeResult {
  readonly name: string;
  /** Every change it committed before the removal reached every other node. */
  readonly drained: boolean;
  /** It could be reached, and was cleaned too. */
  readonly reachable: boolean;
  /** What was not done, for the user (empty when everything was). */
  readonly warnings: readonly string[];
}

const DRAIN_TIMEOUT_MS = 120_000;

export async function removeNode(config: ClusterConfig, logger: Logger, options: RemoveNodeOptions): Promise<RemoveNodeResult> {
  const leaving = findNode(config, options.name);
  const others = config.nodes.filter((n) => n.name !== leaving.name);
  const open = (name: string, dsn: string) => openSql(dsn, { node: name, applicationName: 'pgmesh node remove', logger, max: 1, connectTimeoutS: 5 });
  const conns = new Map(others.map((n) => [n.name, open(n.name, n.dsn)]));
  const leavingSql = open(leaving.name, leaving.dsn);
  const sqlOf = (name: string): Sql => {
    const sql = conns.get(name);
    if (!sql) throw new PgmeshError('INTERNAL', `no connection to node ${name}`);
    return sql;
  };
  try {
    // Every remaining node must be cleaned: all of them reachable, or nothing is done.
    const failures = await Promise.all(
      others.map((n) => sqlOf(n.name).unsafe('SELECT 1').then(() => undefined, (error: unknown) => connectionError(error, n.name, n.dsn).message)),
    );
    const unreachable = failures.filter((f) => f !== undefined);
    if (unreachable.length > 0) {
      throw new PgmeshError('CONNECTION_FAILED', `every remaining node must be reachable to remove ${leaving.name}:\n${unreachable.join('\n')}`);
    }
    const reachable = await leavingSql.unsafe('SELECT 1').then(
      () => true,
      () => false,
    );
    const warnings: string[] = [];
    if (!reachable) {
      if (!options.force) {
        throw new PgmeshError(
          'CONNECTION_FAILED',
          `node ${leaving.name} is not reachable: changes it committed that the other nodes have not received would be lost. Start it again and retry, or run with --force to remove it anyway`,
        );
      }
      warnings.push(`${leaving.name} was not reachable: changes it made that the others had not received are lost, and its own slots and catalog were left as they were`);
    }
    let drained = false;
    if (reachable) {
      try {
        await drain(leavingSql, leaving.name, others.map((n) => ({ name: n.name, sql: sqlOf(n.name) })), {
          timeoutMs: options.drainTimeoutMs ?? DRAIN_TIMEOUT_MS,
          marker: 'pgmesh.leave',
          otherwise: 'use --force to remove it without them',
        });
        drained = true;
      } catch (error) {
        if (!options.force) throw error;
        warnings.push(`${errorMessage(error)} (removed anyway: --force)`);
      }
    }
    // The leaving node first: ending the streams it serves (slots on it) releases the other nodes' apply sessions for
    // it, whose origins are dropped next.
    if (reachable) {
      for (const slot of await leavingSql.unsafe<{ slot_name: string }[]>(
        `SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'pgmesh\\_%' AND database = current_database()`,
      )) {
        await dropSlotIfExists(leavingSql, slot.slot_name, { terminate: true, node: leaving.name });
      }
    }
    for (const node of others) {
      const sql = sqlOf(node.name);
      await dropSlotsFor(sql, leaving.name, { terminate: true, node: node.name });
      await unlinkPeer(sql, leaving.name, node.name);
    }
    if (reachable) {
      const hasCatalog = await leavingSql.unsafe<{ ok: boolean }[]>(`SELECT to_regclass('pgmesh.peer') IS NOT NULL AS ok`);
      if (hasCatalog[0]?.ok) {
        for (const peer of await leavingSql.unsafe<{ node_name: string }[]>(`SELECT node_name FROM pgmesh.peer`)) {
          await unlinkPeer(leavingSql, peer.node_name, leaving.name);
        }
        await leavingSql.unsafe(`DROP PUBLICATION IF EXISTS ${PUBLICATION}`);
        const state = await readMembership(leavingSql);
        if (state) await setMembership(leavingSql, { state: 'removed', phase: 'removed', finished: true });
        else await setMembership(leavingSql, { state: 'removed', source: '-', phase: 'removed' });
        // Its agent may still run: once the node is marked removed, it makes no version horizon slot again.
        const horizon = await leavingSql.unsafe<{ ok: boolean }[]>(`SELECT to_regprocedure('pgmesh.drop_version_horizon()') IS NOT NULL AS ok`);
        if (horizon[0]?.ok) await leavingSql.unsafe(`SELECT pgmesh.drop_version_horizon()`);
      }
    }
    logger.info({ node: leaving.name, drained, reachable }, 'node removed');
    return { name: leaving.name, drained, reachable, warnings };
  } finally {
    await Promise.all([leavingSql, ...conns.values()].map((s) => s.end({ timeout: 1 }).catch(() => undefined)));
  }
}

/**
 * A marker transaction on node `name`; every other node must apply its stream past it, so everything `name` committed
 * before the call has reached them. `otherwise` ends the timeout's message (what the user can do instead; none: the
 * caller says it).
 */
export async function drain(
  leaving: Sql,
  name: string,
  others: readonly { name: string; sql: Sql }[],
  options: { readonly timeoutMs: number; readonly marker: string; readonly otherwise?: string },
): Promise<void> {
  const timeoutMs = options.timeoutMs;
  const rows = await leaving.unsafe<{ lsn: string }[]>(`SELECT pgmesh.emit_message($2, $1)::text AS lsn`, [name, options.marker]);
  const marker: Lsn = parseLsn(rows[0]?.lsn ?? '0/0');
  const deadline = Date.now() + timeoutMs;
  const behind = new Set(others.map((o) => o.name));
  while (behind.size > 0) {
    for (const other of others) {
      if (!behind.has(other.name)) continue;
      const progress = await other.sql.unsafe<{ end_lsn: string }[]>(`SELECT end_lsn::text FROM pgmesh.progress WHERE peer = $1`, [name]);
      if (progress[0] && parseLsn(progress[0].end_lsn) > marker) behind.delete(other.name);
    }
    if (behind.size === 0) return;
    if (Date.now() > deadline) {
      throw new PgmeshError(
        'APPLY_FAILED',
        `${[...behind].join(', ')} did not receive ${name}'s changes up to ${formatLsn(marker)} within ${Math.round(timeoutMs / 1000)} s; are their agents running and streaming from ${name} (pgmesh status)?${options.otherwise ? ` Retry, or ${options.otherwise}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}
