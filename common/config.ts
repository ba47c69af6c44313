import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { DriftlineError } from './errors.js';

/**
 * Validates configuration once, with every problem listed by its path, and freezes it.
 * Durations and limits come only from validated configuration, never from literals.
 */
export function parseConfig<S extends z.ZodType>(schema: S, input: unknown, source: string): Readonly<z.output<S>> {
  const result = schema.safeParse(input);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new DriftlineError('CONFIG_INVALID', `invalid configuration in ${source}:\n  ${problems.join('\n  ')}`, {
      details: { source, problems },
    });
  }
  return deepFreeze(result.data);
}

export function readConfigFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new DriftlineError('CONFIG_INVALID', `cannot read configuration file ${path}`, { cause: err });
  }
  try {
    return path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new DriftlineError('CONFIG_INVALID', `configuration file ${path} is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}`, { cause: err });
  }
}

/** Durations such as "500ms", "30s", "10m", "2h", "7d" or a number of milliseconds. */
export const duration = z.union([
  z.number().int().nonnegative(),
  z.string().regex(/^\d+(ms|s|m|h|d)$/, 'expected a duration such as 500ms, 30s, 10m, 2h or 7d').transform(parseDuration),
]);

export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text);
  if (!m) throw new DriftlineError('CONFIG_INVALID', `invalid duration ${JSON.stringify(text)}`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

/** Sizes such as "512KiB", "64MiB", "2GiB" or a number of bytes. */
export const byteSize = z.union([
  z.number().int().nonnegative(),
  z.string().regex(/^\d+(B|KiB|MiB|GiB)$/, 'expected a size such as 512KiB, 64MiB or 2GiB').transform(parseByteSize),
]);

export function parseByteSize(text: string): number {
  const m = /^(\d+)(B|KiB|MiB|GiB)$/.exec(text);
  if (!m) throw new DriftlineError('CONFIG_INVALID', `invalid size ${JSON.stringify(text)}`);
  const unit = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[m[2] as 'B' | 'KiB' | 'MiB' | 'GiB'];
  return Number(m[1]) * unit;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
