import { describe, expect, it } from 'vitest';
import { validateUpdate } from '../control-plane/federated/update-validation.js';
import { encodeUpdate, l2Norm } from '../common/federated/update-codec.js';
import type { FederatedTensor } from '../common/proto/driftline/v1/device_link.js';
import { seededRandom } from '../common/seeded-random.js';

const LENGTH = 40;
const limits = { headLength: LENGTH, maxUpdateNorm: 10, maxBytes: LENGTH * 4 };

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
};

const rng = seededRandom(5);
const vector = Float32Array.from({ length: LENGTH }, () => rng.normal(0, 0.3));

describe('federated update validation', () => {
  it('accepts - float32 exactly, float16 and int8 within their rounding, with the norm', () => {
    const f32 = validateUpdate(encodeUpdate(vector, 'float32'), limits);
    expect(Array.from(f32.delta)).toEqual(Array.from(vector));
    expect(f32.norm).toBeCloseTo(l2Norm(vector), 10);
    const f16 = validateUpdate(encodeUpdate(vector, 'float16'), { ...limits, encoding: 'float16' });
    const int8 = validateUpdate(encodeUpdate(vector, 'int8', seededRandom(1).next), limits);
    const maxAbs = Math.max(...Array.from(vector, Math.abs));
    for (let i = 0; i < LENGTH; i++) {
      expect(Math.abs(f16.delta[i]! - vector[i]!)).toBeLessThanOrEqual(Math.abs(vector[i]!) / 1024 + 1e-7);
      expect(Math.abs(int8.delta[i]! - vector[i]!)).toBeLessThanOrEqual(maxAbs / 127 + 1e-6);
    }
  });

  it('oversized - refused on its byte count before it is decoded', () => {
    const big = encodeUpdate(
      Float32Array.from({ length: LENGTH * 2 }, () => 1),
      'float32',
    );
    expect(codeOf(() => validateUpdate(big, limits))).toBe('FEDERATED_UPDATE_TOO_LARGE');
    // Garbage that would also fail to decode is refused for its size first: no decoding work.
    const garbage: FederatedTensor = { encoding: 'float32', length: 3, data: Buffer.alloc(1 << 20, 0xff), scale: 0 };
    expect(codeOf(() => validateUpdate(garbage, limits))).toBe('FEDERATED_UPDATE_TOO_LARGE');
  });

  it('not finite - NaN, +Inf and −Inf are refused in every encoding, and a bad int8 scale', () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const v = vector.slice();
      v[7] = bad;
      expect(
        codeOf(() => validateUpdate(encodeUpdate(v, 'float32'), limits)),
        String(bad),
      ).toBe('FEDERATED_UPDATE_NOT_FINITE');
      expect(
        codeOf(() => validateUpdate(encodeUpdate(v, 'float16'), limits)),
        String(bad),
      ).toBe('FEDERATED_UPDATE_NOT_FINITE');
    }
    const int8 = encodeUpdate(vector, 'int8');
    expect(codeOf(() => validateUpdate({ ...int8, scale: NaN }, limits))).toBe('FEDERATED_UPDATE_NOT_FINITE');
    // float16 overflows to Inf: a value finite in float32 but not on the wire.
    const huge = vector.slice();
    huge[0] = 1e6;
    expect(codeOf(() => validateUpdate(encodeUpdate(huge, 'float16'), { ...limits, maxUpdateNorm: 0 }))).toBe('FEDERATED_UPDATE_NOT_FINITE');
  });

  it('wrong shape - another length, bytes that do not match it, an unknown or unexpected encoding, no update', () => {
    expect(codeOf(() => validateUpdate(encodeUpdate(vector.subarray(1), 'float32'), limits))).toBe('FEDERATED_UPDATE_SHAPE');
    const f32 = encodeUpdate(vector, 'float32');
    expect(codeOf(() => validateUpdate({ ...f32, data: f32.data.subarray(4) }, limits))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => validateUpdate({ ...f32, encoding: 'bfloat16' }, limits))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => validateUpdate(f32, { ...limits, encoding: 'int8' }))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => validateUpdate(undefined, limits))).toBe('FEDERATED_UPDATE_SHAPE');
  });

  it('norm - an update above max_update_norm is refused; 0 means no bound', () => {
    const scaled = vector.map((v) => v * 100);
    expect(l2Norm(scaled)).toBeGreaterThan(10);
    expect(codeOf(() => validateUpdate(encodeUpdate(scaled, 'float32'), limits))).toBe('FEDERATED_UPDATE_NORM');
    expect(validateUpdate(encodeUpdate(scaled, 'float32'), { ...limits, maxUpdateNorm: 0 }).norm).toBeGreaterThan(10);
  });
});
