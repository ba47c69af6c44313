/** A reproducible random source: the same seed gives the same stream on every machine. */
export interface SeededRandom {
  /** Uniform in [0, 1). */
  next(): number;
  uniform(min: number, max: number): number;
  normal(mean?: number, sd?: number): number;
  /** exp(N(0, sigma)): multiplicative noise for quantities that cannot go negative. */
  logNormal(sigma: number): number;
  /** An index drawn with the given (unnormalized) weights. */
  pick(weights: readonly number[]): number;
  /** An integer in [0, n). */
  int(n: number): number;
}

/** mulberry32: tiny, fast, and good enough for synthetic data and shuffling. */
export function seededRandom(seed: number): SeededRandom {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = (mean = 0, sd = 1): number => {
    // Box-Muller; 1 - u keeps log() away from zero.
    const u = 1 - next();
    const v = next();
    return mean + sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
  return {
    next,
    uniform: (min, max) => min + (max - min) * next(),
    normal,
    logNormal: (sigma) => Math.exp(normal(0, sigma)),
    pick: (weights) => {
      let r = next() * weights.reduce((a, b) => a + b, 0);
      for (let i = 0; i < weights.length - 1; i++) {
        r -= weights[i]!;
        if (r < 0) return i;
      }
      return weights.length - 1;
    },
    int: (n) => Math.floor(next() * n),
  };
}
