import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { decodeNpy, encodeNpy, npyHeader } from '../common/datasets/npy.js';
import {
  readSnapshotFolder,
  sealManifest,
  snapshotFiles,
  splitOf,
  SPLITS,
  UNLABELLED,
  writeSnapshotFolder,
  type SnapshotSplits,
} from '../common/datasets/snapshot-layout.js';

/** Debian's python3 carries numpy with python3-torch (installed by .ci/run); pyenv's may not. */
function pythonWithNumpy(): string | undefined {
  for (const python of [process.env.DRIFTLINE_PYTHON, '/usr/bin/python3', 'python3']) {
    if (!python) continue;
    try {
      execFileSync(python, ['-c', 'import numpy'], { stdio: 'ignore' });
      return python;
    } catch {
      // try the next one
    }
  }
  return undefined;
}
const python = pythonWithNumpy();

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return error instanceof DriftlineError ? error.code : `not a DriftlineError: ${String(error)}`;
  }
  return undefined;
}

function sampleSplits(): SnapshotSplits {
  const splits = {} as SnapshotSplits;
  for (const [n, split] of SPLITS.entries()) {
    const rows = n + 2;
    splits[split] = {
      x: Float32Array.from({ length: rows * 6 }, (_, i) => i / 10 + n),
      y: BigInt64Array.from({ length: rows }, (_, i) => (i === 0 ? UNLABELLED : BigInt(i % 3))),
      ids: Array.from({ length: rows }, (_, i) => `${split}-sample-${i}`),
      devices: Array.from({ length: rows }, (_, i) => `dev-${i}`),
    };
  }
  return splits;
}

function sealed(splits: SnapshotSplits) {
  const files = snapshotFiles(splits, [2, 3]);
  const labelCounts = (split: keyof SnapshotSplits) => {
    const counts: Record<string, number> = {};
    for (const label of splits[split].y) if (label !== UNLABELLED) counts[String(label)] = (counts[String(label)] ?? 0) + 1;
    return counts;
  };
  const summary = (split: keyof SnapshotSplits) => ({
    rows: splits[split].ids.length,
    labelled: splits[split].ids.length - 1,
    labelCounts: labelCounts(split),
  });
  const manifest = sealManifest(
    {
      format: 'driftline-dataset/1',
      model: 'vibration',
      versions: [1],
      input: { name: 'features', datatype: 'FP32', shape: [2, 3] },
      classes: 3,
      createdAtMs: 1_700_000_000_000,
      query: { labelledOnly: false },
      parent: null,
      splitShares: { train: 0.8, validation: 0.1, test: 0.1 },
      splits: { train: summary('train'), validation: summary('validation'), test: summary('test') },
      features: [],
    },
    files,
  );
  return { manifest, files };
}

describe('dataset format - npy arrays and snapshot folders', () => {
  it('round-trips every dtype through encode and decode', () => {
    const arrays = [
      { dtype: 'float32' as const, shape: [2, 3], data: Float32Array.of(1, 2.5, -3, 4, 5, 6) },
      { dtype: 'int64' as const, shape: [3], data: BigInt64Array.of(-1n, 0n, 7n) },
      { dtype: 'int32' as const, shape: [0, 4], data: new Int32Array(0) },
      { dtype: 'uint8' as const, shape: [2], data: Uint8Array.of(1, 255) },
    ];
    for (const array of arrays) {
      const bytes = encodeNpy(array);
      expect((bytes.length - array.data.byteLength) % 64).toBe(0);
      const decoded = decodeNpy(bytes);
      expect(decoded.dtype).toBe(array.dtype);
      expect(decoded.shape).toEqual(array.shape);
      expect(Array.from(decoded.data as ArrayLike<number | bigint>)).toEqual(Array.from(array.data as ArrayLike<number | bigint>));
    }
  });

  it('refuses a header whose shape claims more data than the file holds, before allocating it', () => {
    const header = npyHeader('float32', [1_000_000_000, 1_000]);
    expect(codeOf(() => decodeNpy(Buffer.concat([header, Buffer.alloc(16)])))).toBe('DATASET_INVALID');
    expect(codeOf(() => decodeNpy(Buffer.from('not numpy at all')))).toBe('DATASET_INVALID');
  });

  it('puts a sample in the same split whatever else the snapshot holds, and near the configured shares', () => {
    const counts = { train: 0, validation: 0, test: 0 };
    for (let i = 0; i < 10_000; i++) counts[splitOf(`sample-${i}`)]++;
    expect(counts.train).toBeGreaterThan(7_700);
    expect(counts.train).toBeLessThan(8_300);
    expect(counts.test).toBeGreaterThan(850);
    expect(counts.test).toBeLessThan(1_150);
    expect(splitOf('sample-42')).toBe(splitOf('sample-42'));
  });

  it('writes a folder that reads back verified, and refuses a tampered file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dataset-'));
    const splits = sampleSplits();
    const { manifest, files } = sealed(splits);
    writeSnapshotFolder(dir, manifest, files);
    const read = readSnapshotFolder(dir);
    expect(read.manifest.id).toBe(manifest.id);
    expect(read.splits.test.ids).toEqual(splits.test.ids);
    expect(Array.from(read.splits.train.x)).toEqual(Array.from(splits.train.x));
    expect(sealed(sampleSplits()).manifest.id).toBe(manifest.id);

    writeFileSync(join(dir, 'train/ids.txt'), 'someone-else\n');
    expect(codeOf(() => readSnapshotFolder(dir))).toBe('DATASET_INVALID');
  });

  it.skipIf(!python)('is readable from Python with numpy alone, and Python computes the same split', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dataset-py-'));
    const { manifest, files } = sealed(sampleSplits());
    writeSnapshotFolder(dir, manifest, files);
    const script = [
      'import hashlib, json, sys, numpy as np',
      'd = sys.argv[1]',
      'm = json.load(open(d + "/dataset.json"))',
      'x = np.load(d + "/train/x.npy"); y = np.load(d + "/train/y.npy")',
      'ids = open(d + "/test/ids.txt").read().splitlines()',
      'frac = lambda s: (int.from_bytes(hashlib.sha256(("driftline-split/1:" + s).encode()).digest()[:8], "big") >> 11) / 2**53',
      'print(json.dumps({"x": list(x.shape), "dtype": str(x.dtype), "y": y.tolist(), "ids": ids, "sum": float(x.sum()), "frac": frac("sample-42")}))',
    ].join('\n');
    const out = JSON.parse(execFileSync(python!, ['-c', script, dir], { encoding: 'utf8' }));
    expect(out.x).toEqual([2, 2, 3]);
    expect(out.dtype).toBe('float32');
    expect(out.y).toEqual([-1, 1]);
    expect(out.ids).toEqual(['test-sample-0', 'test-sample-1', 'test-sample-2', 'test-sample-3']);
    expect(out.sum).toBeCloseTo(
      Array.from(sampleSplits().train.x).reduce((a, b) => a + b, 0),
      4,
    );
    const split = out.frac < 0.8 ? 'train' : out.frac < 0.9 ? 'validation' : 'test';
    expect(split).toBe(splitOf('sample-42'));
  });
});
