/**
 * Gaussian noise for the central mechanism. The mechanism takes its standard normal source as a
 * function, so tests pass a seeded one (common/seeded-random.ts) and production passes
 * `cryptoGaussian()`: a predictable generator (mulberry32, Math.random) would let anyone who
 * learns its state subtract the noise and see the devices' sum.
 */
import { DriftlineError } from '../../../common/errors.js';
import { randomBytes } from 'node:crypto';

/** A source of independent N(0, 1) draws. */
export type GaussianSource = () => number;

/** Adds N(0, stddev²) to every coordinate, in place; returns the array. */
export function addGaussianNoise(values: Float32Array, stddev: number, gaussian: GaussianSource): Float32Array {
  if (!(stddev >= 0) || !Number.isFinite(stddev)) throw new DriftlineError('INTERNAL', `noise standard deviation must be finite and ≥ 0, got ${stddev}`);
  if (stddev === 0) return values;
  for (let i = 0; i < values.length; i++) values[i] = values[i]! + stddev * gaussian();
  return values;
}

const POOL_BYTES = 8192;
const TWO_POW_53 = 2 ** 53;

/**
 * Standard normal draws from the operating system's CSPRNG (node:crypto randomBytes): uniforms of
 * 53 random bits, in (0, 1] so the logarithm is finite, through the Box–Muller transform (both
 * outputs used). Bytes are drawn in pools of 8 KiB so a round of a million coordinates costs a
 * few hundred system calls, not a million.
 *
 * Known limit: this is floating-point Gaussian noise, like Opacus' and TF-Privacy's; it does not
 * defend against the floating-point side channels of Mironov 2012 / Jin et al. 2022 that a
 * discrete Gaussian (Canonne, Kamath, Steinke 2020) would.
 */
export function cryptoGaussian(): GaussianSource {
  let pool = Buffer.alloc(0);
  let offset = 0;
  let spare: number | undefined;
  const uniform = (): number => {
    if (offset + 8 > pool.length) {
      pool = randomBytes(POOL_BYTES);
      offset = 0;
    }
    // 21 high bits and 32 low bits: exactly 53 uniform bits, a double's full mantissa.
    const high = pool.readUInt32BE(offset) >>> 11;
    const low = pool.readUInt32BE(offset + 4);
    offset += 8;
    return (high * 2 ** 32 + low + 1) / TWO_POW_53;
  };
  return () => {
    if (spare !== undefined) {
      const value = spare;
      spare = undefined;
      return value;
    }
    const radius = Math.sqrt(-2 * Math.log(uniform()));
    const angle = 2 * Math.PI * uniform();
    spare = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  };
}
