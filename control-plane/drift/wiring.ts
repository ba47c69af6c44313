import type { Clock } from '../../common/clock.js';
import { REFERENCE_METADATA_KEY } from '../../common/drift/reference.js';
import type { Logger } from '../../common/logger.js';
import type { DriftStatus, DriftStatusRequest } from '../../common/proto/driftline/v1/drift.js';
import { cohortOf } from '../fleet/labels.js';
import type { DriftStatusSource } from './drift-watcher.js';
import type { DriftThresholds } from './evaluate.js';
import type { DriftHistoryQueries, DriftRollupRepository } from './ports.js';
import { DriftStatusQuery } from './status.js';

export interface DriftQueryConfig {
  window: number;
  minuteBucketsUpTo: number;
  /** The windowed test's long window; 0: off. */
  longWindow?: number;
  thresholds: DriftThresholds;
}

type MaybePromise<T> = T | Promise<T>;

/** Drift status answered from the rollups, with references from the registry and cohorts from device labels. */
export function driftQueries(deps: {
  drift: DriftRollupRepository;
  registry: { resolve(name: string, version: number): MaybePromise<{ metadata: Record<string, string> }> };
  fleet: { get(deviceId: string): MaybePromise<{ labels: Record<string, string> }> };
  config: DriftQueryConfig;
  clock: Clock;
  logger: Logger;
}): DriftHistoryQueries {
  const query = new DriftStatusQuery({
    rollups: deps.drift,
    logger: deps.logger,
    lookups: {
      async reference(model, version) {
        try {
          return (await deps.registry.resolve(model, version)).metadata[REFERENCE_METADATA_KEY];
        } catch {
          return undefined;
        }
      },
      async cohort(deviceId) {
        try {
          return cohortOf((await deps.fleet.get(deviceId)).labels);
        } catch {
          return '';
        }
      },
    },
  });
  const options = {
    thresholds: deps.config.thresholds,
    defaultWindowMs: deps.config.window,
    minuteBucketsUpToMs: deps.config.minuteBucketsUpTo,
    longWindowMs: deps.config.longWindow ?? 0,
  };
  return {
    status: (request) => query.status(request, options, deps.clock.now()),
    statusAt: (request, atMs) => query.status(request, options, atMs),
    histogram: (request) => query.histogram(request, options, deps.clock.now()),
  };
}

/** The drift watcher's input: versions with sketches from the rollups, their status from the drift queries (default window). */
export const driftStatusSource = (
  drift: DriftRollupRepository,
  queries: { status(request: DriftStatusRequest): Promise<DriftStatus[]> },
): DriftStatusSource => ({
  versions: (sinceMs) => drift.versionsSince(sinceMs),
  status: (model, version) => queries.status({ model, version, sinceMs: 0 }),
});
