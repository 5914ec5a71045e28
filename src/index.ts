/** The library entry point: everything the CLI does, callable from code. */
export { loadConfig, findNode, DEFAULT_TUNING } from './config/config.ts';
export type { ClusterConfig, NodeConfig, AgentTuning, LogLevel } from './config/config.ts';
export { createCluster, clusterStatus, addClusterTables, removeClusterTables } from './cluster/cluster-ops.ts';
export type { ClusterStatus, LinkStatus, NodeStatus, CreateClusterResult, CreateClusterOptions } from './cluster/cluster-ops.ts';
export { clusterHealth } from './cluster/health.ts';
export type { ClusterHealth, HealthProblem, HealthProblemKind } from './cluster/health.ts';
export { initNode, addTables, removeTables, listReplicatedTables, readLocalNode } from './cluster/node-admin.ts';
export type { AddTablesResult, RemoveTablesResult, TableRef, TableRefusal } from './cluster/node-admin.ts';
export { grantAgentPrivileges, missingAgentPrivileges } from './cluster/agent-privileges.ts';
export type { MissingPrivilege } from './cluster/agent-privileges.ts';
export { checkServerFacts, readServerFacts } from './cluster/server-checks.ts';
export { addNode } from './membership/node-add.ts';
export type { AddNodeOptions, AddNodeResult } from './membership/node-add.ts';
export { removeNode } from './membership/node-remove.ts';
export { resyncNode } from './membership/node-resync.ts';
export type { ResyncNodeOptions, ResyncNodeResult } from './membership/node-resync.ts';
export type { RemoveNodeOptions, RemoveNodeResult } from './membership/node-remove.ts';
export { readCopyProgress } from './membership/membership-state.ts';
export type { JoinProgress, TableCopyProgress } from './membership/membership-state.ts';
export { Agent } from './agent/agent.ts';
export type { AgentStatus } from './agent/agent.ts';
export type { PeerStatus } from './agent/peer-replicator.ts';
export { PgmeshError } from './core/errors.ts';
export type { PgmeshErrorCode } from './core/errors.ts';
export type { Logger } from './core/logger.ts';
export { silentLogger } from './core/logger.ts';
export { createLogger } from './core/pino-logger.ts';
export { EmbeddedServer } from './embedded/embedded-server.ts';
export { formatLsn, parseLsn } from './core/lsn.ts';
export {
  listConflicts,
  listExceptions,
  discardException,
  replayException,
  setTablePolicy,
  setDeltaColumns,
  resumePeer,
  CONFLICT_POLICIES,
  EXCEPTION_POLICIES,
} from './cluster/repair.ts';
export type { ConflictRecord, ExceptionRecord } from './cluster/repair.ts';
