/** Non-superuser roles in tests: the connection string of a node as another role. */
import postgres from 'postgres';
import type { Sql, TestNode } from './cluster.ts';

/** The node's connection string with another user and password (the harness's servers accept passwords on TCP). */
export function dsnAs(node: TestNode, user: string, password: string): string {
  const url = new URL(node.server.dsn);
  url.username = encodeURIComponent(user);
  url.password = encodeURIComponent(password);
  return url.toString();
}

/** Runs `body` on a connection of its own to the node as `user`, closed afterwards. */
export async function withRole<T>(node: TestNode, user: string, password: string, body: (sql: Sql) => Promise<T>): Promise<T> {
  const sql = postgres(dsnAs(node, user, password), { max: 1, onnotice: () => undefined, fetch_types: false }) as unknown as Sql;
  try {
    return await body(sql);
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/** Whether `role` is a superuser on the node (what an attack that worked would have made it). */
export async function isSuperuser(node: TestNode, role: string): Promise<boolean> {
  const rows = await node.sql.unsafe<{ su: boolean }[]>(`SELECT rolsuper AS su FROM pg_roles WHERE rolname = $1`, [role]);
  return rows[0]?.su === true;
}
