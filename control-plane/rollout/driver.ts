import type { Logger } from '../../common/logger.js';
import type { RolloutEngine } from './engine.js';

export type DriverState = 'created' | 'running' | 'stopping' | 'stopped';

/**
 * The thin, timed part of rollouts: ticks the engine every interval. All decisions live in the
 * pure state machine; tests call engine.tick() themselves with a ManualClock instead of this.
 */
export class RolloutDriver {
  private timer: NodeJS.Timeout | undefined;
  private current: Promise<void> = Promise.resolve();
  private stateValue: DriverState = 'created';

  private constructor(private readonly options: { engine: RolloutEngine; tickIntervalMs: number; logger: Logger }) {}

  static create(options: { engine: RolloutEngine; tickIntervalMs: number; logger: Logger }): RolloutDriver {
    return new RolloutDriver(options);
  }

  get state(): DriverState {
    return this.stateValue;
  }

  run(): void {
    if (this.stateValue !== 'created') return;
    this.stateValue = 'running';
    this.timer = setInterval(() => {
      // One tick at a time: a slow tick delays the next rather than piling up.
      this.current = this.current.then(() => this.options.engine.tick()).catch((err: unknown) => this.options.logger.error({ err }, 'rollout driver tick failed'));
    }, this.options.tickIntervalMs);
    this.timer.unref();
  }

  /** Stops ticking and waits for the tick in flight (which never waits on devices, so it ends quickly). */
  async shutdown(): Promise<void> {
    if (this.stateValue === 'stopped') return;
    this.stateValue = 'stopping';
    clearInterval(this.timer);
    await this.current;
    this.stateValue = 'stopped';
  }
}
