import { createRequire } from 'node:module';
import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** How log lines look: JSON for machines (files, journald, pipes), text for a person at a terminal; auto picks by whether stderr is a TTY. */
export type LogFormat = 'json' | 'text' | 'auto';
export const LOG_FORMATS: readonly LogFormat[] = ['auto', 'text', 'json'];

/**
 * Logs to stderr (stdout stays free for command output and JSON lines), written synchronously
 * so a crash or kill loses no log line: JSON, or through pino-pretty on a terminal.
 */
export function createLogger(name: string, level: string = process.env.DRIFTLINE_LOG_LEVEL ?? 'info', format: LogFormat = logFormatFromEnv()): Logger {
  const text = format === 'text' || (format === 'auto' && Boolean(process.stderr.isTTY));
  return pino({ name, level, base: { pid: process.pid } }, (text ? prettyStream() : undefined) ?? pino.destination({ fd: 2, sync: true }));
}

function logFormatFromEnv(): LogFormat {
  const value = process.env.DRIFTLINE_LOG_FORMAT;
  return value === 'text' || value === 'json' ? value : 'auto';
}

/**
 * pino-pretty, loaded only when text is asked for (most processes log JSON). Where it is not
 * there (the agent's single-file binary bundles only what it imports), logs stay JSON.
 */
function prettyStream(): DestinationStream | undefined {
  try {
    const pretty = createRequire(import.meta.url)('pino-pretty') as (options: Record<string, unknown>) => DestinationStream;
    return pretty({ destination: 2, sync: true, colorize: Boolean(process.stderr.isTTY), translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' });
  } catch {
    return undefined;
  }
}

/** A logger that drops everything; for tests and embedded use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
