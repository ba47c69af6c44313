import { describe, expect, it } from 'vitest';
import { logAdd, logErfc } from '../control-plane/federated/privacy/log-space.js';
import { composeRdp, DEFAULT_RDP_ORDERS, epsilonAfterRounds, epsilonFromRdp, sampledGaussianRdp } from '../control-plane/federated/privacy/rdp-accountant.js';

/** The orders TensorFlow Privacy's compute_dp_sgd_privacy_lib.py searches (the ones its tests' expected orders come from). */
const TF_PRIVACY_ORDERS = [1.25, 1.5, 1.75, 2, 2.25, 2.5, 3, 3.5, 4, 4.5, ...Array.from({ length: 59 }, (_, i) => 5 + i), 128, 256, 512];
/** The orders of TensorFlow Privacy's MNIST tutorial (tutorials/mnist_dpsgd_tutorial.py, compute_epsilon). */
const TUTORIAL_ORDERS = [...Array.from({ length: 99 }, (_, i) => 1 + (i + 1) / 10), ...Array.from({ length: 52 }, (_, i) => 12 + i)];

/** Φ, the standard normal CDF, from the accountant's own log erfc (checked against libm below). */
const normalCdf = (x: number): number => 0.5 * Math.exp(logErfc(-x / Math.SQRT2));

/**
 * The exact δ(ε) of T compositions of the Gaussian mechanism with noise multiplier σ (Balle &
 * Wang 2018, "Improving the Gaussian Mechanism", Theorem 8): a lower bound any valid accountant
 * must respect, since the true privacy curve is exactly this.
 */
function exactGaussianDelta(epsilon: number, sigma: number, rounds: number): number {
  const mu = Math.sqrt(rounds) / sigma;
  return normalCdf(-epsilon / mu + mu / 2) - Math.exp(epsilon) * normalCdf(-epsilon / mu - mu / 2);
}

describe('federated privacy - log-space arithmetic', () => {
  it('logErfc - matches erfc where erfc is representable, and its asymptote beyond', () => {
    // Values of erfc from the C library (Python math.erfc), to 15 digits.
    expect(logErfc(0)).toBe(0);
    expect(Math.exp(logErfc(0.5))).toBeCloseTo(0.4795001221869535, 14);
    expect(Math.exp(logErfc(-1))).toBeCloseTo(1.8427007929497148, 14);
    expect(logErfc(3) / Math.log(2.209049699858544e-5)).toBeCloseTo(1, 13);
    expect(logErfc(20) / Math.log(5.395865611607901e-176)).toBeCloseTo(1, 13);
    // Far in the tail erfc underflows; its asymptotic series gives the log:
    // erfc(x) ≈ e^(−x²)/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶)).
    const x = 100;
    const x2 = x * x;
    const asymptote = -x2 - Math.log(x * Math.sqrt(Math.PI)) + Math.log(1 - 1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2 * x2 * x2));
    expect(logErfc(x)).toBeCloseTo(asymptote, 9);
    expect(logErfc(-40)).toBeCloseTo(Math.LN2, 15);
  });

  it('logAdd - adds in log space without overflow, treating −∞ as zero', () => {
    expect(logAdd(Math.log(2), Math.log(3))).toBeCloseTo(Math.log(5), 15);
    expect(logAdd(-Infinity, 7)).toBe(7);
    expect(logAdd(1000, 1000)).toBeCloseTo(1000 + Math.LN2, 12);
  });
});

describe('federated privacy - Rényi-DP of the sampled Gaussian mechanism', () => {
  it('accountant - equals the Gaussian mechanism closed form α/(2σ²) when every device is sampled (q = 1)', () => {
    for (const sigma of [0.5, 1, 3.7]) {
      const rdp = sampledGaussianRdp(1, sigma, [1.5, 2, 10, 64]);
      expect(rdp).toEqual([1.5, 2, 10, 64].map((alpha) => alpha / (2 * sigma * sigma)));
    }
  });

  it('accountant - matches the RDP values published by dp_accounting (q = 0.01, σ = 2.5, 50 steps)', () => {
    // google/differential-privacy, python/dp_accounting/dp_accounting/rdp/rdp_privacy_accountant_test.py,
    // test_compute_rdp_poisson_sampled_gaussian (rtol 1e-4 there); orders 1.5 and 2.5 take the
    // fractional series, 5, 50 and 100 the binomial expansion.
    const orders = [1.5, 2.5, 5, 50, 100];
    const published = [6.70579741e-4, 1.0854871e-3, 2.18075656e-3, 2.38460375e-2, 1.67416308e2];
    const rdp = composeRdp(
      orders.map(() => 0),
      sampledGaussianRdp(0.01, 2.5, orders),
      50,
    );
    rdp.forEach((r, i) => expect(Math.abs(r / published[i]! - 1)).toBeLessThan(1e-6));
  });

  it('accountant - joins the fractional series to the binomial expansion continuously around integer orders', () => {
    for (const [q, sigma] of [
      [0.01, 1],
      [0.1, 0.8],
      [0.5, 2],
    ] as const) {
      for (const alpha of [2, 3, 8, 20]) {
        const [below, exact, above] = sampledGaussianRdp(q, sigma, [alpha - 1e-6, alpha, alpha + 1e-6]);
        expect(Math.abs(below! / exact! - 1)).toBeLessThan(1e-4);
        expect(Math.abs(above! / exact! - 1)).toBeLessThan(1e-4);
      }
    }
  });

  it('accountant - gives no privacy loss when no device is sampled and none bound without noise', () => {
    expect(sampledGaussianRdp(0, 1, [2, 3])).toEqual([0, 0]);
    expect(sampledGaussianRdp(0.1, 0, [2, 3])).toEqual([Infinity, Infinity]);
    expect(epsilonAfterRounds(1, 0.1, 0, 1e-5).epsilon).toBe(0);
  });

  it('accountant - refuses a sampling rate outside [0, 1], a negative σ and orders ≤ 1', () => {
    expect(() => sampledGaussianRdp(1.5, 1)).toThrow(expect.objectContaining({ code: 'FEDERATED_TASK_INVALID' }));
    expect(() => sampledGaussianRdp(Number.NaN, 1)).toThrow(expect.objectContaining({ code: 'FEDERATED_TASK_INVALID' }));
    expect(() => sampledGaussianRdp(0.1, -1)).toThrow(expect.objectContaining({ code: 'FEDERATED_TASK_INVALID' }));
    expect(() => sampledGaussianRdp(0.1, 1, [1])).toThrow(expect.objectContaining({ code: 'FEDERATED_TASK_INVALID' }));
    expect(() => epsilonAfterRounds(1, 0.1, 2.5, 1e-5)).toThrow(expect.objectContaining({ code: 'FEDERATED_TASK_INVALID' }));
    expect(() => epsilonFromRdp([2], [1], 0)).toThrow(expect.objectContaining({ code: 'FEDERATED_TASK_INVALID' }));
  });
});

describe('federated privacy - (ε, δ) from Rényi-DP', () => {
  it('conversion - matches the hand-computed ε of dp_accounting for pure DP (RDP 1.1 at orders 2..32, δ = 1e-5)', () => {
    // rdp_privacy_accountant_test.py, test_compute_epsilon_delta_pure_dp: 1.32783806176 at order 32.
    const orders = Array.from({ length: 31 }, (_, i) => i + 2);
    const { epsilon, order } = epsilonFromRdp(
      orders,
      orders.map(() => 1.1),
      1e-5,
    );
    expect(epsilon).toBeCloseTo(1.32783806176, 10);
    expect(order).toBe(32);
  });

  it('conversion - recovers ε = 1 for the Gaussian mechanism tuned to (1, 1e-6)-DP (σ = 4.530877117)', () => {
    // rdp_privacy_accountant_test.py, test_compute_epsilon_delta_gaussian: orders 1 … 100 by 0.001.
    const orders = Array.from({ length: 98_999 }, (_, i) => 0.001 * (i + 1001));
    expect(epsilonAfterRounds(4.530877117, 1, 1, 1e-6, { orders }).epsilon).toBeCloseTo(1, 7);
  });

  it('conversion - the classic bound is never tighter than the improved one', () => {
    for (const rounds of [1, 10, 1000]) {
      const improved = epsilonAfterRounds(1.1, 0.01, rounds, 1e-5).epsilon;
      const classic = epsilonAfterRounds(1.1, 0.01, rounds, 1e-5, { conversion: 'classic' }).epsilon;
      expect(classic).toBeGreaterThanOrEqual(improved);
    }
  });
});

describe('federated privacy - ε against published DP-SGD figures', () => {
  // tensorflow/privacy, tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py,
  // test_compute_dp_sgd_privacy: (n, batch, σ, epochs, δ) → (ε, best order), asserted there to 7
  // places; steps = ceil(epochs · n / batch), q = batch / n, the improved conversion.
  it.each([
    [60_000, 150, 1.3, 15, 1e-5, 0.7242234026109595, 19],
    [100_000, 100, 1.0, 30, 1e-7, 1.4154988495444842, 13],
    [100_000_000, 1024, 0.1, 10, 1e-7, 5907982.3113978775, 1.25],
  ])('accountant - n = %d, batch %d, σ = %d, %d epochs, δ = %d gives TensorFlow Privacy’s ε', (n, batch, sigma, epochs, delta, expected, expectedOrder) => {
    const steps = Math.ceil((epochs * n) / batch);
    const { epsilon, order } = epsilonAfterRounds(sigma, batch / n, steps, delta, { orders: TF_PRIVACY_ORDERS });
    expect(Math.abs(epsilon / expected - 1)).toBeLessThan(1e-9);
    expect(order).toBe(expectedOrder);
  });

  // tensorflow/privacy, tutorials/README.md: MNIST (60,000 examples), batch 256, δ = 1e-5, the
  // classic conversion: σ = 1.12 for 60 epochs gives ε = 2.92 (the default setting), σ = 1.2 for 10
  // epochs ε = 1.20; steps = epochs · 60000 // 256 as in the tutorial's compute_epsilon.
  it.each([
    [1.12, 60, 2.92],
    [1.2, 10, 1.2],
  ])('accountant - MNIST DP-SGD with σ = %d for %d epochs is ε = %d, as the TF-Privacy tutorial reports', (sigma, epochs, published) => {
    const steps = Math.floor((epochs * 60_000) / 256);
    const { epsilon } = epsilonAfterRounds(sigma, 256 / 60_000, steps, 1e-5, { orders: TUTORIAL_ORDERS, conversion: 'classic' });
    expect(Math.abs(epsilon - published)).toBeLessThan(0.005);
    // The default orders and the improved conversion only tighten it.
    expect(epsilonAfterRounds(sigma, 256 / 60_000, steps, 1e-5).epsilon).toBeLessThan(epsilon);
  });
});

describe('federated privacy - ε behaves as a privacy loss must', () => {
  it('accountant - grows with rounds and with the sampling rate, shrinks with noise', () => {
    let previous = 0;
    for (const rounds of [1, 2, 5, 20, 100, 1000]) {
      const { epsilon } = epsilonAfterRounds(1.0, 0.05, rounds, 1e-5);
      expect(epsilon).toBeGreaterThan(previous);
      previous = epsilon;
    }
    previous = Infinity;
    for (const sigma of [0.6, 0.8, 1, 1.5, 2, 4, 8]) {
      const { epsilon } = epsilonAfterRounds(sigma, 0.05, 100, 1e-5);
      expect(epsilon).toBeLessThan(previous);
      previous = epsilon;
    }
    previous = 0;
    for (const q of [0.001, 0.01, 0.1, 0.5, 1]) {
      const { epsilon } = epsilonAfterRounds(1, q, 100, 1e-5);
      expect(epsilon).toBeGreaterThan(previous);
      previous = epsilon;
    }
  });

  it('accountant - never reports less than the exact ε of composed Gaussian mechanisms (q = 1)', () => {
    for (const [sigma, rounds] of [
      [1, 1],
      [2, 10],
      [5, 100],
      [20, 1000],
    ] as const) {
      const delta = 1e-5;
      const { epsilon } = epsilonAfterRounds(sigma, 1, rounds, delta);
      // The true δ at the reported ε is at most δ: the report is an upper bound on ε …
      expect(exactGaussianDelta(epsilon, sigma, rounds)).toBeLessThanOrEqual(delta);
      // … and a tight one: 10 % below it the true δ is already above the target.
      expect(exactGaussianDelta(0.9 * epsilon, sigma, rounds)).toBeGreaterThan(delta);
    }
  });

  it('accountant - stays above the central-limit lower bound TensorFlow Privacy checks its figures with', () => {
    // compute_dp_sgd_privacy_test.py: sampling q with noise σ over T steps is no more private than
    // one Gaussian with multiplier σ·√T / q (Gaussian DP, Dong, Roth, Su 2019).
    for (const [sigma, q, rounds] of [
      [1.1, 0.01, 500],
      [0.8, 0.1, 50],
      [2, 0.001, 10_000],
    ] as const) {
      const delta = 1e-5;
      const { epsilon } = epsilonAfterRounds(sigma, q, rounds, delta);
      const effective = (sigma * Math.sqrt(rounds)) / q;
      expect(exactGaussianDelta(epsilon, effective, 1)).toBeLessThanOrEqual(delta);
    }
  });

  it('accountant - ignores an order whose series does not converge instead of reporting ∞ or 0', () => {
    const rdp = [Infinity, 0.5];
    const { epsilon, order } = epsilonFromRdp([1.5, 10], rdp, 1e-5);
    expect(order).toBe(10);
    expect(Number.isFinite(epsilon) && epsilon > 0).toBe(true);
  });

  it('accountant - default orders hold the TF-Privacy/Opacus set plus 128, 256 and 512', () => {
    expect(DEFAULT_RDP_ORDERS[0]).toBe(1.1);
    expect(DEFAULT_RDP_ORDERS).toContain(10.9);
    expect(DEFAULT_RDP_ORDERS).toContain(63);
    expect(DEFAULT_RDP_ORDERS.slice(-3)).toEqual([128, 256, 512]);
    expect(new Set(DEFAULT_RDP_ORDERS).size).toBe(DEFAULT_RDP_ORDERS.length);
  });
});
