import { DriftlineError } from './errors.js';

/** "500ms", "30s", "10m", "2h", "7d" in milliseconds (config.ts's duration schema and the CLI's flags). */
export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text);
  if (!m) throw new DriftlineError('CONFIG_INVALID', `invalid duration ${JSON.stringify(text)}`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

/** Milliseconds as a user types them, the inverse of parseDuration: 600000 -> "10m", 2592000000 -> "30d". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** "512KiB", "64MiB", "2GiB" in bytes. */
export function parseByteSize(text: string): number {
  const m = /^(\d+)(B|KiB|MiB|GiB)$/.exec(text);
  if (!m) throw new DriftlineError('CONFIG_INVALID', `invalid size ${JSON.stringify(text)}`);
  const unit = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[m[2] as 'B' | 'KiB' | 'MiB' | 'GiB'];
  return Number(m[1]) * unit;
}
