/**
 * A text[] literal built by hand: every element double-quoted with `"` and `\` escaped, NULL for null.
 * Used for the arrays of column values that multi-row apply statements unnest. (The driver's own array
 * serializer needs type metadata fetched at connect time; this needs none and is exact.)
 */
export function textArrayLiteral(values: readonly (string | null)[]): string {
  let out = '{';
  for (let i = 0; i < values.length; i++) {
    if (i > 0) out += ',';
    const value = values[i];
    if (value === null || value === undefined) {
      out += 'NULL';
    } else {
      // Most values need no escaping; the regular expression runs only for those that do.
      out += value.indexOf('"') === -1 && value.indexOf('\\') === -1 ? `"${value}"` : `"${value.replace(/[\\"]/g, '\\$&')}"`;
    }
  }
  return out + '}';
}
