/**
 * A Rényi-DP accountant for the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, "Rényi
 * Differential Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530): each DP-FedAvg round
 * includes every device with probability q and adds Gaussian noise of σ times the clipping bound,
 * which is (α, ε_α)-RDP at every order α; RDP composes by adding over rounds; the total converts
 * to (ε, δ)-DP at the best order.
 *
 * Written from the paper (§3.3) and checked against the values TensorFlow Privacy and Google's
 * dp_accounting publish in their tests (test/federated.accountant.test.ts). Pure; all sums in log
 * space.
 */
import { DriftlineError } from '../../../common/errors.js';
import { logAdd, logErfc } from './log-space.js';

/**
 * The orders TensorFlow Privacy's compute_dp_sgd_privacy and Opacus search over (1.1 … 10.9 by
 * tenths, 11 … 63), plus 128, 256 and 512 for the few-rounds, little-noise tasks where ε is large
 * and the best order is high. More orders never make ε worse: the conversion takes the minimum.
 */
export const DEFAULT_RDP_ORDERS: readonly number[] = Object.freeze([
  ...Array.from({ length: 99 }, (_, i) => Math.round((1 + (i + 1) / 10) * 10) / 10),
  ...Array.from({ length: 53 }, (_, i) => 11 + i),
  128,
  256,
  512,
]);

/** The fractional-order series stops after this many terms (it converges in tens for sane σ). */
const MAX_SERIES_TERMS = 1000;

/**
 * RDP of one round of the sampled Gaussian mechanism at each order: sampling rate q ∈ [0, 1], noise
 * multiplier σ > 0 (noise standard deviation over L2 sensitivity). Infinity where an order's
 * series does not converge (the conversion then ignores that order).
 */
export function sampledGaussianRdp(q: number, sigma: number, orders: readonly number[] = DEFAULT_RDP_ORDERS): number[] {
  if (!(q >= 0 && q <= 1)) throw new DriftlineError('FEDERATED_TASK_INVALID', `sampling rate must be in [0, 1], got ${q}`);
  if (!(sigma >= 0) || !Number.isFinite(sigma))
    throw new DriftlineError('FEDERATED_TASK_INVALID', `noise multiplier must be a finite number ≥ 0, got ${sigma}`);
  return orders.map((alpha) => {
    if (!(alpha > 1)) throw new DriftlineError('FEDERATED_TASK_INVALID', `RDP orders must be > 1, got ${alpha}`);
    if (q === 0) return 0;
    if (sigma === 0 || alpha === Infinity) return Infinity;
    // No sampling: the plain Gaussian mechanism, α / (2σ²) (Mironov 2017, Proposition 7).
    if (q === 1) return alpha / (2 * sigma * sigma);
    const logA = Number.isInteger(alpha) ? logAInteger(q, sigma, alpha) : logAFractional(q, sigma, alpha);
    return logA / (alpha - 1);
  });
}

/**
 * log A_α for integer α: A_α = Σ_{k=0..α} C(α,k) (1−q)^(α−k) q^k exp((k²−k)/(2σ²)), the binomial
 * expansion of E_{z∼μ0}[(μ(z)/μ0(z))^α] (paper §3.2).
 */
function logAInteger(q: number, sigma: number, alpha: number): number {
  const logQ = Math.log(q);
  const log1mQ = Math.log1p(-q);
  const twoSigma2 = 2 * sigma * sigma;
  let logA = -Infinity;
  let logBinomial = 0; // log C(α, 0)
  for (let k = 0; k <= alpha; k++) {
    if (k > 0) logBinomial += Math.log(alpha - k + 1) - Math.log(k);
    logA = logAdd(logA, logBinomial + k * logQ + (alpha - k) * log1mQ + (k * k - k) / twoSigma2);
  }
  return logA;
}

/**
 * log A_α for fractional α (paper §3.3): split the integral at z0, where (1−q)μ0 = qμ1, so each
 * half expands as a convergent generalized binomial series; each term carries a Gaussian tail
 * (an erfc). Binomial coefficients of a fractional α alternate in sign past k > α; the terms are
 * summed by magnitude, which can only overstate A_α (so ε), never understate it.
 */
function logAFractional(q: number, sigma: number, alpha: number): number {
  const logQ = Math.log(q);
  const log1mQ = Math.log1p(-q);
  const sigma2 = sigma * sigma;
  const z0 = sigma2 * Math.log(1 / q - 1) + 0.5;
  const sqrt2Sigma = Math.SQRT2 * sigma;
  let logA0 = -Infinity;
  let logA1 = -Infinity;
  let lastS0 = -Infinity;
  let lastS1 = -Infinity;
  let logAbsBinomial = 0; // log |C(α, 0)|
  for (let k = 0; k < MAX_SERIES_TERMS; k++) {
    if (k > 0) logAbsBinomial += Math.log(Math.abs(alpha - k + 1)) - Math.log(k);
    const j = alpha - k;
    const logT0 = logAbsBinomial + k * logQ + j * log1mQ;
    const logT1 = logAbsBinomial + j * logQ + k * log1mQ;
    const logE0 = Math.log(0.5) + logErfc((k - z0) / sqrt2Sigma);
    const logE1 = Math.log(0.5) + logErfc((z0 - j) / sqrt2Sigma);
    const logS0 = logT0 + (k * k - k) / (2 * sigma2) + logE0;
    const logS1 = logT1 + (j * j - j) / (2 * sigma2) + logE1;
    logA0 = logAdd(logA0, logS0);
    logA1 = logAdd(logA1, logS1);
    const total = logAdd(logA0, logA1);
    // Stop once both halves' terms are falling and negligible (e^−30) next to the sum.
    if (logS0 < lastS0 && logS1 < lastS1 && Math.max(logS0, logS1) < total - 30) return total;
    lastS0 = logS0;
    lastS1 = logS1;
  }
  return Infinity;
}

export type RdpConversion = 'improved' | 'classic';

/**
 * (ε at δ) from RDP values, at the best order. `improved` (the default) is Canonne, Kamath,
 * Steinke 2020 (arXiv:2004.00010, Proposition 12), the bound Opacus and dp_accounting report:
 * ε = r + log(1 − 1/α) − log(δ·α)/(α − 1), and ε = 0 where the KL bound δ ≥ √(1 − e^(−r)) already
 * holds. `classic` is Mironov 2017, Proposition 3: ε = r − log(δ)/(α − 1) (older TF-Privacy
 * tutorials quote it).
 */
export function epsilonFromRdp(
  orders: readonly number[],
  rdp: readonly number[],
  delta: number,
  conversion: RdpConversion = 'improved',
): { epsilon: number; order: number } {
  if (orders.length !== rdp.length || orders.length === 0)
    throw new DriftlineError('FEDERATED_TASK_INVALID', 'orders and RDP values must be non-empty and of the same length');
  if (!(delta > 0 && delta < 1)) throw new DriftlineError('FEDERATED_TASK_INVALID', `δ must be in (0, 1), got ${delta}`);
  let best = { epsilon: Infinity, order: orders[0]! };
  for (let i = 0; i < orders.length; i++) {
    const alpha = orders[i]!;
    const r = rdp[i]!;
    let epsilon: number;
    if (Number.isNaN(r) || r === Infinity) epsilon = Infinity;
    else if (r <= 0) epsilon = 0;
    else if (conversion === 'classic') epsilon = r - Math.log(delta) / (alpha - 1);
    else if (delta * delta + Math.expm1(-r) > 0) epsilon = 0;
    // The bound is numerically unstable as α → 1 and useless there anyway.
    else if (alpha > 1.01) epsilon = r + Math.log1p(-1 / alpha) - Math.log(delta * alpha) / (alpha - 1);
    else epsilon = Infinity;
    if (epsilon < best.epsilon) best = { epsilon, order: alpha };
  }
  return { epsilon: Math.max(0, best.epsilon), order: best.order };
}

/** Adds one round's RDP to the accumulated RDP (composition is a sum at every order). */
export function composeRdp(accumulated: readonly number[], step: readonly number[], times = 1): number[] {
  if (accumulated.length !== step.length) throw new DriftlineError('FEDERATED_TASK_INVALID', 'RDP vectors of different lengths');
  if (times === 0) return [...accumulated];
  return accumulated.map((r, i) => r + times * step[i]!);
}

/**
 * ε after `rounds` rounds of the sampled Gaussian mechanism at (σ, q), at δ: the figure an operator
 * plans a task with (`epsilonAfterRounds(1.1, 100 / 10000, 50, 1e-5)`).
 */
export function epsilonAfterRounds(
  sigma: number,
  q: number,
  rounds: number,
  delta: number,
  options: { orders?: readonly number[]; conversion?: RdpConversion } = {},
): { epsilon: number; order: number } {
  if (!Number.isInteger(rounds) || rounds < 0) throw new DriftlineError('FEDERATED_TASK_INVALID', `rounds must be an integer ≥ 0, got ${rounds}`);
  const orders = options.orders ?? DEFAULT_RDP_ORDERS;
  const step = sampledGaussianRdp(q, sigma, orders);
  return epsilonFromRdp(
    orders,
    composeRdp(
      orders.map(() => 0),
      step,
      rounds,
    ),
    delta,
    options.conversion,
  );
}
