/**
 * Streaming change detectors that run on the device, with river's defaults. Each
 * update() returns true on the observation at which a change is detected; the detector
 * then starts over, as river's do.
 */

export interface ChangeDetector {
  update(x: number): boolean;
  readonly n: number;
}

export interface PageHinkleyOptions {
  minInstances: number;
  delta: number;
  threshold: number;
  alpha: number;
  mode: 'up' | 'down' | 'both';
}

/** river.drift.PageHinkley defaults. */
export const PAGE_HINKLEY_DEFAULTS: Readonly<PageHinkleyOptions> = { minInstances: 30, delta: 0.005, threshold: 50, alpha: 1 - 0.0001, mode: 'both' };

export class PageHinkley implements ChangeDetector {
  private readonly o: PageHinkleyOptions;
  n = 0;
  private mean = 0;
  private sumIncrease = 0;
  private sumDecrease = 0;
  private minIncrease = Infinity;
  private maxDecrease = -Infinity;
  private detected = false;

  constructor(options: Partial<PageHinkleyOptions> = {}) {
    this.o = { ...PAGE_HINKLEY_DEFAULTS, ...options };
  }

  private reset(): void {
    this.n = 0;
    this.mean = 0;
    this.sumIncrease = 0;
    this.sumDecrease = 0;
    this.minIncrease = Infinity;
    this.maxDecrease = -Infinity;
    this.detected = false;
  }

  update(x: number): boolean {
    if (this.detected) this.reset();
    this.n++;
    this.mean += (x - this.mean) / this.n;
    const { alpha, delta, threshold, mode, minInstances } = this.o;
    this.sumIncrease = alpha * this.sumIncrease + (x - this.mean - delta);
    this.sumDecrease = alpha * this.sumDecrease + (x - this.mean + delta);
    this.minIncrease = Math.min(this.minIncrease, this.sumIncrease);
    this.maxDecrease = Math.max(this.maxDecrease, this.sumDecrease);
    if (this.n < minInstances) return false;
    const up = mode !== 'down' && this.sumIncrease - this.minIncrease > threshold;
    const down = mode !== 'up' && this.maxDecrease - this.sumDecrease > threshold;
    this.detected = up || down;
    return this.detected;
  }
}

export interface AdwinOptions {
  delta: number;
  clock: number;
  maxBuckets: number;
  minWindowLength: number;
  gracePeriod: number;
}

/** river.drift.ADWIN defaults. */
export const ADWIN_DEFAULTS: Readonly<AdwinOptions> = { delta: 0.002, clock: 32, maxBuckets: 5, minWindowLength: 5, gracePeriod: 10 };

interface Bucket {
  size: number;
  total: number;
  /** Sum of squared deviations from the bucket's mean. */
  variance: number;
}

/**
 * ADaptive WINdowing (Bifet & Gavaldà): an exponential histogram of the recent window;
 * every `clock` observations it looks for a split into two sub-windows whose means
 * differ by more than the Hoeffding-style bound, and drops the older part.
 */
export class Adwin implements ChangeDetector {
  private readonly o: AdwinOptions;
  /** Oldest first; sizes are powers of two, non-increasing from oldest to newest. */
  private buckets: Bucket[] = [];
  private width = 0;
  private total = 0;
  private variance = 0;
  private tick = 0;
  n = 0;

  constructor(options: Partial<AdwinOptions> = {}) {
    this.o = { ...ADWIN_DEFAULTS, ...options };
  }

  get windowWidth(): number {
    return this.width;
  }

  get estimation(): number {
    return this.width === 0 ? 0 : this.total / this.width;
  }

  update(x: number): boolean {
    this.n++;
    this.tick++;
    if (this.width > 0) {
      const mean = this.total / this.width;
      this.variance += (this.width * (x - mean) ** 2) / (this.width + 1);
    }
    this.width++;
    this.total += x;
    this.buckets.push({ size: 1, total: x, variance: 0 });
    this.compress();
    if (this.tick % this.o.clock !== 0 || this.width <= this.o.gracePeriod) return false;
    return this.detectAndShrink();
  }

  private compress(): void {
    let size = 1;
    for (;;) {
      let first = -1;
      let count = 0;
      for (let i = 0; i < this.buckets.length; i++) {
        if (this.buckets[i]!.size === size) {
          if (first < 0) first = i;
          count++;
        }
      }
      if (count <= this.o.maxBuckets) return;
      const a = this.buckets[first]!;
      const b = this.buckets[first + 1]!;
      const ua = a.total / a.size;
      const ub = b.total / b.size;
      const merged: Bucket = {
        size: a.size + b.size,
        total: a.total + b.total,
        variance: a.variance + b.variance + (a.size * b.size * (ua - ub) ** 2) / (a.size + b.size),
      };
      this.buckets.splice(first, 2, merged);
      size *= 2;
    }
  }

  private detectAndShrink(): boolean {
    let detected = false;
    let again = true;
    while (again && this.buckets.length > 1) {
      again = false;
      let n0 = 0;
      let sum0 = 0;
      for (let i = 0; i < this.buckets.length - 1; i++) {
        n0 += this.buckets[i]!.size;
        sum0 += this.buckets[i]!.total;
        const n1 = this.width - n0;
        if (n0 < this.o.minWindowLength || n1 < this.o.minWindowLength) continue;
        const deltaMean = sum0 / n0 - (this.total - sum0) / n1;
        if (this.cut(n0, n1, deltaMean)) {
          detected = true;
          again = true;
          this.dropOldest();
          break;
        }
      }
    }
    return detected;
  }

  private cut(n0: number, n1: number, deltaMean: number): boolean {
    const deltaPrime = Math.log((2 * Math.log(this.width)) / this.o.delta);
    const mRecip = 1 / (n0 - this.o.minWindowLength + 1) + 1 / (n1 - this.o.minWindowLength + 1);
    const epsilon = Math.sqrt(2 * mRecip * (this.variance / this.width) * deltaPrime) + (2 / 3) * deltaPrime * mRecip;
    return Math.abs(deltaMean) > epsilon;
  }

  private dropOldest(): void {
    const b = this.buckets.shift()!;
    this.width -= b.size;
    this.total -= b.total;
    const mean = this.width === 0 ? 0 : this.total / this.width;
    const u = b.total / b.size;
    this.variance = Math.max(0, this.variance - b.variance - (b.size * this.width * (u - mean) ** 2) / (b.size + this.width));
  }
}
