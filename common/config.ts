import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { DriftlineError } from './errors.js';
import { parseByteSize, parseDuration } from './units.js';

// In their own module so the CLI parses durations without loading zod and yaml.
export { parseByteSize, parseDuration };

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

/** Sizes such as "512KiB", "64MiB", "2GiB" or a number of bytes. */
export const byteSize = z.union([
  z.number().int().nonnegative(),
  z.string().regex(/^\d+(B|KiB|MiB|GiB)$/, 'expected a size such as 512KiB, 64MiB or 2GiB').transform(parseByteSize),
]);

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
