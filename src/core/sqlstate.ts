/**
 * SQLSTATE classes that pgmesh acts on, as named tables rather than string compares scattered through the code.
 * See https://www.postgresql.org/docs/current/errcodes-appendix.html
 */
export const SQLSTATE = {
  uniqueViolation: '23505',
  foreignKeyViolation: '23503',
  checkViolation: '23514',
  notNullViolation: '23502',
  exclusionViolation: '23P01',
  invalidTextRepresentation: '22P02',
  numericValueOutOfRange: '22003',
  stringDataRightTruncation: '22001',
  datatypeMismatch: '42804',
  generatedAlways: '428C9',
  undefinedTable: '42P01',
  undefinedColumn: '42703',
  undefinedObject: '42704',
  duplicateObject: '42710',
  inFailedTransaction: '25P02',
  invalidPassword: '28P01',
  invalidAuthorization: '28000',
  invalidCatalogName: '3D000',
  insufficientPrivilege: '42501',
  objectInUse: '55006',
  lockNotAvailable: '55P03',
  adminShutdown: '57P01',
  crashShutdown: '57P02',
  cannotConnectNow: '57P03',
  serializationFailure: '40001',
  deadlockDetected: '40P01',
  /** Raised by the applier's finish statement when the previous pipelined transaction did not commit. */
  predecessorNotCommitted: 'PM001',
  /** Raised by an apply statement when a table with the 'pause' policy has a conflict. */
  conflictPause: 'PM002',
  /** A change failed and its table's exception policy is 'pause'. */
  exceptionPause: 'PM003',
  /**
   * A fast-path apply statement met a row it cannot decide alone (the row exists, a tombstone, a version from
   * another node): its transaction is applied again with the full statements. Not an error anyone sees.
   */
  fastPathMiss: 'PM004',
  /** A pgmesh logical message refused (not signed under the cluster key, or unreadable): kept in pgmesh.exception. */
  refusedMessage: 'PM009',
} as const;

/** Errors after which the same work may succeed if tried again later (server restarting, connection lost). */
const RETRYABLE = new Set<string>([
  SQLSTATE.adminShutdown,
  SQLSTATE.crashShutdown,
  SQLSTATE.cannotConnectNow,
  SQLSTATE.serializationFailure,
  SQLSTATE.deadlockDetected,
  SQLSTATE.objectInUse,
  SQLSTATE.lockNotAvailable,
]);

/**
 * Errors of a transaction applied at the same time as local sessions (a deadlock with one of them, a row changed
 * under a lock, a lock not granted within the apply session's lock_timeout): normal in multi-master, and gone when
 * the same transaction is applied again a moment later. The applier retries it in place (see apply-retry.ts).
 */
export const APPLY_RETRY_REASONS: Readonly<Record<string, string>> = {
  [SQLSTATE.deadlockDetected]: 'deadlock',
  [SQLSTATE.serializationFailure]: 'serialization failure',
  [SQLSTATE.lockNotAvailable]: 'lock timeout',
};

/**
 * Errors that a row change can raise because of the data it carries: the transaction is applied again change by
 * change, and a change that fails goes to the exception table instead of stopping the stream for good. Every data
 * exception (class 22) and integrity constraint violation (class 23), and the listed others.
 * A missing privilege (42501) too: a table's owner can revoke the agent's rights on its own table, or enable
 * row-level security on it (refused in pgmesh sessions, see src/pg/connect.ts), and that must stop that table's
 * changes only, not the stream of every tenant (docs/security-probe.md). A privilege missing on pgmesh's catalog
 * fails the change-by-change apply as well, and stops the stream as before; the agent checks those when it starts.
 */
const DATA = new Set<string>([SQLSTATE.datatypeMismatch, SQLSTATE.generatedAlways, SQLSTATE.insufficientPrivilege]);
const DATA_CLASSES = ['22', '23'];

export function sqlState(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

export function isRetryableSqlState(code: string | undefined): boolean {
  return code !== undefined && (RETRYABLE.has(code) || code.startsWith('08'));
}

export function isApplyRetrySqlState(code: string | undefined): boolean {
  return code !== undefined && Object.hasOwn(APPLY_RETRY_REASONS, code);
}

export function isDataSqlState(code: string | undefined): boolean {
  return code !== undefined && (DATA.has(code) || DATA_CLASSES.includes(code.slice(0, 2)));
}
