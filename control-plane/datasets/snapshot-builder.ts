/**
 * The pure core of a dataset snapshot: captured samples (and a replayed parent's training
 * split) in, the driftline-dataset/1 manifest and data files out. Deterministic: the same
 * samples give the same bytes and so the same content-addressed id, whenever it runs.
 */
import { DriftlineError } from '../../common/errors.js';
import {
  DATASET_FORMAT,
  DEFAULT_SPLIT_SHARES,
  MAX_FEATURE_STATISTICS,
  sealManifest,
  snapshotFiles,
  SPLITS,
  splitOf,
  UNLABELLED,
  type DatasetManifest,
  type SnapshotSplits,
  type SplitData,
  type SplitName,
} from '../../common/datasets/snapshot-layout.js';
import type { SampleRow } from './ports.js';

/** A replayed snapshot: its training split joins the new one's (so the retrained model does not forget it). */
export interface ReplayedParent {
  manifest: DatasetManifest;
  train: SplitData;
}

export interface SnapshotInput {
  model: string;
  samples: readonly SampleRow[];
  parent?: ReplayedParent | undefined;
  /** How the samples were selected, recorded in the manifest (relative terms only, so the id depends on content, not on when it ran). */
  query: Record<string, unknown>;
  createdAtMs: number;
  shares?: Readonly<Record<SplitName, number>> | undefined;
}

export interface BuiltSnapshot {
  manifest: DatasetManifest;
  files: Map<string, Buffer>;
  /** Samples left out because their input shape is not the snapshot's (the most common one). */
  skippedShape: number;
}

/** One dataset row: a row of a captured input. */
interface Row {
  id: string;
  device: string;
  label: bigint;
  /** Where its elements are: a sample's input and the row's offset in it. */
  source: Float32Array;
  offset: number;
}

/** Rows and row shape of a captured input: the first dimension is the batch, unless the input has a single dimension. */
export function rowsOf(shape: readonly number[]): { rows: number; rowShape: number[] } {
  return shape.length >= 2 ? { rows: shape[0]!, rowShape: shape.slice(1) } : { rows: 1, rowShape: [...shape] };
}

/** The row shape most samples have (the first seen wins a tie); the parent's when replaying. */
function snapshotRowShape(samples: readonly SampleRow[], parent: ReplayedParent | undefined): { key: string; shape: number[]; inputName: string } | undefined {
  if (parent) return { key: JSON.stringify(parent.manifest.input.shape), shape: [...parent.manifest.input.shape], inputName: parent.manifest.input.name };
  const counts = new Map<string, { n: number; shape: number[]; inputName: string }>();
  let best: { key: string; n: number; shape: number[]; inputName: string } | undefined;
  for (const sample of samples) {
    const { rowShape } = rowsOf(sample.shape);
    const key = JSON.stringify(rowShape);
    const entry = counts.get(key) ?? { n: 0, shape: rowShape, inputName: sample.inputName };
    entry.n++;
    counts.set(key, entry);
    if (!best || entry.n > best.n) best = { key, ...entry };
  }
  return best && { key: best.key, shape: best.shape, inputName: best.inputName };
}

export function buildSnapshot(input: SnapshotInput): BuiltSnapshot {
  const shares = input.shares ?? DEFAULT_SPLIT_SHARES;
  const { samples, parent } = input;
  const chosen = snapshotRowShape(samples, parent);
  if (!chosen) throw new DriftlineError('DATASET_EMPTY', `no captured sample of ${input.model} matches`);
  const rowElements = chosen.shape.reduce((a, b) => a * b, 1);
  const bySplit: Record<SplitName, Row[]> = { train: [], validation: [], test: [] };
  const ids = new Set<string>();
  const versions = new Set<number>(parent?.manifest.versions ?? []);
  let classes = Math.max(1, parent?.manifest.classes ?? 1);
  let skippedShape = 0;
  for (const sample of samples) {
    const { rows, rowShape } = rowsOf(sample.shape);
    if (JSON.stringify(rowShape) !== chosen.key) {
      skippedShape++;
      continue;
    }
    versions.add(sample.version);
    classes = Math.max(classes, sample.classes, sample.label === undefined ? 0 : sample.label + 1);
    for (let r = 0; r < rows; r++) {
      // A label names one answered request: only a one-row request's row has it.
      const id = rows === 1 ? sample.id : `${sample.id}#${r}`;
      const label = rows === 1 && sample.label !== undefined ? BigInt(sample.label) : UNLABELLED;
      ids.add(id);
      bySplit[splitOf(id, shares)].push({ id, device: sample.deviceId, label, source: sample.input, offset: r * rowElements });
    }
  }
  if (parent) {
    // The parent's training rows stay training rows; a sample captured again (now perhaps labelled) counts once, as captured now.
    const { train } = parent;
    for (let i = 0; i < train.ids.length; i++) {
      const id = train.ids[i]!;
      if (ids.has(id)) continue;
      ids.add(id);
      bySplit.train.push({ id, device: train.devices[i]!, label: train.y[i]!, source: train.x, offset: i * rowElements });
    }
  }
  const splits = {} as SnapshotSplits;
  for (const split of SPLITS) splits[split] = splitData(bySplit[split], rowElements);
  const files = snapshotFiles(splits, chosen.shape);
  const manifest = sealManifest(
    {
      format: DATASET_FORMAT,
      model: input.model,
      versions: [...versions].sort((a, b) => a - b),
      input: { name: chosen.inputName, datatype: 'FP32', shape: chosen.shape },
      classes,
      createdAtMs: input.createdAtMs,
      query: input.query,
      parent: parent ? { id: parent.manifest.id } : null,
      splitShares: { ...shares },
      splits: { train: summaryOf(splits.train), validation: summaryOf(splits.validation), test: summaryOf(splits.test) },
      features: featureStatistics(splits.train.x, splits.train.ids.length, rowElements),
    },
    files,
  );
  return { manifest, files, skippedShape };
}

function splitData(rows: Row[], rowElements: number): SplitData {
  rows.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const x = new Float32Array(rows.length * rowElements);
  const y = new BigInt64Array(rows.length);
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i]!;
    x.set(row.source.subarray(row.offset, row.offset + rowElements), i * rowElements);
    y[i] = row.label;
  }
  return { x, y, ids: rows.map((r) => r.id), devices: rows.map((r) => r.device) };
}

/** Rows, labelled rows and rows per class: the label balance. */
export function summaryOf(split: SplitData): DatasetManifest['splits']['train'] {
  const labelCounts: Record<string, number> = {};
  let labelled = 0;
  for (const label of split.y) {
    if (label === UNLABELLED) continue;
    labelled++;
    const key = String(label);
    labelCounts[key] = (labelCounts[key] ?? 0) + 1;
  }
  return { rows: split.ids.length, labelled, labelCounts };
}

/** Mean, standard deviation, min and max of the first MAX_FEATURE_STATISTICS features, in float64. */
export function featureStatistics(x: Float32Array, rows: number, rowElements: number): DatasetManifest['features'] {
  if (rows === 0) return [];
  const n = Math.min(rowElements, MAX_FEATURE_STATISTICS);
  const sum = new Float64Array(n);
  const sumSquares = new Float64Array(n);
  const min = new Float64Array(n).fill(Infinity);
  const max = new Float64Array(n).fill(-Infinity);
  for (let r = 0; r < rows; r++) {
    const base = r * rowElements;
    for (let f = 0; f < n; f++) {
      const v = x[base + f]!;
      sum[f]! += v;
      sumSquares[f]! += v * v;
      if (v < min[f]!) min[f] = v;
      if (v > max[f]!) max[f] = v;
    }
  }
  // A non-finite input (NaN, Infinity) would make the manifest's JSON unreadable: such statistics are reported as 0.
  const finite = (v: number): number => (Number.isFinite(v) ? v : 0);
  return Array.from({ length: n }, (_, f) => {
    const mean = sum[f]! / rows;
    return {
      index: f,
      mean: finite(mean),
      std: finite(Math.sqrt(Math.max(0, sumSquares[f]! / rows - mean * mean))),
      min: finite(min[f]!),
      max: finite(max[f]!),
    };
  });
}
