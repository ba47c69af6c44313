import type { Clock } from '../../common/clock.js';

/**
 * The device's recent inference latencies, with the time each was observed: the learner's idle
 * guard (requests per second), the baseline p95 before it trains and the p95 while it trains.
 * A ring of the last `capacity` observations, so memory stays fixed however busy the device is.
 */
export class InferenceLatency {
  private readonly at: Float64Array;
  private readonly latency: Float64Array;
  private next = 0;
  private size = 0;
  private total = 0;

  constructor(
    private readonly clock: Clock,
    private readonly capacity = 2048,
  ) {
    this.at = new Float64Array(capacity);
    this.latency = new Float64Array(capacity);
  }

  observe(latencyMs: number): void {
    if (!Number.isFinite(latencyMs) || latencyMs < 0) return;
    this.at[this.next] = this.clock.now();
    this.latency[this.next] = latencyMs;
    this.next = (this.next + 1) % this.capacity;
    this.size = Math.min(this.size + 1, this.capacity);
    this.total++;
  }

  /** A mark in the sequence of observations: since(mark) gives those that come after it. */
  mark(): number {
    return this.total;
  }

  /** Latencies observed after a mark, oldest first (those the ring still holds). */
  since(mark: number): number[] {
    const count = Math.min(this.total - mark, this.size);
    const out: number[] = [];
    for (let i = this.size - count; i < this.size; i++) out.push(this.latency[(this.next - this.size + i + this.capacity) % this.capacity]!);
    return out;
  }

  /** Latencies observed in [fromMs, toMs), oldest first. */
  between(fromMs: number, toMs = Infinity): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) {
      const slot = (this.next - this.size + i + this.capacity) % this.capacity;
      const t = this.at[slot]!;
      if (t >= fromMs && t < toMs) out.push(this.latency[slot]!);
    }
    return out;
  }

  /** Requests per second over the last windowMs. */
  ratePerSecond(windowMs: number): number {
    return (this.between(this.clock.now() - windowMs).length * 1000) / windowMs;
  }
}

/** The 95th percentile (nearest rank) of some latencies; undefined for none. */
export function p95(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(0.95 * sorted.length) - 1)]!;
}
