/**
 * A text[] literal built by hand: every element double-quoted with `"` and `\` escaped, NULL for null.
 * Used for the arrays of column values that multi-row apply statements unnest. (The driver's own array
 * serializer needs type metadata fetched at connect time; this needs none and is exact.)
 */
export function textArrayLiteral(values: readonly (string | null)[]): string {
  // Elements joined rather than appended one by one (a rope of thousands of small strings until it is sent).
  const elements = new Array<string>(values.length);
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value === null || value === undefined) {
      elements[i] = 'NULL';
    } else {
      // Most values need no escaping; the regular expression runs only for those that do.
      elements[i] = value.indexOf('"') === -1 && value.indexOf('\\') === -1 ? `"${value}"` : `"${value.replace(/[\\"]/g, '\\$&')}"`;
    }
  }
  return `{${elements.join(',')}}`;
}
