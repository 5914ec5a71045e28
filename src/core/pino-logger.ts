import { pino, type DestinationStream, type Level, type Logger as Pino } from 'pino';
import type { Logger } from './logger.ts';
import type { LogLevel } from './logger.ts';

/** Keys pino writes on every line itself. */
const PINO_KEYS = ['level', 'time', 'msg', 'pid', 'hostname'];

/**
 * pino writes a child's bindings and a call's fields side by side, so a key given in both appears twice on one line
 * ("node":"n1","node":"n1"), which JSON readers take differently. Here a call's field whose key the logger
 * already binds is left out: the binding says it; another meaning needs another key.
 */
class BoundLogger implements Logger {
  constructor(
    private readonly pino: Pino,
    private readonly bound: ReadonlySet<string>,
  ) {}

  private write(level: Level, obj: object, msg: string | undefined): void {
    if (!this.pino.isLevelEnabled(level)) return;
    let fields = obj;
    if (Object.keys(obj).some((key) => this.bound.has(key))) {
      fields = Object.fromEntries(Object.entries(obj).filter(([key]) => !this.bound.has(key)));
    }
    this.pino[level](fields, msg);
  }

  debug(obj: object, msg?: string): void {
    this.write('debug', obj, msg);
  }

  info(obj: object, msg?: string): void {
    this.write('info', obj, msg);
  }

  warn(obj: object, msg?: string): void {
    this.write('warn', obj, msg);
  }

  error(obj: object, msg?: string): void {
    this.write('error', obj, msg);
  }

  child(bindings: Record<string, unknown>): Logger {
    const fresh = Object.fromEntries(Object.entries(bindings).filter(([key]) => !this.bound.has(key)));
    return new BoundLogger(this.pino.child(fresh), new Set([...this.bound, ...Object.keys(fresh)]));
  }
}

/**
 * The process logger for the CLI and agents: JSON lines on stderr (stdout stays for command output), or on the
 * given destination.
 */
export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}, destination: DestinationStream = pino.destination(2)): Logger {
  const base = { pid: process.pid, ...bindings };
  return new BoundLogger(pino({ level, base }, destination), new Set([...PINO_KEYS, ...Object.keys(base)]));
}
