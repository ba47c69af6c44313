/**
 * Log-space arithmetic for the Rényi-DP accountant. The sampled Gaussian mechanism's moments are
 * sums of terms like exp(i²/2σ²) that overflow a double long before the sum is useful, so every
 * quantity is carried as its logarithm and added with log-sum-exp.
 */

/** log(exp(a) + exp(b)) without overflow; −∞ is the log of 0. */
export function logAdd(a: number, b: number): number {
  const hi = Math.max(a, b);
  const lo = Math.min(a, b);
  if (lo === -Infinity) return hi;
  if (hi === Infinity) return Infinity;
  return hi + Math.log1p(Math.exp(lo - hi));
}

const LOG_SQRT_PI = 0.5 * Math.log(Math.PI);
const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

/**
 * log(erfc(x)), accurate to about 1e-14 relative over the whole line. For x ≥ 2 erfc underflows
 * double precision long before its log does (erfc(30) ≈ 1e−393), so the tail is computed directly
 * in log space from the continued fraction erfc(x) = e^(−x²)/√π · 1/(x + ½/(x + 1/(x + 3/2/(x + …)))).
 * Below 2, erf's all-positive series e^(−x²)·2/√π·Σ 2ⁿx^(2n+1)/(2n+1)!! has no cancellation.
 */
export function logErfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x === Infinity) return -Infinity;
  if (x === -Infinity) return Math.LN2;
  if (x >= 2) return -x * x - LOG_SQRT_PI + Math.log(erfcContinuedFraction(x));
  if (x <= -2) {
    // erfc(x) = 2 − erfc(−x), and erfc(−x) < 0.005 here: no cancellation worth the name.
    return Math.log(2 - Math.exp(logErfc(-x)));
  }
  return Math.log(1 - erfSeries(x));
}

/** 1/(x + ½/(x + 1/(x + 3/2/(x + …)))), evaluated from the tail; 200 levels is far past convergence at x ≥ 2. */
function erfcContinuedFraction(x: number): number {
  let tail = x;
  for (let n = 200; n >= 1; n--) tail = x + n / 2 / tail;
  return 1 / tail;
}

/** erf(x) for |x| < 2 by the series of positive terms (odd in x). */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (Math.abs(term) < 1e-17 * Math.abs(sum)) break;
  }
  return TWO_OVER_SQRT_PI * Math.exp(-x2) * sum;
}
