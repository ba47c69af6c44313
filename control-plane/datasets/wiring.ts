import type { ArtifactStore } from '../registry/artifact-store.js';
import type { FleetStore } from '../fleet/fleet-store.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import type { LabelledSampleCounter } from '../training/retraining-ports.js';
import type { DeviceSelection, ModelLineage, SnapshotBlobs } from './ports.js';

/**
 * The model version metadata key that names the dataset a version was trained on; what replay
 * (`datasets create --replay-parent`) reads until releases carry their lineage in the manifest.
 */
export const TRAINING_DATASET_METADATA_KEY = 'dataset_id';

/** Snapshot tars as content-addressed files, like the model artifacts (a store of their own: devices are never granted them). */
export function snapshotBlobsOf(store: ArtifactStore): SnapshotBlobs {
  return {
    async put(chunks) {
      const writer = await store.createWriter();
      try {
        for (const chunk of chunks) await writer.write(chunk);
        const { sha256, size } = await writer.commit();
        return { sha256, size };
      } catch (err) {
        await writer.abort();
        throw err;
      }
    },
    read: (sha256) => store.read(sha256),
  };
}

/** Devices by label selector, decommissioned ones too: the samples they sent are still theirs. */
export function deviceSelectionOf(fleet: Pick<FleetStore, 'list'>): DeviceSelection {
  return {
    async deviceIds(selector) {
      return new Set((await fleet.list(selector, { includeDecommissioned: true })).map((d) => d.id));
    },
  };
}

export function modelLineageOf(registry: Pick<ModelRegistry, 'get' | 'resolve'>): ModelLineage {
  return {
    async versionsOf(model) {
      return (await registry.get(model)).versions.map((v) => v.version).sort((a, b) => a - b);
    },
    async trainingDatasetOf(model, version) {
      return (await registry.resolve(model, version)).metadata[TRAINING_DATASET_METADATA_KEY] || undefined;
    },
  };
}

/** The retraining triggers' count of labelled samples, from the sample store; a selector narrows it to the devices it matches. */
export function labelledSampleCounterOf(
  samples: { countLabelled(model: string, sinceMs: number, deviceIds?: ReadonlySet<string>): Promise<number> },
  devices: DeviceSelection,
): LabelledSampleCounter {
  return {
    async count(model, sinceMs, selector) {
      return samples.countLabelled(model, sinceMs, selector ? await devices.deviceIds(selector) : undefined);
    },
  };
}
