/** How much a logger writes (the configuration's logLevel, the CLI's --log-level). */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

/** The logger that library code receives; pino's logger satisfies it. Library code never writes to the console. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

export const silentLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  child: () => silentLogger,
};
