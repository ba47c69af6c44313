import type { Readable } from 'node:stream';
import { DriftlineError } from '../../common/errors.js';
import { readSnapshotFiles, UNLABELLED, type DatasetManifest, type SnapshotSplits, type SplitData } from '../../common/datasets/snapshot-layout.js';
import { untarSnapshot } from '../../common/datasets/snapshot-tar.js';
import type { DatasetHandle } from '../datasets/dataset-service.js';
import type { DatasetRecord } from '../datasets/ports.js';
import type { SplitRole } from './evaluation.js';
import type { ArtifactRef, DatasetCatalog, TrainingArtifacts } from './ports.js';

/**
 * The training engine's ports over the datasets domain: a job names a snapshot by id, a worker
 * downloads its tar by sha256, and the evaluation gate reads its labelled test rows.
 */

/** What the training side uses of the DatasetService. */
export interface DatasetSnapshots {
  /** DATASET_NOT_FOUND when there is no such snapshot. */
  getDataset(id: string): Promise<DatasetHandle>;
  /** The whole tar, verified against its sha256. */
  readTar(id: string): Promise<Buffer>;
  getDatasetBySha256(sha256: string): Promise<DatasetRecord | undefined>;
  openTar(id: string): Promise<{ record: DatasetRecord; stream: Readable }>;
}

/** Each snapshot as the one artifact a worker downloads (its tar). */
export class SnapshotDatasetCatalog implements DatasetCatalog {
  constructor(private readonly snapshots: Pick<DatasetSnapshots, 'getDataset'>) {}

  async describe(datasetId: string): Promise<(ArtifactRef & { id: string; model: string }) | undefined> {
    try {
      const { id, sha256, sizeBytes, manifest } = await this.snapshots.getDataset(datasetId);
      return { id, sha256, sizeBytes, model: manifest.model };
    } catch (err) {
      if (err instanceof DriftlineError && err.code === 'DATASET_NOT_FOUND') return undefined;
      throw err;
    }
  }
}

/**
 * The model artifacts, and the snapshot tars beside them: snapshots live in a store of their own
 * (the artifact server never hands them to devices), so a download by sha256 looks there first.
 * Candidates are stored with the model artifacts (a passing one becomes a version from there).
 */
export class TrainingArtifactsWithSnapshots implements TrainingArtifacts {
  constructor(
    private readonly models: TrainingArtifacts,
    private readonly snapshots: Pick<DatasetSnapshots, 'getDatasetBySha256' | 'openTar'>,
  ) {}

  read(sha256: string): AsyncIterable<Uint8Array> {
    const { models, snapshots } = this;
    return (async function* () {
      const snapshot = await snapshots.getDatasetBySha256(sha256);
      if (!snapshot) {
        yield* models.read(sha256);
        return;
      }
      const { stream } = await snapshots.openTar(snapshot.id);
      try {
        for await (const chunk of stream) yield chunk as Uint8Array;
      } finally {
        stream.destroy();
      }
    })();
  }

  store(declared: ArtifactRef, chunks: AsyncIterable<Uint8Array>, maxBytes: number): Promise<ArtifactRef> {
    return this.models.store(declared, chunks, maxBytes);
  }

  pathOf(sha256: string): string {
    return this.models.pathOf(sha256);
  }
}

/** One labelled split, flattened (the evaluator's LabelledSplit; declared here so core does not import the onnxruntime adapter). */
export interface LabelledRows {
  x: Float32Array;
  rowShape: readonly number[];
  labels: ArrayLike<number>;
}

/** Which devices a label selector names (the fleet); the evaluation gate's cohort split reads it. */
export interface CohortDevices {
  deviceIds(selector: string): Promise<ReadonlySet<string>>;
}

/**
 * The evaluation gate's splits of a snapshot, read from its tar (driftline-dataset/1):
 * - "test": where the candidate must get better. The snapshot's labelled test rows, or, for a
 *   job a retraining trigger started for one cohort (focusSelector), only that cohort's rows;
 * - "regression": where it must not get worse. The other cohorts' labelled test rows of the same
 *   snapshot, and the labelled test rows of the snapshot it replays (manifest.parent: the parent
 *   version's training snapshot, so its own test data), leaving out any row already counted.
 *   A snapshot of one cohort that replays nothing has no regression split: the gates that read
 *   it are inconclusive (pass `--gate` rules that judge the test split only, or replay).
 * A sample's split is fixed by a hash of its id, so no row the candidate trained on is here.
 */
export class SnapshotEvaluationData {
  constructor(
    private readonly snapshots: Pick<DatasetSnapshots, 'getDataset' | 'readTar'>,
    private readonly cohorts?: CohortDevices,
  ) {}

  async classes(datasetId: string): Promise<number> {
    return (await this.snapshots.getDataset(datasetId)).manifest.classes;
  }

  async splits(datasetId: string, options: { focusSelector?: string | undefined } = {}): Promise<Partial<Record<SplitRole, LabelledRows>>> {
    const { manifest, test } = await this.read(datasetId);
    const shape = manifest.input.shape;
    const focus = options.focusSelector && this.cohorts ? await this.cohorts.deviceIds(options.focusSelector) : undefined;
    const inFocus = (r: number): boolean => !focus || focus.has(test.devices[r]!);
    const out: Partial<Record<SplitRole, LabelledRows>> = {};
    const own = labelled([{ split: test, keep: inFocus }], shape);
    if (own) out.test = own;

    const regression: LabelledPart[] = focus ? [{ split: test, keep: (r) => !inFocus(r) }] : [];
    if (manifest.parent) {
      const parent = await this.read(manifest.parent.id).catch((err: unknown) => {
        // A parent snapshot that is no longer kept leaves its rows out of the regression split, not the whole evaluation.
        if (err instanceof DriftlineError && err.code === 'DATASET_NOT_FOUND') return undefined;
        throw err;
      });
      if (parent) {
        if (JSON.stringify(parent.manifest.input.shape) !== JSON.stringify(shape)) {
          throw new DriftlineError('DATASET_INVALID', `the replayed snapshot ${manifest.parent.id} has another input shape than ${datasetId}`, {
            details: { datasetId, parent: manifest.parent.id },
          });
        }
        // A replayed sample is also in this snapshot's test split: counted there already.
        const counted = new Set(test.ids);
        regression.push({ split: parent.test, keep: (r) => !counted.has(parent.test.ids[r]!) });
      }
    }
    const others = labelled(regression, shape);
    if (others) out.regression = others;
    return out;
  }

  private async read(id: string): Promise<{ manifest: DatasetManifest; test: SplitData }> {
    const { manifest, splits } = await readSnapshot(this.snapshots, id);
    return { manifest, test: splits.test };
  }
}

/** A snapshot's manifest and splits, from its verified tar (never more than its recorded size). */
export async function readSnapshot(
  snapshots: Pick<DatasetSnapshots, 'getDataset' | 'readTar'>,
  id: string,
): Promise<{ manifest: DatasetManifest; splits: SnapshotSplits }> {
  const { sizeBytes } = await snapshots.getDataset(id);
  return readSnapshotFiles(untarSnapshot(await snapshots.readTar(id), sizeBytes), `dataset ${id}`);
}

interface LabelledPart {
  split: SplitData;
  keep: (row: number) => boolean;
}

/** The labelled rows that each part keeps, one after the other; undefined when none is labelled. */
function labelled(parts: readonly LabelledPart[], rowShape: readonly number[]): LabelledRows | undefined {
  const rowElements = rowShape.reduce((a, b) => a * b, 1);
  const kept: Array<{ split: SplitData; row: number }> = [];
  for (const { split, keep } of parts) {
    for (let r = 0; r < split.ids.length; r++) if (split.y[r] !== UNLABELLED && keep(r)) kept.push({ split, row: r });
  }
  if (kept.length === 0) return undefined;
  const x = new Float32Array(kept.length * rowElements);
  kept.forEach(({ split, row }, i) => x.set(split.x.subarray(row * rowElements, (row + 1) * rowElements), i * rowElements));
  return { x, rowShape, labels: Int32Array.from(kept, ({ split, row }) => Number(split.y[row])) };
}
