import { DriftlineError } from './errors.js';

/**
 * Device ids become MQTT client ids and topic levels, file names and SQL keys, so they
 * are kept to a conservative alphabet: this refuses `+`, `#`, `/`, `$SYS`, `__proto__`,
 * empty strings and anything longer than 64 characters.
 */
export const MAX_DEVICE_ID_LENGTH = 64;
const DEVICE_ID = new RegExp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,${MAX_DEVICE_ID_LENGTH - 1}}$`);
const MODEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const LABEL_KEY = /^[a-z0-9][a-z0-9._/-]{0,62}$/;
const FORBIDDEN_WORDS = new Set(['__proto__', 'constructor', 'prototype']);

export function isValidDeviceId(id: unknown): id is string {
  return typeof id === 'string' && DEVICE_ID.test(id) && !FORBIDDEN_WORDS.has(id);
}

export function assertDeviceId(id: unknown): string {
  if (!isValidDeviceId(id)) {
    throw new DriftlineError(
      'ID_INVALID',
      `device id ${JSON.stringify(id)} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  return id;
}

export function assertModelName(name: unknown): string {
  if (typeof name !== 'string' || !MODEL_NAME.test(name) || FORBIDDEN_WORDS.has(name)) {
    throw new DriftlineError('ID_INVALID', `model name ${JSON.stringify(name)} is invalid: use 1-64 lowercase letters, digits, '.', '_' or '-'`);
  }
  return name;
}

export function assertLabels(labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(labels)) {
    if (!LABEL_KEY.test(k) || FORBIDDEN_WORDS.has(k)) throw new DriftlineError('ID_INVALID', `label key ${JSON.stringify(k)} is invalid`);
    if (typeof v !== 'string' || v.length > 128) throw new DriftlineError('ID_INVALID', `label ${k} has an invalid value`);
    out[k] = v;
  }
  return { ...out };
}

/** Parses "a=b,c=d" label selectors; values may end in `*` for a prefix match. */
export function parseSelector(selector: string): Array<{ key: string; value: string }> {
  if (!selector.trim()) return [];
  return selector.split(',').map((part) => {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new DriftlineError('REQUEST_INVALID', `selector term ${JSON.stringify(part)} must look like key=value`);
    return { key: part.slice(0, eq).trim(), value: part.slice(eq + 1).trim() };
  });
}

export function matchesSelector(labels: Record<string, string>, terms: Array<{ key: string; value: string }>): boolean {
  return terms.every(({ key, value }) => {
    const actual = Object.hasOwn(labels, key) ? labels[key] : undefined;
    if (actual === undefined) return false;
    return value.endsWith('*') ? actual.startsWith(value.slice(0, -1)) : actual === value;
  });
}
