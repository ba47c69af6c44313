import pino, { type Logger } from 'pino';

export type { Logger };

/** JSON logs to stderr (stdout stays free for command output and JSON lines), written synchronously so a crash or kill loses no log line. */
export function createLogger(name: string, level: string = process.env.DRIFTLINE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything; for tests and embedded use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
