import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { ModelLineage } from '../datasets/ports.js';
import type { RolloutEngine } from '../rollout/engine.js';
import type { TrainingEngine } from './engine.js';
import { ReleaseCanary, awaitingSignatureOnly, type ReleaseSigning } from './release-canary.js';
import type { RetrainingPolicyStore } from './retraining-ports.js';
import { TriggerJobStarter, type TriggerJobStarterOptions } from './trigger-starter.js';

export interface RetrainingLoopOptions {
  training: TrainingEngine;
  datasets: TriggerJobStarterOptions['datasets'];
  lineage: ModelLineage;
  policies: Pick<RetrainingPolicyStore, 'current'>;
  rollouts: Pick<RolloutEngine, 'start' | 'get' | 'list'>;
  /** Absent: every canary waits for a signature (nothing rolls out by itself). */
  signing?: ReleaseSigning | undefined;
  clock: Clock;
  logger: Logger;
  /** How often the release path looks at succeeded jobs and their rollouts. */
  tickIntervalMs: number;
}

export interface RetrainingLoop {
  /** What the trigger watcher starts jobs with (its `jobs`). */
  jobs: TriggerJobStarter;
  /** The release path after the gate; run() it after the rollout engine is up, shutdown() before the store closes. */
  release: ReleaseCanary;
}

/**
 * The glue of the closed loop: trigger → dataset → job (TriggerJobStarter, handed to the
 * TriggerWatcher) and gate → signature → canary rollout (ReleaseCanary, run by the caller).
 */
export function connectRetrainingLoop(options: RetrainingLoopOptions): RetrainingLoop {
  const { training, datasets, lineage, policies, rollouts, signing, clock, logger, tickIntervalMs } = options;
  return {
    jobs: new TriggerJobStarter({ engine: training, datasets, lineage, clock, logger }),
    release: ReleaseCanary.create({
      training,
      rollouts,
      policies,
      signing: signing ?? awaitingSignatureOnly,
      clock,
      logger,
      tickIntervalMs,
    }),
  };
}
