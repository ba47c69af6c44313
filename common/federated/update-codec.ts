/**
 * How a device's update (a flat head vector, ./head-vector.ts) travels: float32 as it is,
 * float16 (half the bytes, round to nearest even), or int8 with one scale and stochastic
 * rounding (a quarter of the bytes; unbiased, so averaging many devices' updates cancels the
 * rounding error instead of accumulating it). Decoding is bounded and checked: the length must be
 * the task's, the bytes must match it, and every value must be finite.
 */
import { DriftlineError } from '../errors.js';
import type { FederatedTensor } from '../proto/driftline/v1/device_link.js';

export type UpdateEncoding = 'float32' | 'float16' | 'int8';
export const UPDATE_ENCODINGS: readonly UpdateEncoding[] = ['float32', 'float16', 'int8'];

const BYTES_PER_ELEMENT: Record<UpdateEncoding, number> = { float32: 4, float16: 2, int8: 1 };

/** Bytes on the wire of a vector of `length` parameters in `encoding`. */
export const encodedBytes = (encoding: UpdateEncoding, length: number): number => BYTES_PER_ELEMENT[encoding] * length;

export function isUpdateEncoding(value: string): value is UpdateEncoding {
  return (UPDATE_ENCODINGS as readonly string[]).includes(value);
}

// float32 ↔ float16 through the bits of one shared scratch value.
const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

export function toFloat16Bits(value: number): number {
  scratch[0] = value;
  const x = scratchBits[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // Inf or NaN
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // too large: Inf
  if (e <= 0) {
    if (e < -10) return sign; // too small: ±0
    mantissa |= 0x800000; // subnormal: shift the implicit bit in
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mantissa & ((1 << shift) - 1);
    let m = mantissa >>> shift;
    if (rest > half || (rest === half && m & 1)) m++;
    return sign | m;
  }
  const rest = mantissa & 0x1fff;
  mantissa >>>= 13;
  if (rest > 0x1000 || (rest === 0x1000 && mantissa & 1)) {
    mantissa++;
    if (mantissa === 0x400) {
      mantissa = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | mantissa;
}

export function fromFloat16Bits(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** Encodes a vector; `random` (uniform in [0, 1)) drives int8's stochastic rounding. */
export function encodeUpdate(vector: Float32Array, encoding: UpdateEncoding, random: () => number = Math.random): FederatedTensor {
  const length = vector.length;
  if (encoding === 'float32') {
    return { encoding, length, data: Buffer.from(new Uint8Array(vector.buffer, vector.byteOffset, vector.byteLength)), scale: 0 };
  }
  if (encoding === 'float16') {
    const data = Buffer.alloc(length * 2);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < length; i++) view.setUint16(i * 2, toFloat16Bits(vector[i]!), true);
    return { encoding, length, data, scale: 0 };
  }
  let maxAbs = 0;
  for (let i = 0; i < length; i++) maxAbs = Math.max(maxAbs, Math.abs(vector[i]!));
  // Math.fround: the scale travels as a float32, so encode with exactly the value decoded.
  const scale = Math.fround(maxAbs / 127);
  const q = new Int8Array(length);
  if (scale > 0) {
    for (let i = 0; i < length; i++) {
      const scaled = vector[i]! / scale;
      const floor = Math.floor(scaled);
      const rounded = floor + (random() < scaled - floor ? 1 : 0);
      q[i] = Math.max(-127, Math.min(127, rounded));
    }
  }
  return { encoding, length, data: Buffer.from(q.buffer), scale };
}

/**
 * Decodes an update for a head of `expectedLength` parameters, refusing what does not fit
 * (FEDERATED_UPDATE_SHAPE) or is not finite (FEDERATED_UPDATE_NOT_FINITE) before it is used.
 */
export function decodeUpdate(tensor: FederatedTensor, expectedLength: number): Float32Array {
  if (!isUpdateEncoding(tensor.encoding)) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `unknown update encoding "${tensor.encoding.slice(0, 32)}" (float32, float16 or int8)`);
  }
  if (tensor.length !== expectedLength) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `the update holds ${tensor.length} parameters, the head ${expectedLength}`);
  }
  const expectedBytes = encodedBytes(tensor.encoding, expectedLength);
  if (tensor.data.length !== expectedBytes) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `the update's ${tensor.encoding} data holds ${tensor.data.length} bytes, expected ${expectedBytes}`);
  }
  const out = new Float32Array(expectedLength);
  const view = new DataView(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  if (tensor.encoding === 'float32') {
    for (let i = 0; i < expectedLength; i++) out[i] = view.getFloat32(i * 4, true);
  } else if (tensor.encoding === 'float16') {
    for (let i = 0; i < expectedLength; i++) out[i] = fromFloat16Bits(view.getUint16(i * 2, true));
  } else {
    if (!Number.isFinite(tensor.scale) || tensor.scale < 0)
      throw new DriftlineError('FEDERATED_UPDATE_NOT_FINITE', "the update's int8 scale is not a finite non-negative number");
    for (let i = 0; i < expectedLength; i++) out[i] = view.getInt8(i) * tensor.scale;
  }
  for (let i = 0; i < expectedLength; i++) {
    if (!Number.isFinite(out[i]!)) throw new DriftlineError('FEDERATED_UPDATE_NOT_FINITE', `the update's parameter ${i} is not finite`);
  }
  return out;
}

/** The L2 norm of a vector (accumulated in float64). */
export function l2Norm(vector: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < vector.length; i++) sum += vector[i]! * vector[i]!;
  return Math.sqrt(sum);
}
