/**
 * The pure core of a dataset snapshot: captured samples (and a replayed parent's training
 * split) in, the driftline-dataset/1 manifest and the snapshot's tar out. Deterministic: the
 * same samples give the same bytes and so the same content-addressed id, whenever it runs.
 *
 * Built as the samples stream past, for speed (test/datasets.snapshot-determinism.test.ts pins
 * the bytes): each row's id, device, label and split are kept in columns and its input bytes
 * copied once into a staging buffer per row shape; at the end each split's rows are ordered by
 * id and written straight into the tar's data files (npy headers, rows, labels, id and device
 * lines), which are hashed in place for the manifest. No object per row, no array per sample.
 */
import { DriftlineError } from '../../common/errors.js';
import { npyHeader } from '../../common/datasets/npy.js';
import {
  DATASET_FORMAT,
  DEFAULT_SPLIT_SHARES,
  MAX_FEATURE_STATISTICS,
  sealManifest,
  SPLITS,
  splitterOf,
  type DatasetManifest,
  type SplitData,
  type SplitName,
} from '../../common/datasets/snapshot-layout.js';
import { snapshotTarHead, TAR_END_BYTES, tarEntryBytes, tarFileOrder, writeTarFileHeader } from '../../common/datasets/snapshot-tar.js';
import type { SampleRow } from './ports.js';

/** A replayed snapshot: its training split joins the new one's (so the retrained model does not forget it). */
export interface ReplayedParent {
  manifest: DatasetManifest;
  train: SplitData;
}

export interface SnapshotOptions {
  model: string;
  parent?: ReplayedParent | undefined;
  /** How the samples were selected, recorded in the manifest (relative terms only, so the id depends on content, not on when it ran). */
  query: Record<string, unknown>;
  createdAtMs: number;
  shares?: Readonly<Record<SplitName, number>> | undefined;
}

export interface SnapshotInput extends SnapshotOptions {
  samples: Iterable<SampleRow>;
}

export interface BuiltSnapshot {
  manifest: DatasetManifest;
  /** The tar's bytes, in order: its head (split folders, dataset.json), then its data files and end blocks. */
  tar: Buffer[];
  sizeBytes: number;
  /** Samples left out because their input shape is not the snapshot's (the most common one). */
  skippedShape: number;
}

/** Rows and row shape of a captured input: the first dimension is the batch, unless the input has a single dimension. */
export function rowsOf(shape: readonly number[]): { rows: number; rowShape: number[] } {
  return shape.length >= 2 ? { rows: shape[0]!, rowShape: shape.slice(1) } : { rows: 1, rowShape: [...shape] };
}

/** rowsOf(shape).rows without the row shape. */
export const rowCountOf = (shape: readonly number[]): number => (shape.length >= 2 ? shape[0]! : 1);

/** The label of a row without one (y.npy's -1). */
const NO_LABEL = -1;
/** Bytes of input rows staged per chunk. */
const STAGING_CHUNK_BYTES = 1 << 20;

/** The rows of one row shape, in arrival order: columns, and the rows' input bytes back to back in chunks (no copy to grow). */
class ShapeGroup {
  samples = 0;
  rows = 0;
  readonly ids: string[] = [];
  readonly devices: string[] = [];
  readonly labels: number[] = [];
  /** Row indexes per split, in SPLITS order. */
  readonly splitRows: number[][] = SPLITS.map(() => []);
  readonly versions = new Set<number>();
  /** The version last added to versions (most samples repeat it). */
  lastVersion = Number.NaN;
  /** The classes its samples imply (the model's answer, their labels). */
  classes = 0;
  readonly rowElements: number;
  private readonly rowBytes: number;
  private readonly rowsPerChunk: number;
  private readonly chunks: Buffer[] = [];

  constructor(
    readonly key: string,
    readonly rowShape: number[],
    readonly inputName: string,
  ) {
    this.rowElements = rowShape.reduce((a, b) => a * b, 1);
    this.rowBytes = this.rowElements * 4;
    this.rowsPerChunk = Math.max(1, Math.floor(STAGING_CHUNK_BYTES / this.rowBytes));
  }

  /** Appends a row; `input` holds its little-endian FP32 elements from byte `at`. */
  push(id: string, device: string, label: number, split: number, input: Uint8Array, at: number): void {
    const row = this.rows++;
    this.ids.push(id);
    this.devices.push(device);
    this.labels.push(label);
    this.splitRows[split]!.push(row);
    const { rowBytes, rowsPerChunk } = this;
    const inChunk = row % rowsPerChunk;
    // Only the bytes rows are copied to ever leave a chunk: it need not be zeroed.
    if (inChunk === 0) this.chunks.push(Buffer.allocUnsafeSlow(rowsPerChunk * rowBytes));
    const chunk = this.chunks[this.chunks.length - 1]!;
    if (at === 0 && input.length === rowBytes) chunk.set(input, inChunk * rowBytes);
    else chunk.set(input.subarray(at, at + rowBytes), inChunk * rowBytes);
  }

  /** Writes the rows, in `order`, from byte `at` of `out` (their bytes as they came: NaNs too). */
  copyRows(out: Buffer, at: number, order: readonly number[]): void {
    const { rowBytes, rowsPerChunk, chunks } = this;
    let to = at;
    for (const row of order) {
      const from = (row % rowsPerChunk) * rowBytes;
      chunks[(row / rowsPerChunk) | 0]!.copy(out, to, from, from + rowBytes);
      to += rowBytes;
    }
  }
}

/**
 * Builds a snapshot from samples added one at a time (in the order the store holds them). The
 * rows kept are those of the row shape most samples have (the first to reach that count wins a
 * tie), or the replayed parent's.
 */
export class SnapshotBuilder {
  private readonly splitOfId: (id: string) => number;
  private readonly groups = new Map<string, ShapeGroup>();
  private readonly shapes = new WeakMap<readonly number[], { group: ShapeGroup | undefined; rows: number }>();
  private best: ShapeGroup | undefined;
  private readonly parentGroup: ShapeGroup | undefined;
  private samples = 0;
  private lastShape: readonly number[] | undefined;
  private lastShapeInfo: { group: ShapeGroup | undefined; rows: number } | undefined;
  private finished = false;

  constructor(private readonly options: SnapshotOptions) {
    this.splitOfId = splitterOf(options.shares ?? DEFAULT_SPLIT_SHARES);
    const parent = options.parent?.manifest;
    if (parent) {
      const key = JSON.stringify(parent.input.shape);
      this.parentGroup = new ShapeGroup(key, [...parent.input.shape], parent.input.name);
      this.groups.set(key, this.parentGroup);
    }
  }

  add(sample: SampleRow): void {
    if (this.finished) throw new DriftlineError('INTERNAL', 'a finished snapshot builder takes no more samples');
    this.samples++;
    // Samples mostly share one shape array (the store hands one out per distinct shape): the last one is looked at first.
    let shape = sample.shape === this.lastShape ? this.lastShapeInfo : this.shapes.get(sample.shape);
    if (!shape) {
      const { rows, rowShape } = rowsOf(sample.shape);
      const key = JSON.stringify(rowShape);
      let group = this.groups.get(key);
      // Replaying, only the parent's row shape is kept.
      if (!group && !this.parentGroup) {
        group = new ShapeGroup(key, rowShape, sample.inputName);
        this.groups.set(key, group);
      }
      shape = { group, rows };
      this.shapes.set(sample.shape, shape);
    }
    this.lastShape = sample.shape;
    this.lastShapeInfo = shape;
    const { group, rows } = shape;
    if (!group) return;
    group.samples++;
    if (!this.best || group.samples > this.best.samples) this.best = group;
    const { input, label } = sample;
    if (input.length < rows * group.rowElements * 4)
      throw new DriftlineError(
        'DATASET_INVALID',
        `sample ${sample.id} holds ${input.length} input bytes, its shape ${JSON.stringify(sample.shape)} needs more`,
      );
    if (sample.version !== group.lastVersion) {
      group.versions.add(sample.version);
      group.lastVersion = sample.version;
    }
    group.classes = Math.max(group.classes, sample.classes, label === undefined ? 0 : label + 1);
    if (rows === 1) {
      group.push(sample.id, sample.deviceId, label ?? NO_LABEL, this.splitOfId(sample.id), input, 0);
      return;
    }
    // A label names one answered request: only a one-row request's row has it.
    for (let r = 0; r < rows; r++) {
      const id = `${sample.id}#${r}`;
      group.push(id, sample.deviceId, NO_LABEL, this.splitOfId(id), input, r * group.rowElements * 4);
    }
  }

  /** The snapshot of what was added; once (the parent's rows join the staged ones). */
  finish(): BuiltSnapshot {
    if (this.finished) throw new DriftlineError('INTERNAL', 'a snapshot builder is finished once');
    this.finished = true;
    const { options, parentGroup } = this;
    const chosen = parentGroup ?? this.best;
    if (!chosen) throw new DriftlineError('DATASET_EMPTY', `no captured sample of ${options.model} matches`);
    const parent = options.parent;
    if (parent) {
      // The parent's training rows stay training rows; a sample captured again (now perhaps labelled) counts once, as captured now.
      const seen = new Set(chosen.ids);
      const { train } = parent;
      const x = new Uint8Array(train.x.buffer, train.x.byteOffset, train.x.byteLength);
      const rowBytes = chosen.rowElements * 4;
      const trainIndex = SPLITS.indexOf('train');
      for (let i = 0; i < train.ids.length; i++) {
        const id = train.ids[i]!;
        if (seen.has(id)) continue;
        seen.add(id);
        chosen.push(id, train.devices[i]!, Number(train.y[i]!), trainIndex, x, i * rowBytes);
      }
    }
    const { rowShape, rowElements } = chosen;
    const rowBytes = rowElements * 4;

    interface File {
      path: string;
      size: number;
      fill(out: Buffer, at: number): void;
    }
    const plan: File[] = [];
    const summaries = {} as DatasetManifest['splits'];
    let trainX: { at: number; rows: number } | undefined;
    for (const [s, split] of SPLITS.entries()) {
      const order = byId(chosen.splitRows[s]!, chosen.ids);
      const n = order.length;
      summaries[split] = summaryOf(order, chosen.labels);
      const xHeader = npyHeader('float32', [n, ...rowShape]);
      const yHeader = npyHeader('int64', [n]);
      const ids = lines(
        order.map((row) => chosen.ids[row]!),
        'sample id',
      );
      const devices = lines(
        order.map((row) => chosen.devices[row]!),
        'device id',
      );
      plan.push(
        {
          path: `${split}/x.npy`,
          size: xHeader.length + n * rowBytes,
          fill: (out, at) => {
            out.set(xHeader, at);
            const data = at + xHeader.length;
            if (split === 'train') trainX = { at: data, rows: n };
            chosen.copyRows(out, data, order);
          },
        },
        {
          path: `${split}/y.npy`,
          size: yHeader.length + n * 8,
          fill: (out, at) => {
            out.set(yHeader, at);
            writeLabels(out, at + yHeader.length, order, chosen.labels);
          },
        },
        { path: `${split}/ids.txt`, size: Buffer.byteLength(ids), fill: (out, at) => void out.write(ids, at, 'utf8') },
        { path: `${split}/devices.txt`, size: Buffer.byteLength(devices), fill: (out, at) => void out.write(devices, at, 'utf8') },
      );
    }
    const byPath = new Map(plan.map((file) => [file.path, file]));
    const order = tarFileOrder(byPath.keys());
    const body = Buffer.alloc(order.reduce((n, path) => n + tarEntryBytes(byPath.get(path)!.size), 0) + TAR_END_BYTES);
    const files = new Map<string, Buffer>();
    let offset = 0;
    for (const path of order) {
      const file = byPath.get(path)!;
      writeTarFileHeader(body, offset, path, file.size);
      file.fill(body, offset + 512);
      files.set(path, body.subarray(offset + 512, offset + 512 + file.size));
      offset += tarEntryBytes(file.size);
    }
    const train = trainX!;
    const versions = new Set<number>(parent?.manifest.versions ?? []);
    for (const version of chosen.versions) versions.add(version);
    const manifest = sealManifest(
      {
        format: DATASET_FORMAT,
        model: options.model,
        versions: [...versions].sort((a, b) => a - b),
        input: { name: chosen.inputName, datatype: 'FP32', shape: rowShape },
        classes: Math.max(1, parent?.manifest.classes ?? 1, chosen.classes),
        createdAtMs: options.createdAtMs,
        query: options.query,
        parent: parent ? { id: parent.manifest.id } : null,
        splitShares: { ...(options.shares ?? DEFAULT_SPLIT_SHARES) },
        splits: summaries,
        features: featureStatistics(new Float32Array(body.buffer, body.byteOffset + train.at, train.rows * rowElements), train.rows, rowElements),
      },
      files,
    );
    const head = snapshotTarHead(manifest);
    return { manifest, tar: [head, body], sizeBytes: head.length + body.length, skippedShape: this.samples - chosen.samples };
  }
}

/** All the samples at hand: a SnapshotBuilder fed them in order. */
export function buildSnapshot(input: SnapshotInput): BuiltSnapshot {
  const builder = new SnapshotBuilder(input);
  for (const sample of input.samples) builder.add(sample);
  return builder.finish();
}

/** Rows ordered by their ids (UTF-16 code unit order, as `<` compares strings); stable. The store's order is mostly runs, which the sort exploits. */
function byId(rows: readonly number[], ids: readonly string[]): number[] {
  return [...rows].sort((a, b) => {
    const x = ids[a]!;
    const y = ids[b]!;
    return x < y ? -1 : x > y ? 1 : 0;
  });
}

/** `count` 32-bit words of `out` from byte `at` (4-aligned: tar entries start on 512-byte blocks, npy data on 64 bytes). */
function wordsOf(out: Buffer, at: number, count: number): Int32Array {
  if ((out.byteOffset + at) % 4 !== 0) throw new DriftlineError('INTERNAL', 'a snapshot array is not 4-byte aligned in its tar');
  return new Int32Array(out.buffer, out.byteOffset + at, count);
}

/** Labels as little-endian int64, in `order`. */
function writeLabels(out: Buffer, at: number, order: readonly number[], labels: readonly number[]): void {
  const words = wordsOf(out, at, order.length * 2);
  for (let i = 0; i < order.length; i++) {
    const label = labels[order[i]!]!;
    if ((label | 0) === label) {
      words[2 * i] = label;
      words[2 * i + 1] = label >> 31;
    } else {
      out.writeBigInt64LE(BigInt(label), at + 8 * i);
    }
  }
}

/** Rows, labelled rows and rows per class: the label balance (classes in order of first appearance, as JSON keeps them). */
function summaryOf(order: readonly number[], labels: readonly number[]): DatasetManifest['splits']['train'] {
  const counts = new Map<number, number>();
  let labelled = 0;
  for (const row of order) {
    const label = labels[row]!;
    if (label === NO_LABEL) continue;
    labelled++;
    counts.set(label, (counts.get(label) ?? 0) + 1);
  }
  const labelCounts: Record<string, number> = {};
  for (const [label, n] of counts) labelCounts[String(label)] = n;
  return { rows: order.length, labelled, labelCounts };
}

/** Lines of text, one per value; a value holding a line break is refused (it would read back as two). */
function lines(values: readonly string[], what: string): string {
  if (values.length === 0) return '';
  const text = `${values.join('\n')}\n`;
  let breaks = 0;
  for (let at = text.indexOf('\n'); at !== -1; at = text.indexOf('\n', at + 1)) breaks++;
  if (breaks !== values.length || text.includes('\r')) throw new DriftlineError('DATASET_INVALID', `a ${what} holds a line break`);
  return text;
}

/** Rows a pass of featureStatistics takes at once. */
const STATISTICS_BLOCK_ROWS = 256;

/** Mean, standard deviation, min and max of the first MAX_FEATURE_STATISTICS features, in float64. */
export function featureStatistics(x: Float32Array, rows: number, rowElements: number): DatasetManifest['features'] {
  if (rows === 0) return [];
  const n = Math.min(rowElements, MAX_FEATURE_STATISTICS);
  const sum = new Float64Array(n);
  const sumSquares = new Float64Array(n);
  const min = new Float64Array(n).fill(Infinity);
  const max = new Float64Array(n).fill(-Infinity);
  // A block of rows at a time, feature by feature, in registers: each feature's sums still add its
  // rows in row order (the same float64 sums, bit for bit), and the block stays in the cache.
  for (let first = 0; first < rows; first += STATISTICS_BLOCK_ROWS) {
    const end = Math.min(rows, first + STATISTICS_BLOCK_ROWS);
    for (let f = 0; f < n; f++) {
      let s = sum[f]!;
      let q = sumSquares[f]!;
      let lo = min[f]!;
      let hi = max[f]!;
      for (let at = first * rowElements + f, last = end * rowElements; at < last; at += rowElements) {
        const v = x[at]!;
        s += v;
        q += v * v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      sum[f] = s;
      sumSquares[f] = q;
      min[f] = lo;
      max[f] = hi;
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
