import { pino } from 'pino';
import type { Logger } from './logger.ts';
import type { LogLevel } from '../config/config.ts';

/** The process logger for the CLI and agents: JSON lines on stderr (stdout stays for command output). */
export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination(2)) as unknown as Logger;
}
