/**
 * The dataset snapshot format, `driftline-dataset/1`: what the control plane writes, what
 * trainers and the evaluation gate read, what `datasets export` hands to a user. A folder (or
 * a tar of it) readable from Python with numpy alone:
 *
 *   dataset.json              this manifest (schema below)
 *   <split>/x.npy             float32 [rows, ...input shape without the batch dimension]
 *   <split>/y.npy             int64 [rows]: the label's class index, -1 where unlabelled
 *   <split>/ids.txt           sample ids, one per line, in row order
 *   <split>/devices.txt       the device each sample came from, one per line, in row order
 *
 * for each split in SPLITS. A sample's split is fixed by a hash of its id (splitOf), so a
 * sample that is in one snapshot's test split is in the test split of every later snapshot.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { DriftlineError } from '../errors.js';
import { decodeNpy, encodeNpy } from './npy.js';
import { splitFraction } from './split-hash.js';

export const DATASET_FORMAT = 'driftline-dataset/1';
export const MANIFEST_FILE = 'dataset.json';
export const SPLITS = ['train', 'validation', 'test'] as const;
export type SplitName = (typeof SPLITS)[number];
export const UNLABELLED = -1n;

/** Shares of the hash space, in SPLITS order. */
export const DEFAULT_SPLIT_SHARES: Readonly<Record<SplitName, number>> = { train: 0.8, validation: 0.1, test: 0.1 };

/**
 * The split a sample belongs to: the first 8 bytes of sha256("driftline-split/1:" + id) read
 * as a fraction of 2^64. Pure and stable across snapshots, hosts and languages (Python:
 * int.from_bytes(hashlib.sha256(b"driftline-split/1:" + id.encode()).digest()[:8], "big") / 2**64).
 */
export function splitOf(sampleId: string, shares: Readonly<Record<SplitName, number>> = DEFAULT_SPLIT_SHARES): SplitName {
  return SPLITS[splitterOf(shares)(sampleId)]!;
}

/**
 * splitOf for many ids: the shares' bounds summed once, in SPLITS order (the same sums splitOf
 * compares with). Returns the split's index in SPLITS.
 */
export function splitterOf(shares: Readonly<Record<SplitName, number>> = DEFAULT_SPLIT_SHARES): (sampleId: string) => number {
  const upper: number[] = [];
  let sum = 0;
  for (const split of SPLITS) upper.push((sum += shares[split]));
  const last = SPLITS.length - 1;
  return (sampleId) => {
    const fraction = splitFraction(sampleId);
    for (let i = 0; i < last; i++) if (fraction < upper[i]!) return i;
    return last;
  };
}

const splitSummary = z.object({
  rows: z.number().int().nonnegative(),
  labelled: z.number().int().nonnegative(),
  /** Rows per class index (as a string key), labelled rows only. */
  labelCounts: z.record(z.string(), z.number().int().nonnegative()),
});

const featureStatistics = z.object({
  /** Index into the flattened per-row input. */
  index: z.number().int().nonnegative(),
  mean: z.number(),
  std: z.number(),
  min: z.number(),
  max: z.number(),
});

export const datasetManifestSchema = z.object({
  format: z.literal(DATASET_FORMAT),
  /** Content address: datasetIdOf(the manifest without id). */
  id: z.string().regex(/^[0-9a-f]{64}$/),
  model: z.string().min(1),
  /** The model versions whose captured samples it holds. */
  versions: z.array(z.number().int().positive()),
  input: z.object({ name: z.string(), datatype: z.literal('FP32'), shape: z.array(z.number().int().positive()) }),
  /** Class count of the model's output; labels are 0..classes-1. */
  classes: z.number().int().positive(),
  createdAtMs: z.number().int().nonnegative(),
  /** How it was selected, for the record. */
  query: z.record(z.string(), z.unknown()),
  /** A snapshot replayed into this one (the parent version's training data). */
  parent: z.object({ id: z.string() }).nullable(),
  splitShares: z.object({ train: z.number(), validation: z.number(), test: z.number() }),
  splits: z.object({ train: splitSummary, validation: splitSummary, test: splitSummary }),
  /** Per-feature statistics over the training split; at most the first MAX_FEATURE_STATISTICS features. */
  features: z.array(featureStatistics),
  /** sha256 of every data file, by its path inside the snapshot. */
  files: z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/)),
});
export type DatasetManifest = z.infer<typeof datasetManifestSchema>;

export const MAX_FEATURE_STATISTICS = 256;

export interface SplitData {
  /** Flattened rows: rows × elementCount(manifest.input.shape). */
  x: Float32Array;
  /** Class index per row, UNLABELLED where there is no label. */
  y: BigInt64Array;
  ids: string[];
  devices: string[];
}

export type SnapshotSplits = Record<SplitName, SplitData>;

/** The content address of a manifest: sha256 of its canonical JSON without id and createdAtMs. */
export function datasetIdOf(manifest: Omit<DatasetManifest, 'id'>): string {
  const { createdAtMs: _created, ...content } = manifest as DatasetManifest;
  delete (content as Partial<DatasetManifest>).id;
  return createHash('sha256').update(canonicalJson(content)).digest('hex');
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** The data files of a snapshot, by path inside it. */
export function snapshotFiles(splits: SnapshotSplits, rowShape: readonly number[]): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  for (const split of SPLITS) {
    const data = splits[split];
    const rows = data.ids.length;
    if (data.y.length !== rows || data.devices.length !== rows || data.x.length !== rows * rowShape.reduce((a, b) => a * b, 1)) {
      throw new DriftlineError('DATASET_INVALID', `the ${split} split's x, y, ids and devices do not hold the same number of rows (${rows})`);
    }
    files.set(`${split}/x.npy`, encodeNpy({ dtype: 'float32', shape: [rows, ...rowShape], data: data.x }));
    files.set(`${split}/y.npy`, encodeNpy({ dtype: 'int64', shape: [rows], data: data.y }));
    files.set(`${split}/ids.txt`, Buffer.from(lines(data.ids, 'sample id')));
    files.set(`${split}/devices.txt`, Buffer.from(lines(data.devices, 'device id')));
  }
  return files;
}

function lines(values: readonly string[], what: string): string {
  for (const value of values) {
    if (value.includes('\n') || value.includes('\r')) throw new DriftlineError('DATASET_INVALID', `a ${what} holds a line break`);
  }
  return values.length === 0 ? '' : `${values.join('\n')}\n`;
}

/** Fills in files and id; the result is what dataset.json holds. */
export function sealManifest(manifest: Omit<DatasetManifest, 'id' | 'files'>, files: ReadonlyMap<string, Uint8Array>): DatasetManifest {
  const hashes: Record<string, string> = {};
  for (const [path, bytes] of [...files].sort(([a], [b]) => (a < b ? -1 : 1))) hashes[path] = sha256(bytes);
  const withFiles = { ...manifest, files: hashes };
  return datasetManifestSchema.parse({ ...withFiles, id: datasetIdOf(withFiles) });
}

export function writeSnapshotFolder(dir: string, manifest: DatasetManifest, files: ReadonlyMap<string, Uint8Array>): void {
  for (const split of SPLITS) mkdirSync(join(dir, split), { recursive: true });
  for (const [path, bytes] of files) writeFileSync(join(dir, path), bytes);
  writeFileSync(join(dir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
}

/** Reads and verifies a snapshot folder: the manifest's schema, every file's sha256, the id, the row counts. */
export function readSnapshotFolder(dir: string): { manifest: DatasetManifest; splits: SnapshotSplits } {
  return readSnapshot((path) => readFileSync(join(dir, path)), dir);
}

/** readSnapshotFolder over files held in memory (a snapshot's tar, unpacked), by path inside the snapshot. */
export function readSnapshotFiles(files: ReadonlyMap<string, Uint8Array>, where = 'snapshot'): { manifest: DatasetManifest; splits: SnapshotSplits } {
  return readSnapshot((path) => {
    const bytes = files.get(path);
    if (!bytes) throw new DriftlineError('DATASET_INVALID', `${where} has no ${path}`);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }, where);
}

function readSnapshot(readFile: (path: string) => Buffer, dir: string): { manifest: DatasetManifest; splits: SnapshotSplits } {
  let raw: unknown;
  try {
    raw = JSON.parse(readFile(MANIFEST_FILE).toString('utf8'));
  } catch (cause) {
    throw new DriftlineError('DATASET_INVALID', `${join(dir, MANIFEST_FILE)} cannot be read as JSON`, { cause });
  }
  const parsed = datasetManifestSchema.safeParse(raw);
  if (!parsed.success)
    throw new DriftlineError('DATASET_INVALID', `${join(dir, MANIFEST_FILE)} is not a ${DATASET_FORMAT} manifest: ${parsed.error.issues[0]?.message}`);
  const manifest = parsed.data;
  if (datasetIdOf(manifest) !== manifest.id) throw new DriftlineError('DATASET_INVALID', `${dir}: the manifest's id does not match its content`);
  const rowElements = manifest.input.shape.reduce((a, b) => a * b, 1);
  const read = (path: string): Buffer => {
    const bytes = readFile(path);
    if (sha256(bytes) !== manifest.files[path]) throw new DriftlineError('DATASET_INVALID', `${join(dir, path)} does not match the sha256 in ${MANIFEST_FILE}`);
    return bytes;
  };
  const textLines = (text: string): string[] => (text.length === 0 ? [] : text.replace(/\n$/, '').split('\n'));
  const splits = {} as SnapshotSplits;
  for (const split of SPLITS) {
    const x = decodeNpy(read(`${split}/x.npy`), `${split}/x.npy`);
    const y = decodeNpy(read(`${split}/y.npy`), `${split}/y.npy`);
    const ids = textLines(read(`${split}/ids.txt`).toString('utf8'));
    const devices = textLines(read(`${split}/devices.txt`).toString('utf8'));
    const rows = manifest.splits[split].rows;
    if (
      x.dtype !== 'float32' ||
      y.dtype !== 'int64' ||
      x.data.length !== rows * rowElements ||
      y.data.length !== rows ||
      ids.length !== rows ||
      devices.length !== rows
    ) {
      throw new DriftlineError('DATASET_INVALID', `${dir}: the ${split} split does not hold ${rows} rows of float32 x and int64 y as its manifest says`);
    }
    splits[split] = { x: x.data as Float32Array, y: y.data as BigInt64Array, ids, devices };
  }
  return { manifest, splits };
}
