/** Non-superuser roles in tests: the connection string of a node as another role. */
import type { TestNode } from './cluster.ts';

/** The node's connection string with another user and password (the harness's servers accept passwords on TCP). */
export function dsnAs(node: TestNode, user: string, password: string): string {
  const url = new URL(node.server.dsn);
  url.username = encodeURIComponent(user);
  url.password = encodeURIComponent(password);
  return url.toString();
}
