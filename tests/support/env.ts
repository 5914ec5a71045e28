/** Reads an integer from the environment for a test's knobs (runs, seeds); a value that is not one fails loudly. */
export function integerFromEnv(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  const value = Number(text);
  if (!Number.isInteger(value)) throw new Error(`${name}=${text} is not an integer`);
  return value;
}
