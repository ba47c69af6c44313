import type { Clock } from '../../common/clock.js';

export interface DeviceRateOptions {
  messagesPerSecond: number;
  burst: number;
  clock: Clock;
}

interface Bucket {
  tokens: number;
  atMs: number;
}

/**
 * One token bucket per device over the messages it sends up: `burst` messages at once,
 * `messagesPerSecond` sustained. Taking a token is a map lookup and some arithmetic, so a
 * device over its rate costs the control plane next to nothing. Devices are the enrolled
 * ones (the broker authenticates every publisher), so the map is bounded by the fleet.
 */
export class DeviceRateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(private readonly options: DeviceRateOptions) {}

  /** True when the device may send this message now (and takes its token). */
  tryTake(deviceId: string): boolean {
    const { messagesPerSecond, burst, clock } = this.options;
    const now = clock.now();
    let bucket = this.buckets.get(deviceId);
    if (!bucket) {
      bucket = { tokens: burst, atMs: now };
      this.buckets.set(deviceId, bucket);
    }
    // A clock stepped backwards refills nothing and takes nothing away.
    bucket.tokens = Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.atMs) * messagesPerSecond) / 1000);
    bucket.atMs = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }
}
