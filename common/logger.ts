import pino, { type Logger } from 'pino';

export type { Logger };

/** JSON logs to stderr (stdout stays free for command output and the demo's JSON line). */
export function createLogger(name: string, level: string = process.env.DRIFTLINE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: false }));
}

/** A logger that drops everything; for tests and embedded use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
