import type { Clock } from '../../common/clock.js';
import { REFERENCE_METADATA_KEY } from '../../common/drift/reference.js';
import type { DriftStatus, DriftStatusRequest } from '../../common/proto/driftline/v1/drift.js';
import type { FleetStore } from '../fleet/fleet-store.js';
import { cohortOf } from '../fleet/labels.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import type { DriftStatusSource } from './drift-watcher.js';
import type { DriftThresholds } from './evaluate.js';
import type { DriftLookups, SqliteDriftRepository } from '../store/sqlite/drift-repository.js';


export interface DriftQueryConfig {
  window: number;
  minuteBucketsUpTo: number;
  /** The windowed test's long window; 0: off. */
  longWindow?: number;
  thresholds: DriftThresholds;
}

/** Drift status answered from the rollups, with references from the registry and cohorts from device labels. */
export function driftQueries(deps: { drift: SqliteDriftRepository; registry: ModelRegistry; fleet: FleetStore; config: DriftQueryConfig; clock: Clock }): { status(request: DriftStatusRequest): DriftStatus[] } {
  const lookups: DriftLookups = {
    reference(model, version) {
      try {
        return deps.registry.resolve(model, version).metadata[REFERENCE_METADATA_KEY];
      } catch {
        return undefined;
      }
    },
    cohort(deviceId) {
      try {
        return cohortOf(deps.fleet.get(deviceId).labels);
      } catch {
        return '';
      }
    },
  };
  return {
    status: (request) =>
      deps.drift.status(request, lookups, { thresholds: deps.config.thresholds, defaultWindowMs: deps.config.window, minuteBucketsUpToMs: deps.config.minuteBucketsUpTo, longWindowMs: deps.config.longWindow ?? 0 }, deps.clock.now()),
  };
}

/** The drift watcher's input: versions with sketches from the rollups, their status from the drift queries (default window). */
export const driftStatusSource = (drift: SqliteDriftRepository, queries: { status(request: DriftStatusRequest): DriftStatus[] }): DriftStatusSource => ({
  versions: (sinceMs) => drift.versionsSince(sinceMs),
  status: (model, version) => queries.status({ model, version, sinceMs: 0 }),
});
