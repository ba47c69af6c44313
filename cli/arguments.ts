import { InvalidArgumentError } from 'commander';
import { systemClock } from '../common/clock.js';
import { parseDuration } from '../common/units.js';

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
