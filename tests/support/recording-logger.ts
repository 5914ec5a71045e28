/** A logger for tests that keeps every warning's message (and drops the rest). */
import type { Logger } from '../../src/core/logger.ts';

export function recordingLogger(warnings: string[]): Logger {
  const logger: Logger = {
    debug() {},
    info() {},
    warn(_obj: object, msg?: string) {
      warnings.push(msg ?? '');
    },
    error() {},
    child: () => logger,
  };
  return logger;
}
