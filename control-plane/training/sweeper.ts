import type { CancelTimer, Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { TrainingEngine } from './engine.js';

export type TrainingSweeperState = 'created' | 'running' | 'stopping' | 'stopped';

/**
 * The timed part of training jobs: sweeps the engine every interval on the injected clock (so a
 * test that advances a ManualClock past a lease's expiry fires it), one sweep at a time: a slow
 * sweep makes the next tick skip rather than pile up. All decisions live in the state machine.
 */
export class TrainingSweeper {
  private stateValue: TrainingSweeperState = 'created';
  private cancelTimer: CancelTimer | undefined;
  private current: Promise<void> | undefined;

  private constructor(private readonly options: { engine: TrainingEngine; intervalMs: number; clock: Clock; logger: Logger }) {}

  static create(options: { engine: TrainingEngine; intervalMs: number; clock: Clock; logger: Logger }): TrainingSweeper {
    return new TrainingSweeper(options);
  }

  get state(): TrainingSweeperState {
    return this.stateValue;
  }

  run(): void {
    if (this.stateValue !== 'created') return;
    this.stateValue = 'running';
    this.cancelTimer = this.options.clock.setInterval(() => void this.sweepNow(), this.options.intervalMs);
  }

  /** One sweep now, unless one is in flight (then that one). Failures are logged, never thrown. */
  sweepNow(): Promise<void> {
    if (this.current) return this.current;
    this.current = this.options.engine
      .sweep()
      .catch((err: unknown) => this.options.logger.error({ err }, 'training sweep failed'))
      .finally(() => {
        this.current = undefined;
      });
    return this.current;
  }

  /** Stops the timer, waits for the sweep in flight and the evaluations it started. */
  async shutdown(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.stateValue = 'stopping';
    this.cancelTimer?.();
    await this.current;
    await this.options.engine.settled();
    this.stateValue = 'stopped';
  }
}
