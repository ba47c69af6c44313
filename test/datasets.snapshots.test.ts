/**
 * Dataset snapshots through the real DatasetService over a real SQLite file fed by the
 * telemetry commit, and a real content-addressed folder for the tars.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { x as extractTar } from 'tar';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { matchesSelector, parseSelector } from '../common/ids.js';
import { readSnapshotFolder, SPLITS, splitOf } from '../common/datasets/snapshot-layout.js';
import type { TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { DatasetService } from '../control-plane/datasets/dataset-service.js';
import { snapshotBlobsOf } from '../control-plane/datasets/wiring.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { SqliteDatasetRepository } from '../control-plane/store/sqlite/dataset-repository.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { SqliteSampleRepository } from '../control-plane/store/sqlite/sample-repository.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';
import { labelRecord, sampleRecord, T0 } from './helpers/sample-records.js';

const DAY = 86_400_000;
const DEVICE_LABELS: Record<string, Record<string, string>> = { 'edge-a': { cohort: 'north' }, 'edge-b': { cohort: 'south' } };

/** Debian's python3 carries numpy (installed by .ci/run); pyenv's may not. */
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

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (error) {
    return error instanceof DriftlineError ? error.code : `not a DriftlineError: ${String(error)}`;
  }
  return undefined;
}

describe('dataset snapshots', () => {
  let dir: string;
  let db: Database;
  let clock: ManualClock;
  let telemetry: SqliteTelemetryRepository;
  let samples: SqliteSampleRepository;
  let service: DatasetService;
  const trainedOn = new Map<number, string>();
  const seqs = new Map<string, number>();

  /** Captured samples (and, for some, labels) from a device, committed as ingest does. */
  const capture = async (device: string, count: number, options: { labelEvery?: number; timeMs?: number } = {}): Promise<void> => {
    const records: TelemetryRecord[] = [];
    for (let i = 0; i < count; i++) {
      const seq = (seqs.get(device) ?? 0) + 1;
      seqs.set(device, seq);
      records.push(sampleRecord(seq, { requestId: `${device}-r${seq}`, timeMs: options.timeMs ?? clock.now() }));
    }
    await telemetry.commit(device, records, clock.now());
    const labels: TelemetryRecord[] = [];
    records.forEach((r, i) => {
      if (options.labelEvery && i % options.labelEvery === 0) {
        const seq = (seqs.get(device) ?? 0) + 1;
        seqs.set(device, seq);
        labels.push(labelRecord(seq, `${device}-r${r.seq}`, r.seq % 3));
      }
    });
    if (labels.length) await telemetry.commit(device, labels, clock.now());
  };

  const make = (maxRows = 100_000): DatasetService =>
    new DatasetService({
      samples,
      policies: samples,
      repository: new SqliteDatasetRepository(db),
      blobs: snapshotBlobsOf(new ArtifactStore(join(dir, 'datasets'))),
      devices: {
        deviceIds: async (selector) =>
          new Set(
            Object.entries(DEVICE_LABELS)
              .filter(([, labels]) => matchesSelector(labels, parseSelector(selector)))
              .map(([id]) => id),
          ),
      },
      lineage: { versionsOf: async () => [1], trainingDatasetOf: async (_model, version) => trainedOn.get(version) },
      clock,
      maxRows,
    });

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-snapshots-'));
    clock = new ManualClock(T0);
    db = openDatabase(join(dir, 'control-plane.db'));
    samples = new SqliteSampleRepository(db, { maxAgeMs: 30 * DAY, maxBytes: 1 << 30, maxTensorBytes: 1 << 20 });
    telemetry = new SqliteTelemetryRepository(db, samples.recordRoutes());
    service = make();
    trainedOn.clear();
    seqs.clear();
  });
  afterEach(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps a sample in the same split in every later snapshot: one in a test split never lands in a later training split', async () => {
    await capture('edge-a', 300, { labelEvery: 2 });
    const first = await service.create({ model: 'vibration' });
    clock.advance(DAY);
    await capture('edge-a', 300, { labelEvery: 1 });
    await capture('edge-b', 100);
    const second = await service.create({ model: 'vibration' });
    expect(second.id).not.toBe(first.id);
    const ids = async (id: string) => {
      const out = join(dir, `out-${id}`);
      mkdirSync(out);
      writeFileSync(join(dir, `${id}.tar`), await service.readTar(id));
      await extractTar({ file: join(dir, `${id}.tar`), cwd: out });
      return readSnapshotFolder(out).splits;
    };
    const a = await ids(first.id);
    const b = await ids(second.id);
    expect(a.test.ids.length).toBeGreaterThan(10);
    const laterTrain = new Set(b.train.ids);
    const laterTest = new Set(b.test.ids);
    for (const id of a.test.ids) {
      expect(laterTest.has(id)).toBe(true);
      expect(laterTrain.has(id)).toBe(false);
    }
    for (const split of SPLITS) for (const id of b[split].ids) expect(splitOf(id)).toBe(split);
    expect(second.rows).toBe(700);
  });

  it('labelled only, selector and since select what they say', async () => {
    await capture('edge-a', 40, { labelEvery: 4, timeMs: T0 - 10 * DAY });
    await capture('edge-b', 30, { labelEvery: 3 });
    const labelled = await service.create({ model: 'vibration', labelledOnly: true });
    expect(labelled.rows).toBe(10 + 10);
    expect(SPLITS.reduce((n, s) => n + labelled.manifest.splits[s].labelled, 0)).toBe(20);
    const south = await service.create({ model: 'vibration', selector: 'cohort=south' });
    expect(south.rows).toBe(30);
    const manifestDevices = async (id: string) => {
      const out = join(dir, id);
      mkdirSync(out);
      writeFileSync(join(dir, `${id}.tar`), await service.readTar(id));
      await extractTar({ file: join(dir, `${id}.tar`), cwd: out });
      return new Set(SPLITS.flatMap((s) => readSnapshotFolder(out).splits[s].devices));
    };
    expect(await manifestDevices(south.id)).toEqual(new Set(['edge-b']));
    const recent = await service.create({ model: 'vibration', sinceMsAgo: 7 * DAY });
    expect(recent.rows).toBe(30);
    expect(recent.manifest.query).toMatchObject({ sinceMsAgo: 7 * DAY, selector: '', labelledOnly: false });
    expect(await codeOf(service.create({ model: 'vibration', selector: 'cohort=nowhere' }))).toBe('DATASET_EMPTY');
  });

  it('gives the same content the same id, stored once, whenever it is created', async () => {
    await capture('edge-a', 50, { labelEvery: 2 });
    const first = await service.create({ model: 'vibration' });
    clock.advance(3_600_000);
    const again = await service.create({ model: 'vibration' });
    expect(again).toEqual(first);
    expect((await service.list({ limit: 10 })).datasets).toHaveLength(1);
    expect(await service.getDataset(first.id)).toEqual({ id: first.id, sha256: first.sha256, sizeBytes: first.sizeBytes, manifest: first.manifest });
    expect((await service.getDatasetBySha256(first.sha256))?.id).toBe(first.id);
  });

  it('records label balance and feature statistics over the training split', async () => {
    await capture('edge-a', 90, { labelEvery: 1 });
    const { manifest } = await service.create({ model: 'vibration' });
    const train = manifest.splits.train;
    expect(Object.values(train.labelCounts).reduce((a, b) => a + b, 0)).toBe(train.labelled);
    expect(Object.keys(train.labelCounts).sort()).toEqual(['0', '1', '2']);
    expect(manifest.features).toHaveLength(8);
    expect(manifest.features[0]!.min).toBeGreaterThanOrEqual(1);
    expect(manifest.features[0]!.max).toBeLessThanOrEqual(90);
    expect(manifest.input).toEqual({ name: 'features', datatype: 'FP32', shape: [8] });
    expect(manifest.classes).toBe(3);
  });

  it('exports a tar that extracts into a folder readSnapshotFolder verifies and numpy reads', async () => {
    await capture('edge-a', 60, { labelEvery: 2 });
    const record = await service.create({ model: 'vibration' });
    const tar = await service.readTar(record.id);
    // Deterministic: the same snapshot's tar is the same bytes.
    expect(tar.length).toBe(record.sizeBytes);
    const out = join(dir, 'export');
    mkdirSync(out);
    writeFileSync(join(dir, 'export.tar'), tar);
    await extractTar({ file: join(dir, 'export.tar'), cwd: out, strict: true });
    const { manifest, splits } = readSnapshotFolder(out);
    expect(manifest.id).toBe(record.id);
    const python = pythonWithNumpy();
    if (!python) {
      console.warn('skipped the numpy read: no python3 with numpy here (CI installs Debian python3-numpy)');
      return;
    }
    const script = `import json, numpy as np
m = json.load(open("${out}/dataset.json"))
x = np.load("${out}/train/x.npy"); y = np.load("${out}/train/y.npy")
print(json.dumps({"shape": list(x.shape), "dtype": str(x.dtype), "y": str(y.dtype), "first": float(x[0][0]), "rows": m["splits"]["train"]["rows"]}))`;
    const read = JSON.parse(execFileSync(python, ['-c', script]).toString());
    expect(read).toEqual({ shape: [splits.train.ids.length, 8], dtype: 'float32', y: 'int64', first: splits.train.x[0], rows: splits.train.ids.length });
  });

  it("replays the parent version's training split into the new snapshot's", async () => {
    await capture('edge-a', 100, { labelEvery: 1 });
    const parent = await service.create({ model: 'vibration', selector: 'cohort=north' });
    trainedOn.set(1, parent.id);
    await capture('edge-b', 50, { labelEvery: 1 });
    const child = await service.create({ model: 'vibration', selector: 'cohort=south', replayParent: true });
    expect(child.manifest.parent).toEqual({ id: parent.id });
    expect(child.manifest.splits.train.rows).toBe(
      parent.manifest.splits.train.rows + (await service.create({ model: 'vibration', selector: 'cohort=south' })).manifest.splits.train.rows,
    );
    expect(child.manifest.splits.test.rows).toBeLessThan(50);
    expect(await codeOf(service.create({ model: 'vibration', replayParentId: 'f'.repeat(64) }))).toBe('DATASET_PARENT_NOT_FOUND');
  });

  it('refuses a snapshot over datasets.maxRows with DATASET_TOO_LARGE', async () => {
    await capture('edge-a', 30);
    expect(await codeOf(make(29).create({ model: 'vibration' }))).toBe('DATASET_TOO_LARGE');
    expect((await make(30).create({ model: 'vibration' })).rows).toBe(30);
  });

  it('refuses datasets of a model marked "no raw capture", naming federated learning', async () => {
    await capture('edge-a', 10);
    await samples.setRawCapture('vibration', false, clock.now());
    const refusal = await service.create({ model: 'vibration' }).catch((err: unknown) => err as DriftlineError);
    expect(refusal).toBeInstanceOf(DriftlineError);
    expect((refusal as DriftlineError).code).toBe('DATASET_RAW_CAPTURE_OFF');
    expect((refusal as DriftlineError).message).toMatch(/federated learning/);
  });
});
