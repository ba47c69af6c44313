import { InvalidArgumentError, Option } from 'commander';
import { systemClock } from '../common/clock.js';
import { parseDuration } from '../common/units.js';
import { LOG_FORMATS } from '../common/logger.js';

/** Argument parsers for commander: a bad value becomes a usage error (exit 2) before any call is made. */

export function integer(min: number, max = Number.MAX_SAFE_INTEGER): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    return n;
  };
}

export function durationMs(value: string): number {
  try {
    return parseDuration(value);
  } catch {
    throw new InvalidArgumentError('expected a duration such as 30s, 10m, 24h or 7d');
  }
}

/** A request's since_ms for a `--since <duration>` option: that long before now, or 0 (no window) without one. */
export function sinceMs(since: number | undefined, now = systemClock.now()): number {
  return since === undefined ? 0 : now - since;
}

/** One `key=value` pair, collected into a record by repeatable options. */
export function keyValue(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`expected key=value, got ${JSON.stringify(value)}`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

export function repeated(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** --log-level of the long-running commands (serve, worker): logs go to stderr. */
export const logLevelOption = (): Option =>
  new Option('--log-level <level>', 'log level (logs go to stderr)')
    .choices(['trace', 'debug', 'info', 'warn', 'error', 'silent'])
    .env('DRIFTLINE_LOG_LEVEL')
    .default('info');

/** --log-format of the long-running commands: text on a terminal, JSON lines otherwise. */
export const logFormatOption = (): Option =>
  new Option('--log-format <format>', 'log lines as text (pino-pretty) or JSON; auto: text on a terminal, JSON otherwise')
    .choices(LOG_FORMATS)
    .env('DRIFTLINE_LOG_FORMAT')
    .default('auto');
