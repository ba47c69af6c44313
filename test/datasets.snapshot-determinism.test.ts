/**
 * The snapshot format pinned: a fixed capture, fed through the telemetry commit into a real
 * SQLite file, gives snapshots whose content-addressed ids and tar sha256s are the literals
 * below. They were computed by the first DatasetService (rows as objects, encodeNpy,
 * snapshotTar); any later change to how a snapshot is built must give the same bytes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { readSnapshotFiles } from '../common/datasets/snapshot-layout.js';
import { untarSnapshot } from '../common/datasets/snapshot-tar.js';
import { Stream, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { DatasetService } from '../control-plane/datasets/dataset-service.js';
import { featureStatistics } from '../control-plane/datasets/snapshot-builder.js';
import { snapshotBlobsOf } from '../control-plane/datasets/wiring.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { SqliteDatasetRepository } from '../control-plane/store/sqlite/dataset-repository.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { SqliteSampleRepository } from '../control-plane/store/sqlite/sample-repository.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';
import { labelRecord, T0 } from './helpers/sample-records.js';

const DAY = 86_400_000;

/** A captured sample of any shape and version; features from a fixed generator. */
function captured(seq: number, shape: number[], version: number, features: (i: number) => number, classes = 3): TelemetryRecord {
  const n = shape.reduce((a, b) => a * b, 1);
  return TelemetryRecord.fromPartial({
    boot: 1,
    seq,
    timeMs: T0 + seq,
    stream: Stream.STREAM_SAMPLES,
    body: {
      $case: 'sample',
      value: {
        model: 'vibration',
        version,
        reason: 'sampled',
        requestId: `r${seq}`,
        inputs: [{ name: 'features', datatype: 'FP32', shape, data: Buffer.from(Float32Array.from({ length: n }, (_, i) => features(i)).buffer) }],
        outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, classes], data: Buffer.from(new Float32Array(classes).fill(1 / classes).buffer) }],
      },
    },
  });
}

describe('dataset snapshots - pinned format', () => {
  let dir: string;
  let db: Database;
  let clock: ManualClock;
  let service: DatasetService;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-pinned-'));
    clock = new ManualClock(T0);
    db = openDatabase(join(dir, 'control-plane.db'));
    const samples = new SqliteSampleRepository(db, { maxAgeMs: 30 * DAY, maxBytes: 1 << 30, maxTensorBytes: 1 << 20 });
    const telemetry = new SqliteTelemetryRepository(db, samples.recordRoutes());
    let state = 7;
    const random = (): number => ((state = (state * 1_103_515_245 + 12345) >>> 0) / 2 ** 32) * 10 - 5;
    for (const device of ['edge-b', 'edge-a', 'edge-10', 'edge-9']) {
      const records: TelemetryRecord[] = [];
      let seq = 0;
      for (let i = 0; i < 60; i++) {
        seq++;
        // Mostly one row of 8, some batches of three rows, some unbatched, a few of another shape (left out), a NaN and a second version.
        const shape = i % 11 === 5 ? [3, 8] : i % 13 === 7 ? [8] : i % 17 === 3 ? [1, 4] : [1, 8];
        const version = i % 5 === 0 ? 2 : 1;
        records.push(captured(seq, shape, version, (f) => (i === 42 && f === 2 ? NaN : random()), i % 19 === 0 ? 4 : 3));
      }
      await telemetry.commit(device, records, clock.now());
      const labels: TelemetryRecord[] = [];
      for (let i = 1; i <= 60; i += 2) labels.push(labelRecord(++seq, `r${i}`, i % 3));
      labels.push(labelRecord(++seq, 'r2', 3));
      await telemetry.commit(device, labels, clock.now());
    }
    const datasets = new SqliteDatasetRepository(db);
    service = new DatasetService({
      samples,
      policies: samples,
      repository: datasets,
      blobs: snapshotBlobsOf(new ArtifactStore(join(dir, 'datasets'))),
      devices: { deviceIds: async (selector) => new Set(selector === 'cohort=north' ? ['edge-a', 'edge-10'] : ['edge-b']) },
      lineage: { versionsOf: async () => [1, 2], trainingDatasetOf: async () => undefined },
      clock,
      maxRows: 100_000,
    });
  });
  afterEach(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives the ids and tar bytes the first snapshot builder gave', async () => {
    const all = await service.create({ model: 'vibration' });
    const labelled = await service.create({ model: 'vibration', labelledOnly: true, selector: 'cohort=north' });
    const replay = await service.create({ model: 'vibration', version: 2, replayParentId: labelled.id });
    const seen = [all, labelled, replay].map((r) => ({ id: r.id, sha256: r.sha256, sizeBytes: r.sizeBytes, rows: r.rows }));
    const read = readSnapshotFiles(untarSnapshot(await service.readTar(all.id), all.sizeBytes));
    expect(read.manifest).toEqual(all.manifest);
    expect(seen).toEqual([
      {
        id: '25e9374436496d92ba43c6f9cf1b44afb9d0a5c837b9120c22047ffb47b18f56',
        sha256: '3793ef62e55cd504728746b8b92e9eefd6667f7675df8fa27b0c35717c39f469',
        sizeBytes: 32768,
        rows: 268,
      },
      {
        id: '7c8f3611bab36dc136710eec678c98ccefe35032e8124dfc0a16c3cc98c54651',
        sha256: '90aea5944b95d174d3578c9a0602e916eebded1af447ae7b04b3e7734da5713b',
        sizeBytes: 21504,
        rows: 68,
      },
      {
        id: '3aa5b814dbe724ffeea0b382624c179e49e0c9482db74b3810334e7262c5025b',
        sha256: '181e1744ed22c4735036b8824436318e4f965a5e6be3eead29768b6a092cb24a',
        sizeBytes: 23552,
        rows: 101,
      },
    ]);
    expect(all.manifest.splits.train.labelCounts).toEqual({ '0': 31, '1': 31, '2': 29, '3': 2 });
    expect(all.manifest.classes).toBe(4);
    expect(all.manifest.versions).toEqual([1, 2]);
    expect(replay.manifest.parent).toEqual({ id: labelled.id });
  });

  it('computes feature statistics bit for bit as a row-by-row float64 sum would, over many blocks of rows', () => {
    const rows = 1_337;
    const rowElements = 300;
    let state = 99;
    const x = Float32Array.from({ length: rows * rowElements }, () => ((state = (state * 1_103_515_245 + 12345) >>> 0) / 2 ** 32) * 1e3 - 400);
    x[5 * rowElements + 7] = NaN;
    x[9 * rowElements + 8] = Infinity;
    const n = 256;
    const sum = new Float64Array(n);
    const squares = new Float64Array(n);
    const min = new Float64Array(n).fill(Infinity);
    const max = new Float64Array(n).fill(-Infinity);
    for (let r = 0; r < rows; r++) {
      for (let f = 0; f < n; f++) {
        const v = x[r * rowElements + f]!;
        sum[f]! += v;
        squares[f]! += v * v;
        if (v < min[f]!) min[f] = v;
        if (v > max[f]!) max[f] = v;
      }
    }
    const finite = (v: number): number => (Number.isFinite(v) ? v : 0);
    const expected = Array.from({ length: n }, (_, f) => {
      const mean = sum[f]! / rows;
      return {
        index: f,
        mean: finite(mean),
        std: finite(Math.sqrt(Math.max(0, squares[f]! / rows - mean * mean))),
        min: finite(min[f]!),
        max: finite(max[f]!),
      };
    });
    expect(featureStatistics(x, rows, rowElements)).toEqual(expected);
  });

  it("scans across pages with each sample's own input name and shape, where they change at a page's edge too", async () => {
    const samples = new SqliteSampleRepository(db, { maxAgeMs: 30 * DAY, maxBytes: 1 << 30, maxTensorBytes: 1 << 20 });
    const telemetry = new SqliteTelemetryRepository(db, samples.recordRoutes());
    // A page is 4096 rows: shapes and names change just before, at and after its edges.
    const shapeOf = (i: number): number[] => ([4095, 4096, 4097, 8192, 8193].includes(i) || i % 1000 === 0 ? [2, 2] : [1, 4]);
    const nameOf = (i: number): string => (i >= 4097 && i < 8193 ? 'other' : 'features');
    const total = 9000;
    for (let first = 1; first <= total; first += 1000) {
      const records: TelemetryRecord[] = [];
      for (let i = first; i < first + 1000 && i <= total; i++) {
        const record = captured(i, shapeOf(i), 1, (f) => i + f);
        if (record.body?.$case === 'sample') {
          record.body.value.model = 'paged';
          record.body.value.inputs[0]!.name = nameOf(i);
        }
        records.push(record);
      }
      await telemetry.commit('edge-paged', records, clock.now());
    }
    const seen: Array<{ seq: number; name: string; shape: readonly number[] }> = [];
    let pages = 0;
    for await (const page of samples.scan({ model: 'paged', version: 0, sinceMs: 0, labelledOnly: false })) {
      pages++;
      for (const row of page) seen.push({ seq: Number(row.id.split('/')[2]), name: row.inputName, shape: row.shape });
    }
    expect(pages).toBe(3);
    expect(seen).toHaveLength(total);
    for (const [n, row] of seen.entries()) expect(row).toEqual({ seq: n + 1, name: nameOf(n + 1), shape: shapeOf(n + 1) });
  });
});
