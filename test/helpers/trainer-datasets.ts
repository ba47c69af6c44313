import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import {
  sealManifest,
  snapshotFiles,
  splitOf,
  SPLITS,
  UNLABELLED,
  writeSnapshotFolder,
  type SnapshotSplits,
  type SplitName,
} from '../../common/datasets/snapshot-layout.js';
import { buildDemoModel } from '../../demo/model/demo-model.js';
import { generateVibrationData } from '../../demo/model/vibration-data.js';

/**
 * A trainer's job on disk: the demo classifier (trained on clean vibration data) as the base
 * model, and a snapshot of drifted rows it is poor on (sensor aging: the features moved, the
 * labels did not), split by the snapshot format's stable hash of the sample id.
 */
export interface TrainerJobFiles {
  dir: string;
  dataset: string;
  baseModel: string;
  hyperparameters: string;
  output: string;
  splits: SnapshotSplits;
}

export function driftedVibrationJob(options: { rows: number; severity: number; hyperparameters: Record<string, unknown>; seed?: number }): TrainerJobFiles {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-trainer-job-'));
  const data = generateVibrationData({ rows: options.rows, seed: options.seed ?? 77, drift: { severity: options.severity } });
  const features = data.featureNames.length;
  const rowsBySplit: Record<SplitName, number[]> = { train: [], validation: [], test: [] };
  for (let r = 0; r < options.rows; r++) rowsBySplit[splitOf(`sample-${r}`)].push(r);
  const splits = {} as SnapshotSplits;
  for (const split of SPLITS) {
    const rows = rowsBySplit[split];
    const x = new Float32Array(rows.length * features);
    rows.forEach((r, i) => x.set(data.x.subarray(r * features, (r + 1) * features), i * features));
    // Every tenth training row is unlabelled, as captured samples without feedback are.
    const y = BigInt64Array.from(rows, (r, i) => (split === 'train' && i % 10 === 9 ? UNLABELLED : BigInt(data.y[r]!)));
    splits[split] = { x, y, ids: rows.map((r) => `sample-${r}`), devices: rows.map((r) => `device-${r % 7}`) };
  }
  const files = snapshotFiles(splits, [features]);
  const summary = (split: SplitName) => {
    const labelCounts: Record<string, number> = {};
    for (const label of splits[split].y) if (label !== UNLABELLED) labelCounts[String(label)] = (labelCounts[String(label)] ?? 0) + 1;
    return { rows: splits[split].ids.length, labelled: Object.values(labelCounts).reduce((a, b) => a + b, 0), labelCounts };
  };
  const manifest = sealManifest(
    {
      format: 'driftline-dataset/1',
      model: 'vibration',
      versions: [1],
      input: { name: 'features', datatype: 'FP32', shape: [features] },
      classes: data.classNames.length,
      createdAtMs: 1_700_000_000_000,
      query: { labelledOnly: false },
      parent: null,
      splitShares: { train: 0.8, validation: 0.1, test: 0.1 },
      splits: { train: summary('train'), validation: summary('validation'), test: summary('test') },
      features: [],
    },
    files,
  );
  const dataset = join(dir, 'dataset');
  writeSnapshotFolder(dataset, manifest, files);
  const baseModel = join(dir, 'base.onnx');
  writeFileSync(baseModel, buildDemoModel().bytes);
  const hyperparameters = join(dir, 'hyperparameters.json');
  writeFileSync(hyperparameters, JSON.stringify(options.hyperparameters));
  return { dir, dataset, baseModel, hyperparameters, output: join(dir, 'output'), splits };
}

/** Accuracy of an ONNX classifier (input `features`, output `probabilities`) on a split's labelled rows. */
export async function onnxAccuracy(model: string | Uint8Array, split: SnapshotSplits[SplitName], features: number): Promise<number> {
  const session = typeof model === 'string' ? await ort.InferenceSession.create(model) : await ort.InferenceSession.create(model);
  try {
    const rows = split.ids.length;
    const { probabilities } = await session.run({ features: new ort.Tensor('float32', split.x, [rows, features]) });
    const p = probabilities!.data as Float32Array;
    const k = p.length / rows;
    let correct = 0;
    let labelled = 0;
    for (let r = 0; r < rows; r++) {
      if (split.y[r] === UNLABELLED) continue;
      labelled++;
      let best = 0;
      for (let c = 1; c < k; c++) if (p[r * k + c]! > p[r * k + best]!) best = c;
      if (BigInt(best) === split.y[r]) correct++;
    }
    return correct / labelled;
  } finally {
    await session.release();
  }
}
