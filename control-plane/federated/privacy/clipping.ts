/**
 * L2 clipping of an update to a bound, and adaptive clipping's bound update (Andrew, Thakkar,
 * McMahan, Ramaswamy 2021, "Differentially Private Learning with Adaptive Clipping",
 * arXiv:1905.03871). Clipping bounds one device's influence on the round's sum, which is what
 * the Gaussian noise is scaled to.
 */
import { DriftlineError } from '../../../common/errors.js';

/** The L2 norm, accumulated in double precision (a float32 sum drifts on long heads). */
export function l2Norm(values: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]! * values[i]!;
  return Math.sqrt(sum);
}

/**
 * The update scaled so its L2 norm is at most `bound` (direction unchanged); `bound` 0 clips
 * nothing. Returns the input array itself when it is within the bound, a new one otherwise.
 */
export function clipToNorm(delta: Float32Array, bound: number): { delta: Float32Array; norm: number; clipped: boolean } {
  const norm = l2Norm(delta);
  if (!Number.isFinite(norm)) throw new DriftlineError('FEDERATED_UPDATE_NOT_FINITE', 'the update holds NaN or an infinite value (its L2 norm is not finite)');
  if (!(bound > 0) || norm <= bound) return { delta, norm, clipped: false };
  let scale = bound / norm;
  const out = new Float32Array(delta.length);
  // Rounding to float32 can leave the norm a few ulps above the bound; the noise is calibrated to
  // the bound, so shrink by about one float32 ulp until it holds (once or twice in practice).
  for (let attempt = 0; attempt < 64; attempt++) {
    for (let i = 0; i < delta.length; i++) out[i] = delta[i]! * scale;
    if (l2Norm(out) <= bound) break;
    scale *= 1 - 2 ** -23;
  }
  return { delta: out, norm, clipped: true };
}

/**
 * One step of adaptive clipping's geometric update: C ← C · exp(−η (b̄ − γ)), where b̄ is the
 * (noised) fraction of the round's updates whose norm was at most C and γ the target quantile.
 * Too many updates inside the bound shrinks it, too few grows it, so C tracks the γ-quantile of
 * the update norms. A non-finite result (only from non-finite inputs) keeps the current bound.
 */
export function nextAdaptiveBound(bound: number, unclippedFraction: number, targetQuantile: number, learningRate: number): number {
  const next = bound * Math.exp(-learningRate * (unclippedFraction - targetQuantile));
  return Number.isFinite(next) && next > 0 ? next : bound;
}

/**
 * The noise multiplier left for the updates when adaptive clipping spends part of the budget on
 * the noised count (Andrew et al. 2021, Theorem 1): a round releasing the sum of clipped updates
 * with multiplier z_Δ and the count of unclipped ones (bits centred at ½, sensitivity ½) with
 * noise σ_b is as private as one Gaussian with z where z^−2 = z_Δ^−2 + (2σ_b)^−2. So for a
 * requested total z, z_Δ = (z^−2 − (2σ_b)^−2)^(−1/2), which needs 2σ_b > z.
 */
export function updateNoiseMultiplier(totalNoiseMultiplier: number, countNoiseStddev: number): number {
  const rest = totalNoiseMultiplier ** -2 - (2 * countNoiseStddev) ** -2;
  return rest > 0 ? rest ** -0.5 : Infinity;
}
