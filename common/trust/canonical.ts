import { DriftlineError } from '../errors.js';

/**
 * Canonical JSON: object keys sorted by code unit, no insignificant whitespace, no
 * undefined values. Signed payloads are built with it so the same content always yields the
 * same bytes (the signature covers the bytes; verifiers never re-serialize).
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new DriftlineError('REQUEST_INVALID', 'canonical JSON cannot hold NaN or infinite numbers');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(',')}]`;
  if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  throw new DriftlineError('REQUEST_INVALID', `canonical JSON cannot hold a ${typeof value}`);
}
