import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import { PeriodicTask, type PeriodicTaskState } from '../../common/periodic-task.js';

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
  private readonly timer: PeriodicTask;

  private constructor(private readonly options: RetentionPrunerOptions) {
    // pruneNow logs its own failures, so onError never sees one.
    this.timer = new PeriodicTask({ intervalMs: options.intervalMs, task: () => this.pruneNow(), onError: () => {} });
  }

  static create(options: RetentionPrunerOptions): RetentionPruner {
    return new RetentionPruner(options);
  }

  get state(): PeriodicTaskState {
    return this.timer.state;
  }

  run(): void {
    this.timer.run();
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
  shutdown(): Promise<void> {
    return this.timer.shutdown();
  }
}
