import { describe, expect, it } from 'vitest';
import { decodeHead, encodeHead, flattenHead, headLength, unflattenHead } from '../common/federated/head-vector.js';
import { decodeUpdate, encodeUpdate, fromFloat16Bits, l2Norm, toFloat16Bits } from '../common/federated/update-codec.js';
import { seededRandom } from '../common/seeded-random.js';
import type { DenseLayer } from '../common/learning/dense-head.js';

const layer = (inputs: number, outputs: number, start: number): DenseLayer => ({
  inputs,
  outputs,
  weights: Float32Array.from({ length: inputs * outputs }, (_, i) => start + i / 10),
  bias: Float32Array.from({ length: outputs }, (_, i) => -start - i),
});

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
};

describe('federated wire: heads and updates', () => {
  it('head vector - weights then bias, first layer first, and back', () => {
    const layers = [layer(3, 2, 1), layer(2, 4, 5)];
    const vector = flattenHead(layers);
    expect(vector.length).toBe(headLength(layers));
    expect(Array.from(vector.slice(0, 8))).toEqual(Array.from([...layers[0]!.weights, ...layers[0]!.bias]));
    expect(unflattenHead(vector, layers)).toEqual(layers);
    expect(codeOf(() => unflattenHead(vector.subarray(1), layers))).toBe('FEDERATED_UPDATE_SHAPE');
  });

  it('head artifact - round-trips, and refuses layers that do not chain or values that are not finite', () => {
    const layers = [layer(3, 2, 1), layer(2, 4, 5)];
    expect(decodeHead(encodeHead(layers))).toEqual(layers);
    expect(codeOf(() => decodeHead(encodeHead([layer(3, 2, 1), layer(3, 4, 5)])))).toBe('MODEL_INVALID');
    const bad = layer(2, 2, 0);
    bad.bias[1] = NaN;
    expect(codeOf(() => decodeHead(encodeHead([bad])))).toBe('MODEL_INVALID');
    expect(codeOf(() => decodeHead(Uint8Array.of(0xff, 0xff, 0xff)))).toBe('MODEL_INVALID');
    expect(codeOf(() => decodeHead(encodeHead([layer(4, 4, 0)]), { maxLayers: 8, maxParameters: 10 }))).toBe('MODEL_INVALID');
  });

  it('float16 - exact on representable values, round to nearest even, overflow to infinity', () => {
    for (const v of [0, 1, -2, 0.5, 65504, 2 ** -24, -(2 ** -14)]) expect(fromFloat16Bits(toFloat16Bits(v))).toBe(v);
    expect(fromFloat16Bits(toFloat16Bits(1 + 2 ** -11))).toBe(1); // a tie goes to the even mantissa
    expect(fromFloat16Bits(toFloat16Bits(1 + 3 * 2 ** -11))).toBe(1 + 2 ** -9);
    expect(fromFloat16Bits(toFloat16Bits(70000))).toBe(Infinity);
    expect(Number.isNaN(fromFloat16Bits(toFloat16Bits(NaN)))).toBe(true);
  });

  it('encodings - float32 exact, float16 within its precision, int8 unbiased over many draws', () => {
    const random = seededRandom(7);
    const vector = Float32Array.from({ length: 1000 }, () => random.normal(0, 0.05));
    expect(decodeUpdate(encodeUpdate(vector, 'float32'), 1000)).toEqual(vector);
    const half = decodeUpdate(encodeUpdate(vector, 'float16'), 1000);
    for (let i = 0; i < 1000; i++) expect(Math.abs(half[i]! - vector[i]!)).toBeLessThanOrEqual(Math.abs(vector[i]!) * 2 ** -11 + 2 ** -25);
    const int8 = encodeUpdate(vector, 'int8', () => random.next());
    expect(int8.data.length).toBe(1000);
    // Stochastic rounding is unbiased: the mean of many encodings approaches the value.
    const sum = new Float64Array(1000);
    const draws = 400;
    for (let d = 0; d < draws; d++) {
      const decoded = decodeUpdate(
        encodeUpdate(vector, 'int8', () => random.next()),
        1000,
      );
      for (let i = 0; i < 1000; i++) sum[i]! += decoded[i]!;
    }
    const step = int8.scale;
    let worst = 0;
    for (let i = 0; i < 1000; i++) worst = Math.max(worst, Math.abs(sum[i]! / draws - vector[i]!));
    expect(worst).toBeLessThan(step * 0.2);
    expect(l2Norm(Float32Array.of(3, 4))).toBe(5);
  });

  it('decode - refuses a wrong length, wrong byte count, unknown encoding and non-finite values with stable codes', () => {
    const ok = encodeUpdate(Float32Array.of(1, 2, 3), 'float32');
    expect(codeOf(() => decodeUpdate(ok, 4))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => decodeUpdate({ ...ok, data: ok.data.subarray(1) }, 3))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => decodeUpdate({ ...ok, encoding: 'bfloat16' }, 3))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => decodeUpdate(encodeUpdate(Float32Array.of(1, Infinity, 3), 'float32'), 3))).toBe('FEDERATED_UPDATE_NOT_FINITE');
    expect(codeOf(() => decodeUpdate(encodeUpdate(Float32Array.of(1, NaN), 'float16'), 2))).toBe('FEDERATED_UPDATE_NOT_FINITE');
    expect(codeOf(() => decodeUpdate({ ...encodeUpdate(Float32Array.of(1, 2), 'int8'), scale: NaN }, 2))).toBe('FEDERATED_UPDATE_NOT_FINITE');
  });
});
