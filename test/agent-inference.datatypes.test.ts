import { describe, expect, it } from 'vitest';
import { fromHalf, toHalf, toJsonValues, toTensorData } from '../agent/inference/datatypes.js';

describe('inference datatypes', () => {
  it('datatypes - round-trips every finite float16 value through a number', () => {
    const mismatches: number[] = [];
    for (let bits = 0; bits < 0x10000; bits++) {
      const value = fromHalf(bits);
      if (!Number.isNaN(value) && toHalf(value) !== bits) mismatches.push(bits);
    }
    expect(mismatches).toEqual([]);
  });

  it('datatypes - rounds numbers to the nearest float16, ties to even, and overflows to infinity', () => {
    expect(fromHalf(toHalf(1 + 2 ** -11))).toBe(1);
    expect(fromHalf(toHalf(1 + 3 * 2 ** -11))).toBe(1 + 2 ** -9);
    expect(fromHalf(toHalf(1e6))).toBe(Infinity);
    expect(fromHalf(toHalf(2 ** -30))).toBe(0);
    expect(Number.isNaN(fromHalf(toHalf(NaN)))).toBe(true);
  });

  it('datatypes - passes a typed array of the right kind through without copying it', () => {
    const data = Float32Array.of(1, 2);
    expect(toTensorData('FP32', data)).toBe(data);
    expect(toTensorData('FP64', data)).toEqual(Float64Array.of(1, 2));
  });

  it('datatypes - writes int64 as JSON numbers and BOOL as booleans', () => {
    expect(toJsonValues('INT64', BigInt64Array.of(5n, -2n))).toEqual([5, -2]);
    expect(toJsonValues('BOOL', Uint8Array.of(1, 0))).toEqual([true, false]);
  });
});
