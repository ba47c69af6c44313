import { describe, expect, it } from 'vitest';
import { seededRandom } from '../demo/model/seeded-random.js';
import {
  benjaminiHochberg,
  bonferroni,
  chiSquare,
  chiSquareQuantile,
  chiSquareSurvival,
  hellinger,
  jensenShannon,
  kolmogorovSurvival,
  ksStatistic,
  ksTest,
  noncentralChiSquareSurvival,
  psi,
  wasserstein,
} from '../common/drift/statistics.js';

// Independent reference values: closed forms for normal distributions, and hand-computed sums.
function erf(x: number): number {
  // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
  const s = Math.sign(x);
  const t = 1 / (1 + 0.3275911 * Math.abs(x));
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x);
  return s * y;
}
const normalCdf = (x: number, mean: number): number => 0.5 * (1 + erf((x - mean) / Math.SQRT2));

/** Expected counts of N(mean, 1) on fine edges from -6 to 6, with under- and overflow bins. */
function normalCounts(mean: number, edges: number[], n = 1e7): number[] {
  const cdf = [0, ...edges.map((e) => normalCdf(e, mean)), 1];
  return cdf.slice(1).map((c, i) => Math.round((c - cdf[i]!) * n));
}
const fineEdges = Array.from({ length: 1201 }, (_, i) => -6 + i * 0.01);

describe('drift statistics', () => {
  const p = normalCounts(0, fineEdges);
  const q = normalCounts(0.5, fineEdges);

  it('PSI of two unit normals half a standard deviation apart is the squared shift (0.25)', () => {
    // Bins of 0.1 where proportions stay above PSI's floor; the tails sit in the outer bins.
    const edges = Array.from({ length: 61 }, (_, i) => -3 + i * 0.1);
    expect(psi(normalCounts(0, edges), normalCounts(0.5, edges))).toBeCloseTo(0.25, 2);
  });

  it('KS from binned CDFs matches 2 Phi(0.25) - 1 for a shift of 0.5', () => {
    expect(ksStatistic(p, q)).toBeCloseTo(2 * normalCdf(0.25, 0) - 1, 3);
  });

  it('Wasserstein from binned CDFs equals the shift between two normals', () => {
    expect(wasserstein(p, q, fineEdges)).toBeCloseTo(0.5, 2);
  });

  it('Hellinger distance of two unit normals is sqrt(1 - exp(-shift^2 / 8))', () => {
    expect(hellinger(p, q)).toBeCloseTo(Math.sqrt(1 - Math.exp(-0.25 / 8)), 3);
  });

  it('Jensen-Shannon distance matches the hand-computed value for [1/2, 1/2] against [1, 0]', () => {
    const klPm = 0.5 * Math.log(0.5 / 0.75) + 0.5 * Math.log(0.5 / 0.25);
    const klQm = Math.log(1 / 0.75);
    expect(jensenShannon([50, 50], [100, 0])).toBeCloseTo(Math.sqrt(0.5 * klPm + 0.5 * klQm), 10);
  });

  it('identical distributions have zero distance on every statistic', () => {
    for (const d of [psi(p, p), jensenShannon(p, p), hellinger(p, p), ksStatistic(p, p), wasserstein(p, p, fineEdges)]) expect(d).toBeCloseTo(0, 6);
  });

  it('PSI compares proportions: on large samples it is the textbook sum, whatever the sample size', () => {
    const byHand = [0.1, 0.2, 0.3, 0.4].reduce((s, r) => s + (0.25 - r) * Math.log(0.25 / r), 0);
    expect(psi([1e5, 2e5, 3e5, 4e5], [25e4, 25e4, 25e4, 25e4])).toBeCloseTo(byHand, 4);
    expect(psi([1e6, 2e6, 3e6, 4e6], [25e4, 25e4, 25e4, 25e4])).toBeCloseTo(byHand, 4);
  });

  it('PSI does not reward sparsity: the empty bins of small clean windows add no more than their noise', () => {
    // Reference deciles of 10,000 rows with empty outer bins; a clean 30-row window that left one decile empty.
    const reference = [0, ...new Array(10).fill(1000), 0];
    const sparse = [0, 3, 2, 4, 0, 3, 5, 3, 2, 4, 4, 0];
    const floored = (p: number[], q: number[]) => {
      const f = (c: number[]) => c.map((x) => Math.max(x / c.reduce((a, b) => a + b, 0), 1e-4));
      const [a, b] = [f(p), f(q)];
      return a.reduce((s, ai, i) => s + (b[i]! - ai) * Math.log(b[i]! / ai), 0);
    };
    // With a 1e-4 proportion floor the one empty decile alone costs ~0.69 (PSI "alert").
    expect(floored(reference, sparse)).toBeGreaterThan(0.69);
    expect(psi(reference, sparse)).toBeLessThan(0.1);
    // 1,000 clean 100-row windows: PSI averages its sampling noise, (bins - 1) / n, and never reaches 0.69.
    const random = seededRandom(7);
    const values: number[] = [];
    for (let w = 0; w < 1000; w++) {
      const counts = new Array<number>(12).fill(0);
      for (let i = 0; i < 100; i++) counts[1 + Math.floor(random.next() * 10)]!++;
      values.push(psi(reference, counts));
    }
    expect(values.reduce((a, b) => a + b, 0) / values.length).toBeLessThan(0.1);
    expect(Math.max(...values)).toBeLessThan(0.4);
  });

  it('the Kolmogorov and noncentral chi-square tails match scipy (kstwobign.sf, ncx2.sf)', () => {
    expect(kolmogorovSurvival(1.0)).toBeCloseTo(0.26999967167735456, 8);
    expect(kolmogorovSurvival(1.36)).toBeCloseTo(0.049485876755377876, 8);
    expect(noncentralChiSquareSurvival(10, 4, 5)).toBeCloseTo(0.36177114041768893, 6);
    expect(noncentralChiSquareSurvival(20, 9, 15)).toBeCloseTo(0.6431869596157479, 6);
    expect(chiSquareSurvival(chiSquareQuantile(0.01, 9), 9)).toBeCloseTo(0.01, 8);
  });

  it('the binned KS test finds a location shift the chi-square needs more rows for', () => {
    const reference = [0, ...new Array(10).fill(1000), 0];
    // 800 rows shifted by about a quarter of a standard deviation: each decile's share tilts towards the top.
    const shifted = [0, 56, 64, 70, 74, 78, 82, 86, 90, 96, 104, 0];
    expect(ksTest(reference, shifted).pValue).toBeLessThan(0.01);
    expect(ksTest(reference, shifted).pValue).toBeLessThan(chiSquare(reference, shifted).pValue);
    expect(ksTest(reference, [0, ...new Array(10).fill(40), 0]).pValue).toBe(1);
  });

  it('chi-square survival matches tabulated critical values', () => {
    expect(chiSquareSurvival(3.841458820694124, 1)).toBeCloseTo(0.05, 6);
    expect(chiSquareSurvival(11.070497693516351, 5)).toBeCloseTo(0.05, 6);
    expect(chiSquareSurvival(23.209251158954356, 10)).toBeCloseTo(0.01, 6);
    expect(chiSquareSurvival(0, 3)).toBe(1);
  });

  it('chi-square homogeneity test on a 2 x 2 table gives the textbook statistic', () => {
    // [[10, 20], [30, 40]]: expected [[12, 18], [28, 42]]; statistic 4/12 + 4/18 + 4/28 + 4/42.
    const result = chiSquare([10, 30], [20, 40]);
    expect(result.df).toBe(1);
    expect(result.statistic).toBeCloseTo(4 / 12 + 4 / 28 + 4 / 18 + 4 / 42, 10);
  });

  it('chi-square pools sparse bins: one clean value outside the reference range is not drift, a real shift still is', () => {
    // Reference deciles of 4000 rows with empty under- and overflow bins, as the device's sketch lays them out.
    const reference = [0, ...new Array(10).fill(400), 0];
    const clean = [0, 15, 15, 15, 15, 15, 15, 15, 15, 15, 14, 1];
    // Without pooling the lone overflow value alone adds ~26 to the statistic (p < 1e-3 at df 10).
    const result = chiSquare(reference, clean);
    expect(result.pValue).toBeGreaterThan(0.5);
    // Columns of at least 5 * 4150 / 150 = 138.3 observations: the outer bins join their neighbours,
    // leaving ten; by hand that is the 2 x 10 table whose last column holds 400 vs 15.
    expect(result.df).toBe(9);
    const e = (col: number, n: number) => (n * col) / 4150;
    const cell = (o: number, col: number, n: number) => (o - e(col, n)) ** 2 / e(col, n);
    const byHand = 9 * (cell(400, 415, 4000) + cell(15, 415, 150)) + cell(400, 415, 4000) + cell(15, 415, 150);
    expect(result.statistic).toBeCloseTo(byHand, 10);
    const shifted = [0, 0, 0, 0, 0, 0, 10, 20, 30, 30, 30, 30];
    expect(chiSquare(reference, shifted).pValue).toBeLessThan(1e-12);
  });

  it('Benjamini-Hochberg and Bonferroni adjust p-values as published', () => {
    expect(benjaminiHochberg([0.01, 0.04, 0.03, 0.005])).toEqual([0.02, 0.04, 0.04, 0.02].map((x) => expect.closeTo(x, 12)));
    expect(bonferroni([0.01, 0.3])).toEqual([0.02, 0.6]);
  });
});
