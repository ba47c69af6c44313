import { readFile } from 'node:fs/promises';
import { UNLABELLED, type DatasetManifest, type SnapshotSplits } from '../../common/datasets/snapshot-layout.js';
import { referenceWithPredictionsOf } from '../../common/drift/model-predictions.js';
import {
  REFERENCE_METADATA_KEY,
  buildReference,
  parseReference,
  serializeReference,
  withDriftPolicy,
  type DriftReference,
} from '../../common/drift/reference.js';
import { DriftlineError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { TensorSession } from '../../common/onnx/tensor-session.js';
import { toGoldenTensor } from '../../common/trust/golden.js';
import type { GoldenVector } from '../../common/trust/manifest.js';
import { TRAINING_DATASET_METADATA_KEY } from '../datasets/wiring.js';
import type { ArtifactStore } from '../registry/artifact-store.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import type { ManifestExtras } from '../registry/release-signing.js';
import { readSnapshot, type DatasetSnapshots } from './dataset-adapters.js';

/** Loads a model to run it (training/onnxruntime/ is the adapter); the caller releases the session. */
export interface ModelSessions {
  open(bytes: Uint8Array, what: string): Promise<TensorSession>;
}

/** Training rows a retrained version's drift reference is built from, at most (the first rows of the snapshot's train split). */
export const MAX_REFERENCE_ROWS = 50_000;
/** Golden vectors a retrained version's canary manifest carries: single test rows. */
export const GOLDEN_VECTORS = 3;
/** The CLI's manifest builder records golden vectors within the same tolerance. */
export const GOLDEN_TOLERANCE = { abs: 1e-4, rel: 1e-3 } as const;
/** A registry metadata value's limit (model-registry.ts): a reference larger than this is left out. */
const MAX_METADATA_VALUE = 4096;

/**
 * A retrained version's release material, from the snapshot it was trained on (issue #14 item 6):
 * - its drift reference (metadata REFERENCE_METADATA_KEY), built over the snapshot's training rows
 *   in the parent version's reference layout (features, classes, names, bin count, drift policy),
 *   with the candidate's own predictions on those rows as the class and confidence distributions,
 *   as `models push --reference` does: control-plane drift for the new version is judged against
 *   the data it learnt from, not the data its parent learnt from;
 * - its canary manifest's golden vectors (the version run on a few test rows), example inputs of
 *   that shape, and reference distributions, so a device self-tests it like a pushed version.
 */
export class RetrainedReleaseData {
  private readonly maxReferenceRows: number;
  private readonly goldenVectors: number;

  constructor(
    private readonly deps: {
      registry: Pick<ModelRegistry, 'resolve'>;
      artifacts: Pick<ArtifactStore, 'fileOf'>;
      snapshots: Pick<DatasetSnapshots, 'getDataset' | 'readTar'>;
      sessions: ModelSessions;
      logger: Logger;
      maxReferenceRows?: number;
      goldenVectors?: number;
    },
  ) {
    this.maxReferenceRows = Math.max(1, deps.maxReferenceRows ?? MAX_REFERENCE_ROWS);
    this.goldenVectors = Math.min(64, Math.max(0, deps.goldenVectors ?? GOLDEN_VECTORS));
  }

  /**
   * The candidate's drift reference as the metadata entry stores it; undefined (logged) when the
   * parent has none (nothing says which features or classes to watch), the snapshot has no
   * training rows, or the reference would not fit in a metadata entry.
   */
  async referenceFor(request: { model: string; parentVersion: number; datasetId: string; candidateSha256: string }): Promise<string | undefined> {
    const { model, parentVersion, datasetId } = request;
    const log = { model, parentVersion, datasetId };
    const parentText = (await this.deps.registry.resolve(model, parentVersion)).metadata[REFERENCE_METADATA_KEY];
    if (!parentText) {
      this.deps.logger.info(log, 'the parent version has no drift reference: the retrained version gets none (drift for it reports no_reference)');
      return undefined;
    }
    const parent = parseReference(parentText);
    const { manifest, splits } = await this.snapshot(datasetId);
    const rowElements = manifest.input.shape.reduce((a, b) => a * b, 1);
    if (parent.features.length > rowElements) {
      this.deps.logger.warn(
        { ...log, features: parent.features.length, rowElements },
        "the parent's reference has more features than the snapshot's rows: no reference",
      );
      return undefined;
    }
    const rows = trainingRows(splits, rowElements, parent.features.length, this.maxReferenceRows);
    if (rows.features.length === 0) {
      this.deps.logger.warn(log, 'the snapshot has no training rows: the retrained version gets no drift reference');
      return undefined;
    }
    const session = await this.deps.sessions.open(await readFile(this.deps.artifacts.fileOf(request.candidateSha256)), 'candidate');
    let reference: DriftReference;
    try {
      reference = await referenceWithPredictionsOf(session, referenceLike(parent, rows.features, rows.labels), rows.features);
    } finally {
      await session.release();
    }
    const text = serializeReference(reference);
    if (text.length > MAX_METADATA_VALUE) {
      this.deps.logger.warn({ ...log, chars: text.length }, 'the retrained version’s drift reference does not fit in a metadata entry: left out');
      return undefined;
    }
    return text;
  }

  /**
   * What the canary manifest of a retrained version carries beyond its lineage: golden vectors
   * recorded on single test rows of its training snapshot (train rows when it has no test rows),
   * example inputs of that shape, and its reference's distributions. Empty when the version names
   * no snapshot or takes other than one input.
   */
  async manifestExtras(request: { model: string; version: number }): Promise<Pick<ManifestExtras, 'golden' | 'examples' | 'reference'>> {
    const stored = await this.deps.registry.resolve(request.model, request.version);
    const out: Pick<ManifestExtras, 'golden' | 'examples' | 'reference'> = {};
    const referenceText = stored.metadata[REFERENCE_METADATA_KEY];
    const dataSha256 = stored.metadata['lineage.dataset_sha256'] ?? '';
    if (referenceText && /^[0-9a-f]{64}$/.test(dataSha256)) {
      const reference = parseReference(referenceText);
      out.reference = { rows: reference.rows, dataSha256, features: reference.features.map((f) => ({ name: f.name, edges: f.edges, counts: f.counts })) };
    }
    const datasetId = stored.metadata[TRAINING_DATASET_METADATA_KEY];
    if (!datasetId || this.goldenVectors === 0) return out;
    const { manifest, splits } = await this.snapshot(datasetId);
    const rowShape = manifest.input.shape;
    const rowElements = rowShape.reduce((a, b) => a * b, 1);
    const source = splits.test.ids.length > 0 ? splits.test : splits.train;
    const count = Math.min(this.goldenVectors, source.ids.length);
    if (count === 0) return out;
    const session = await this.deps.sessions.open(await readFile(this.deps.artifacts.fileOf(stored.sha256)), `v${request.version}`);
    try {
      const input = session.inputNames[0];
      if (session.inputNames.length !== 1 || !input) {
        this.deps.logger.warn(
          { ...request, inputs: session.inputNames.length },
          'the version takes other than one input: its canary carries no golden vectors',
        );
        return out;
      }
      const dims = [1, ...rowShape];
      const vectors: GoldenVector[] = [];
      for (let r = 0; r < count; r++) {
        const data = source.x.slice(r * rowElements, (r + 1) * rowElements);
        let outputs: Awaited<ReturnType<TensorSession['run']>>;
        try {
          outputs = await session.run({ [input]: { type: 'float32', dims, data } });
        } catch (err) {
          throw new DriftlineError('MODEL_INVALID', `v${request.version} does not run on a test row of its snapshot: ${(err as Error).message}`, {
            cause: err,
          });
        }
        vectors.push({
          inputs: { [input]: toGoldenTensor({ type: 'float32', dims, data }) },
          outputs: Object.fromEntries(Object.entries(outputs).map(([name, t]) => [name, toGoldenTensor(t)])),
        });
      }
      out.golden = { tolerance: { ...GOLDEN_TOLERANCE }, vectors };
      out.examples = [{ [input]: { type: 'float32', dims } }];
      return out;
    } finally {
      await session.release();
    }
  }

  private snapshot(id: string): Promise<{ manifest: DatasetManifest; splits: SnapshotSplits }> {
    return readSnapshot(this.deps.snapshots, id);
  }
}

/** The first `max` training rows' first `features` values, and their labels (-1 where unlabelled). */
export function trainingRows(splits: SnapshotSplits, rowElements: number, features: number, max: number): { features: number[][]; labels: number[] } {
  const { x, y } = splits.train;
  const n = Math.min(max, y.length);
  const rows: number[][] = [];
  const labels: number[] = [];
  for (let r = 0; r < n; r++) {
    rows.push(Array.from(x.subarray(r * rowElements, r * rowElements + features)));
    labels.push(y[r] === UNLABELLED ? -1 : Number(y[r]));
  }
  return { features: rows, labels };
}

/**
 * A reference over `rows` in the parent's layout: its feature and class names, input and
 * probabilities names, bin count (its widest feature's) and drift policy with feature weights.
 */
export function referenceLike(parent: DriftReference, rows: readonly (readonly number[])[], labels: readonly number[]): DriftReference {
  const bins = Math.max(1, ...parent.features.map((f) => f.edges.length - 1));
  const built = buildReference(rows, {
    featureNames: parent.features.map((f) => f.name),
    classNames: parent.classes.names,
    labels,
    bins,
    ...(parent.input ? { input: parent.input } : {}),
    ...(parent.probabilities ? { probabilities: parent.probabilities } : {}),
  });
  const importance = Object.fromEntries(parent.features.filter((f) => f.importance !== undefined).map((f) => [f.name, f.importance!]));
  if (!parent.policy && Object.keys(importance).length === 0) return built;
  return withDriftPolicy(built, JSON.stringify({ ...(parent.policy ?? {}), ...(Object.keys(importance).length > 0 ? { importance } : {}) }));
}
