import { PeriodicTask } from '../../common/periodic-task.js';
import type { Logger } from '../../common/logger.js';
import type { RolloutEngine } from './engine.js';

/**
 * The thin, timed part of rollouts: ticks the engine every interval, one tick at a time. All
 * decisions live in the pure state machine; tests call engine.tick() themselves with a
 * ManualClock instead of this. Shutdown waits for the tick in flight (which never waits on
 * devices, so it ends quickly).
 */
export const RolloutDriver = {
  create(options: { engine: RolloutEngine; tickIntervalMs: number; logger: Logger }): PeriodicTask {
    return new PeriodicTask({
      intervalMs: options.tickIntervalMs,
      task: () => options.engine.tick(),
      onError: (err) => options.logger.error({ err }, 'rollout driver tick failed'),
    });
  },
};
