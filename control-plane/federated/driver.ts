import { PeriodicTask } from '../../common/periodic-task.js';
import type { Logger } from '../../common/logger.js';
import type { FederatedEngine } from './engine.js';

/**
 * The thin, timed part of federated tasks: ticks the engine every interval (round deadlines,
 * evaluation deadlines, and on the first tick after a restart every step the store says is
 * due). All decisions live in the pure state machine; tests call engine.tick() themselves with
 * a ManualClock instead of this.
 */
export const FederatedDriver = {
  create(options: { engine: FederatedEngine; tickIntervalMs: number; logger: Logger }): PeriodicTask {
    return new PeriodicTask({
      intervalMs: options.tickIntervalMs,
      task: () => options.engine.tick(),
      onError: (err) => options.logger.error({ err }, 'federated driver tick failed'),
    });
  },
};
