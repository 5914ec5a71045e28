/** Identifier and literal quoting for SQL that pgmesh builds; everything user-named goes through here. */

export function quoteIdent(name: string): string {
  if (name.includes('\0')) throw new RangeError('identifier contains a NUL byte');
  return `"${name.replaceAll('"', '""')}"`;
}

/** A string literal; valid with standard_conforming_strings = on, which pgmesh sets on every session it opens. */
export function quoteLiteral(value: string): string {
  if (value.includes('\0')) throw new RangeError('literal contains a NUL byte');
  return value.includes("'") ? `'${value.replaceAll("'", "''")}'` : `'${value}'`;
}

export function qualifiedName(schema: string, name: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(name)}`;
}

/** Slot, origin and node names are restricted so they can be used bare in replication commands. */
export const NODE_NAME_PATTERN = /^[a-z][a-z0-9_]{0,39}$/;
