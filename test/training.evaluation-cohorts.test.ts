import { describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { sealManifest, snapshotFiles, type DatasetManifest, type SnapshotSplits, type SplitData } from '../common/datasets/snapshot-layout.js';
import { snapshotTar } from '../common/datasets/snapshot-tar.js';
import { SnapshotEvaluationData, type CohortDevices, type DatasetSnapshots } from '../control-plane/training/dataset-adapters.js';

/**
 * The evaluation gate's splits for a job a retraining trigger started for one cohort: "test" is
 * that cohort's labelled test rows (where the candidate must improve), "regression" the other
 * cohorts' test rows and the replayed parent snapshot's (where it must not get worse). Snapshots
 * are real driftline-dataset/1 tars; the row's first feature tells which sample it is.
 */

const empty = (): SplitData => ({ x: new Float32Array(0), y: new BigInt64Array(0), ids: [], devices: [] });

function split(rows: Array<{ id: string; device: string; label: number; value: number }>): SplitData {
  return {
    x: Float32Array.from(rows.flatMap((r) => [r.value, 0])),
    y: BigInt64Array.from(rows.map((r) => BigInt(r.label))),
    ids: rows.map((r) => r.id),
    devices: rows.map((r) => r.device),
  };
}

function snapshot(test: SplitData, parent: string | null): { manifest: DatasetManifest; tar: Buffer } {
  const splits: SnapshotSplits = { train: empty(), validation: empty(), test };
  const files = snapshotFiles(splits, [2]);
  const summary = (s: SplitData) => ({ rows: s.ids.length, labelled: s.y.filter((y) => y >= 0n).length, labelCounts: {} });
  const manifest = sealManifest(
    {
      format: 'driftline-dataset/1',
      model: 'vibration',
      versions: [1],
      input: { name: 'features', datatype: 'FP32', shape: [2] },
      classes: 2,
      createdAtMs: 1,
      query: {},
      parent: parent ? { id: parent } : null,
      splitShares: { train: 0.8, validation: 0.1, test: 0.1 },
      splits: { train: summary(splits.train), validation: summary(splits.validation), test: summary(test) },
      features: [],
    },
    files,
  );
  return { manifest, tar: snapshotTar(manifest, files) };
}

function store(...snapshots: Array<{ manifest: DatasetManifest; tar: Buffer }>): Pick<DatasetSnapshots, 'getDataset' | 'readTar'> {
  const byId = new Map(snapshots.map((s) => [s.manifest.id, s]));
  const find = (id: string) => {
    const found = byId.get(id);
    if (!found) throw new DriftlineError('DATASET_NOT_FOUND', `no dataset ${id}`);
    return found;
  };
  return {
    getDataset: async (id) => {
      const { manifest, tar } = find(id);
      return { id, sha256: '', sizeBytes: tar.length, manifest } as Awaited<ReturnType<DatasetSnapshots['getDataset']>>;
    },
    readTar: async (id) => find(id).tar,
  };
}

// The fleet: plant-2 drifted (its devices d3, d4), plant-1 did not (d1, d2).
const cohorts: CohortDevices = {
  deviceIds: async (selector) => new Set(selector === 'cohort=plant-2' ? ['d3', 'd4'] : selector === 'cohort=plant-1' ? ['d1', 'd2'] : []),
};
const values = (rows: { x: Float32Array } | undefined): number[] => (rows ? Array.from(rows.x.filter((_, i) => i % 2 === 0)) : []);

describe('evaluation splits of a cohort-triggered job', () => {
  const parent = snapshot(
    split([
      { id: 'p1', device: 'd1', label: 0, value: 101 },
      { id: 's2', device: 'd3', label: 1, value: 102 }, // replayed into the child too: counted once, in the child
      { id: 'p3', device: 'd2', label: -1, value: 103 }, // unlabelled: never judged
    ]),
    null,
  );
  const child = snapshot(
    split([
      { id: 's1', device: 'd1', label: 0, value: 1 },
      { id: 's2', device: 'd3', label: 1, value: 2 },
      { id: 's3', device: 'd4', label: 0, value: 3 },
      { id: 's4', device: 'd2', label: 1, value: 4 },
      { id: 's5', device: 'd4', label: -1, value: 5 },
    ]),
    parent.manifest.id,
  );

  it('judges the triggering cohort on "test" and the other cohorts plus the parent data on "regression"', async () => {
    const data = new SnapshotEvaluationData(store(parent, child), cohorts);
    const splits = await data.splits(child.manifest.id, { focusSelector: 'cohort=plant-2' });
    expect(values(splits.test)).toEqual([2, 3]);
    expect(Array.from(splits.test!.labels)).toEqual([1, 0]);
    expect(values(splits.regression)).toEqual([1, 4, 101]);
    expect(Array.from(splits.regression!.labels)).toEqual([0, 1, 0]);
  });

  it('keeps the whole test split as "test" for an operator job (no focus) and the parent data as "regression"', async () => {
    const data = new SnapshotEvaluationData(store(parent, child), cohorts);
    const splits = await data.splits(child.manifest.id);
    expect(values(splits.test)).toEqual([1, 2, 3, 4]);
    expect(values(splits.regression)).toEqual([101]);
  });

  it('has no regression split for one cohort without replay, and no test split when the cohort has no labelled rows', async () => {
    const alone = snapshot(split([{ id: 's2', device: 'd3', label: 1, value: 2 }]), null);
    const data = new SnapshotEvaluationData(store(alone), cohorts);
    const focused = await data.splits(alone.manifest.id, { focusSelector: 'cohort=plant-2' });
    expect(values(focused.test)).toEqual([2]);
    expect(focused.regression).toBeUndefined();
    const elsewhere = await data.splits(alone.manifest.id, { focusSelector: 'cohort=plant-1' });
    expect(elsewhere.test).toBeUndefined();
    expect(values(elsewhere.regression)).toEqual([2]);
  });
});
