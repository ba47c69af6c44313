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

/** Keys that would reach an object's prototype: dropped from every layer before validation sees them. */
const PROTOTYPE_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * Configuration layering, written once: each layer is laid over the ones before it (defaults <
 * file < environment < flags; the schema supplies the defaults afterwards). Objects merge key by
 * key, anything else replaces; undefined means "not given" and never overrides. Prototype keys
 * are dropped at every depth, also from values that replace. A base that is not an object (a
 * file holding a list or a string) is returned as it is, for validation to name.
 */
export function layerConfig(base: unknown, ...layers: ReadonlyArray<Readonly<Record<string, unknown>> | undefined>): unknown {
  if (!isRecord(base)) return base;
  let out = merge({}, base);
  for (const layer of layers) if (layer) out = merge(out, layer);
  return out;
}

/** The environment as a configuration layer: each variable that is set (and not empty) sets what its entry says. */
export function environmentLayer(env: NodeJS.ProcessEnv, table: Readonly<Record<string, (value: string) => Record<string, unknown>>>): Record<string, unknown> {
  let out: Record<string, unknown> = {};
  for (const [name, set] of Object.entries(table)) {
    const value = env[name];
    if (value !== undefined && value !== '') out = merge(out, set(value));
  }
  return out;
}

function merge(base: Record<string, unknown>, over: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined || PROTOTYPE_KEYS.has(key)) continue;
    const current = out[key];
    out[key] = isRecord(value) ? merge(isRecord(current) ? current : {}, value) : value;
  }
  return out;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Durations such as "500ms", "30s", "10m", "2h", "7d" or a number of milliseconds. */
export const duration = z.union([
  z.number().int().nonnegative(),
  z
    .string()
    .regex(/^\d+(ms|s|m|h|d)$/, 'expected a duration such as 500ms, 30s, 10m, 2h or 7d')
    .transform(parseDuration),
]);

/** Sizes such as "512KiB", "64MiB", "2GiB" or a number of bytes. */
export const byteSize = z.union([
  z.number().int().nonnegative(),
  z
    .string()
    .regex(/^\d+(B|KiB|MiB|GiB)$/, 'expected a size such as 512KiB, 64MiB or 2GiB')
    .transform(parseByteSize),
]);

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
