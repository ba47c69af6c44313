/**
 * Drift statistics on binned distributions. Pure functions over count vectors of the
 * same layout (the reference's bins), so they work on merged fleet sketches as well as
 * on one device's window.
 */

/** Proportions below this are raised to it, so empty bins do not make PSI infinite. */
export const PROPORTION_FLOOR = 1e-4;

export function proportions(counts: readonly number[], floor = 0): number[] {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return counts.map(() => 0);
  return counts.map((c) => Math.max(c / total, floor));
}

/** Expected count every pooled column reaches in both samples (Cochran's rule). */
const MIN_EXPECTED = 5;

/**
 * Adjacent bins pooled until every expected count of a 2 x k table is at least 5 (Cochran's
 * rule), as [reference, current] count pairs. The reference's under- and overflow bins are
 * empty by construction and a small window leaves many bins empty; pooled, neither adds
 * anything but what the data say. Mass that moves past the reference's range still shows,
 * in the pooled outer column.
 */
export function poolSparseBins(reference: readonly number[], current: readonly number[]): Array<[number, number]> {
  const n1 = reference.reduce((a, b) => a + b, 0);
  const n2 = current.reduce((a, b) => a + b, 0);
  if (n1 === 0 || n2 === 0) return reference.map((r, i) => [r, current[i] ?? 0]);
  // A pooled column needs this many observations for both expected counts to reach 5.
  const minColumn = (MIN_EXPECTED * (n1 + n2)) / Math.min(n1, n2);
  const columns: Array<[number, number]> = [];
  let open: [number, number] = [0, 0];
  for (let i = 0; i < reference.length; i++) {
    open = [open[0] + reference[i]!, open[1] + (current[i] ?? 0)];
    if (open[0] + open[1] >= minColumn) {
      columns.push(open);
      open = [0, 0];
    }
  }
  // What is left at the end joins the last column (or is the only one).
  if (open[0] + open[1] > 0) {
    const last = columns.pop() ?? [0, 0];
    columns.push([last[0] + open[0], last[1] + open[1]]);
  }
  return columns;
}

/**
 * Population stability index, sum of (q - p) ln(q / p), on the bins pooled as the chi-square
 * pools them (poolSparseBins) and with half a pseudo-count per pooled bin (Jeffreys), so an
 * empty bin of a small window adds what its sampling noise is worth rather than ~0.69 (what a
 * proportion floor of 1e-4 charged). With fleet-sized samples both corrections vanish and this
 * is the textbook PSI.
 */
export function psi(reference: readonly number[], current: readonly number[]): number {
  const columns = poolSparseBins(reference, current);
  const smooth = (counts: number[]): number[] => {
    const total = counts.reduce((a, b) => a + b, 0) + 0.5 * counts.length;
    return counts.map((c) => (c + 0.5) / total);
  };
  const p = smooth(columns.map((c) => c[0]));
  const q = smooth(columns.map((c) => c[1]));
  return p.reduce((sum, pi, i) => sum + (q[i]! - pi) * Math.log(q[i]! / pi), 0);
}

/** Jensen-Shannon distance (square root of the divergence, natural log), as scipy computes it. */
export function jensenShannon(reference: readonly number[], current: readonly number[]): number {
  const p = proportions(reference);
  const q = proportions(current);
  let divergence = 0;
  for (let i = 0; i < p.length; i++) {
    const m = (p[i]! + q[i]!) / 2;
    if (p[i]! > 0) divergence += 0.5 * p[i]! * Math.log(p[i]! / m);
    if (q[i]! > 0) divergence += 0.5 * q[i]! * Math.log(q[i]! / m);
  }
  return Math.sqrt(Math.max(0, divergence));
}

/** Hellinger distance: sqrt(1 - sum sqrt(p q)), in [0, 1]. */
export function hellinger(reference: readonly number[], current: readonly number[]): number {
  const p = proportions(reference);
  const q = proportions(current);
  const bc = p.reduce((sum, pi, i) => sum + Math.sqrt(pi * q[i]!), 0);
  return Math.sqrt(Math.max(0, 1 - bc));
}

function cdf(counts: readonly number[]): number[] {
  const p = proportions(counts);
  let run = 0;
  return p.map((pi) => (run += pi));
}

/** Kolmogorov-Smirnov statistic from the binned CDFs: the largest gap between them at a bin edge. */
export function ksStatistic(reference: readonly number[], current: readonly number[]): number {
  const a = cdf(reference);
  const b = cdf(current);
  return a.reduce((max, ai, i) => Math.max(max, Math.abs(ai - b[i]!)), 0);
}

/**
 * Wasserstein-1 distance from binned CDFs on the reference's edges, in the feature's units:
 * the integral of |F - G| between the first and last edge (under- and overflow bins sit on
 * the outer edges). Counts have edges.length + 1 entries.
 */
export function wasserstein(reference: readonly number[], current: readonly number[], edges: readonly number[]): number {
  const a = cdf(reference);
  const b = cdf(current);
  let distance = 0;
  // Between edges[i] and edges[i+1] the CDFs hold the mass of bins 0..i.
  for (let i = 0; i + 1 < edges.length; i++) distance += Math.abs(a[i]! - b[i]!) * (edges[i + 1]! - edges[i]!);
  return distance;
}

/**
 * Two-sample chi-square test of homogeneity on a 2 x k table, on the bins pooled by
 * poolSparseBins: one current value landing in the reference's empty overflow bin would
 * otherwise add ~n_ref/n to the statistic and call a clean window drifted.
 */
export function chiSquare(reference: readonly number[], current: readonly number[]): { statistic: number; df: number; pValue: number } {
  const n1 = reference.reduce((a, b) => a + b, 0);
  const n2 = current.reduce((a, b) => a + b, 0);
  if (n1 === 0 || n2 === 0) return { statistic: 0, df: 0, pValue: 1 };
  const n = n1 + n2;
  const columns = poolSparseBins(reference, current);
  let statistic = 0;
  for (const [a, b] of columns) {
    const col = a + b;
    const e1 = (n1 * col) / n;
    const e2 = (n2 * col) / n;
    statistic += (a - e1) ** 2 / e1 + (b - e2) ** 2 / e2;
  }
  const df = Math.max(0, columns.length - 1);
  return { statistic, df, pValue: df === 0 ? 1 : chiSquareSurvival(statistic, df) };
}

/**
 * Two-sample Kolmogorov-Smirnov test on binned CDFs: the statistic is the largest CDF gap at a
 * bin edge, which is never above the exact statistic on the raw values, so the asymptotic
 * Kolmogorov p-value (Stephens' small-sample correction) is conservative. Far more powerful
 * than the chi-square against a shift of location or scale.
 */
export function ksTest(reference: readonly number[], current: readonly number[]): { statistic: number; pValue: number } {
  const n1 = reference.reduce((a, b) => a + b, 0);
  const n2 = current.reduce((a, b) => a + b, 0);
  if (n1 === 0 || n2 === 0) return { statistic: 0, pValue: 1 };
  const d = ksStatistic(reference, current);
  const ne = Math.sqrt((n1 * n2) / (n1 + n2));
  return { statistic: d, pValue: kolmogorovSurvival((ne + 0.12 + 0.11 / ne) * d) };
}

/** P(K > x) for the Kolmogorov distribution: 2 sum (-1)^(k-1) exp(-2 k^2 x^2). */
export function kolmogorovSurvival(x: number): number {
  if (x < 0.3) return 1;
  let sum = 0;
  for (let k = 1; k <= 100; k++) {
    const term = Math.exp(-2 * k * k * x * x);
    sum += (k % 2 === 1 ? 1 : -1) * term;
    if (term < 1e-300 || term < Math.abs(sum) * 1e-16) break;
  }
  return Math.min(1, Math.max(0, 2 * sum));
}

/**
 * P(X > x) for X ~ noncentral chi-square(df, lambda): the Poisson(lambda / 2) mixture of
 * central chi-squares with df + 2j degrees of freedom. For power calculations.
 */
export function noncentralChiSquareSurvival(x: number, df: number, lambda: number): number {
  if (lambda <= 0) return chiSquareSurvival(x, df);
  const half = lambda / 2;
  let total = 0;
  let weightSum = 0;
  const peak = Math.floor(half);
  // Sum outwards from the Poisson mode until the weights are negligible.
  const logWeight = (j: number): number => -half + j * Math.log(half) - logGamma(j + 1);
  for (let j = peak; j >= 0; j--) {
    const w = Math.exp(logWeight(j));
    total += w * chiSquareSurvival(x, df + 2 * j);
    weightSum += w;
    if (w < 1e-12 && j < peak) break;
  }
  for (let j = peak + 1; j < peak + 10_000; j++) {
    const w = Math.exp(logWeight(j));
    total += w * chiSquareSurvival(x, df + 2 * j);
    weightSum += w;
    if (w < 1e-12) break;
  }
  return Math.min(1, total / weightSum);
}

/** The x with P(X > x) = p for X ~ chi-square(df), by bisection. */
export function chiSquareQuantile(p: number, df: number): number {
  let lo = 0;
  let hi = df + 10 * Math.sqrt(2 * df) + 100;
  while (chiSquareSurvival(hi, df) > p) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-9 * hi; i++) {
    const mid = (lo + hi) / 2;
    if (chiSquareSurvival(mid, df) > p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** P(X > x) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, x/2). */
export function chiSquareSurvival(x: number, df: number): number {
  if (x <= 0) return 1;
  return regularizedGammaQ(df / 2, x / 2);
}

function logGamma(z: number): number {
  // Lanczos approximation (g = 7, n = 9).
  const c = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012,
    9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (z < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * z)) - logGamma(1 - z);
  z -= 1;
  let x = c[0]!;
  for (let i = 1; i < 9; i++) x += c[i]! / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(x);
}

function regularizedGammaQ(a: number, x: number): number {
  if (x < a + 1) {
    // Series for P, then Q = 1 - P.
    let sum = 1 / a;
    let term = sum;
    for (let n = 1; n < 1000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-15) break;
    }
    return Math.max(0, 1 - sum * Math.exp(-x + a * Math.log(x) - logGamma(a)));
  }
  // Continued fraction for Q (Lentz).
  const tiny = 1e-300;
  let b = x + 1 - a;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 1000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-15) break;
  }
  return Math.min(1, Math.exp(-x + a * Math.log(x) - logGamma(a)) * h);
}

/** Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order. */
export function benjaminiHochberg(pValues: readonly number[]): number[] {
  const m = pValues.length;
  const order = pValues.map((p, i) => [p, i] as const).sort((a, b) => a[0] - b[0]);
  const adjusted = new Array<number>(m);
  let running = 1;
  for (let rank = m; rank >= 1; rank--) {
    const [p, index] = order[rank - 1]!;
    running = Math.min(running, (p * m) / rank);
    adjusted[index] = running;
  }
  return adjusted;
}

/** Bonferroni adjusted p-values. */
export function bonferroni(pValues: readonly number[]): number[] {
  return pValues.map((p) => Math.min(1, p * pValues.length));
}
