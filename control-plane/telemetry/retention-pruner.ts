import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';

/** How long telemetry is kept: raw records by arrival, rollups by bucket size (the `telemetry` configuration). */
export interface RetentionPolicy {
  rawMs: number;
  minuteMs: number;
  hourMs: number;
}

/** A store with data that ages out (telemetry records and rollups, drift rollups). */
export interface PrunableStore {
  /** Deletes what the policy no longer keeps at nowMs; resolves to the rows deleted. */
  prune(nowMs: number, retention: RetentionPolicy): Promise<number>;
}

export type PrunerState = 'created' | 'running' | 'stopping' | 'stopped';

export interface RetentionPrunerOptions {
  stores: readonly PrunableStore[];
  retention: RetentionPolicy;
  intervalMs: number;
  clock: Clock;
  logger: Logger;
}

/**
 * Deletes telemetry past its retention every interval. A failed pass is logged and the next
 * one tries again: retention is housekeeping, never a reason to stop ingesting.
 */
export class RetentionPruner {
  private timer: NodeJS.Timeout | undefined;
  private current: Promise<void> = Promise.resolve();
  private stateValue: PrunerState = 'created';

  private constructor(private readonly options: RetentionPrunerOptions) {}

  static create(options: RetentionPrunerOptions): RetentionPruner {
    return new RetentionPruner(options);
  }

  get state(): PrunerState {
    return this.stateValue;
  }

  run(): void {
    if (this.stateValue !== 'created') return;
    this.stateValue = 'running';
    this.timer = setInterval(() => {
      // One pass at a time: a slow pass delays the next rather than piling up.
      this.current = this.current.then(() => this.pruneNow());
    }, this.options.intervalMs);
    this.timer.unref();
  }

  /** One retention pass over every store; failures are logged, not thrown. */
  async pruneNow(): Promise<void> {
    const { stores, retention, clock, logger } = this.options;
    const now = clock.now();
    for (const store of stores) {
      try {
        await store.prune(now, retention);
      } catch (err) {
        logger.warn({ err }, 'telemetry retention pass failed');
      }
    }
  }

  /** Stops the timer and waits for the pass in flight. */
  async shutdown(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.stateValue = 'stopping';
    clearInterval(this.timer);
    await this.current;
    this.stateValue = 'stopped';
  }
}
