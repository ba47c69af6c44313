/**
 * snapshot_vs_raw: dataset snapshot rows/s through the product's real create path
 * (DatasetService.create over the SQLite sample store: scan, stable split, label balance, feature
 * statistics, .npy files, sha256s, the tar written content-addressed and fsynced) against, in the
 * same run, a raw better-sqlite3 scan of the same rows (the input blobs copied into one
 * Float32Array, labels into an array). 20,000 samples of 64 features, half of them labelled, fed
 * in through the telemetry commit as ingest does. Median of 3 runs each (BENCH_RUNS) after one
 * untimed warm-up run each, the two alternating; snapshot_cpu_vs_raw is the same ratio in CPU seconds.
 * `tsx bench/training/snapshot.ts` prints one JSON line last; the lead's bench:training calls measureSnapshot().
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ManualClock } from '../../common/clock.js';
import { Stream, TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';
import { DatasetService } from '../../control-plane/datasets/dataset-service.js';
import { snapshotBlobsOf } from '../../control-plane/datasets/wiring.js';
import { ArtifactStore } from '../../control-plane/registry/artifact-store.js';
import { SqliteDatasetRepository } from '../../control-plane/store/sqlite/dataset-repository.js';
import { openDatabase } from '../../control-plane/store/sqlite/database.js';
import { SqliteSampleRepository } from '../../control-plane/store/sqlite/sample-repository.js';
import { SqliteTelemetryRepository } from '../../control-plane/store/sqlite/telemetry-repository.js';

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 20_000);
const FEATURES = Number(process.env.BENCH_FEATURES ?? 64);
const DEVICES = 20;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const T0 = 1_700_000_000_000;
const log = (line: string): void => void process.stderr.write(`${line}\n`);
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

export async function measureSnapshot(): Promise<{
  snapshot_vs_raw: number;
  snapshot_rows_per_s: number;
  raw_rows_per_s: number;
  snapshot_cpu_vs_raw: number;
}> {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-bench-snapshot-'));
  const db = openDatabase(join(dir, 'control-plane.db'));
  try {
    const clock = new ManualClock(T0);
    const samples = new SqliteSampleRepository(db, { maxAgeMs: 30 * 86_400_000, maxBytes: 1 << 30, maxTensorBytes: 1 << 20 });
    const telemetry = new SqliteTelemetryRepository(db, samples.recordRoutes());
    let state = 12345;
    const random = (): number => ((state = (state * 1_103_515_245 + 12345) >>> 0) / 2 ** 32) * 4 - 2;
    const perDevice = Math.ceil(SAMPLES / DEVICES);
    for (let d = 0; d < DEVICES; d++) {
      const device = `edge-${d}`;
      const records: TelemetryRecord[] = [];
      for (let i = 1; i <= perDevice && d * perDevice + i <= SAMPLES; i++) {
        const requestId = `r${i}`;
        records.push(
          TelemetryRecord.fromPartial({
            boot: 1,
            seq: i * 2 - 1,
            timeMs: T0 + i,
            stream: Stream.STREAM_SAMPLES,
            body: {
              $case: 'sample',
              value: {
                model: 'bench',
                version: 1,
                reason: 'sampled',
                requestId,
                inputs: [
                  { name: 'features', datatype: 'FP32', shape: [1, FEATURES], data: Buffer.from(Float32Array.from({ length: FEATURES }, random).buffer) },
                ],
                outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, 4], data: Buffer.from(new Float32Array([0.1, 0.2, 0.3, 0.4]).buffer) }],
              },
            },
          }),
        );
        if (i % 2 === 0)
          records.push(
            TelemetryRecord.fromPartial({
              boot: 1,
              seq: i * 2,
              timeMs: T0 + i,
              stream: Stream.STREAM_INFERENCE,
              body: { $case: 'label', value: { model: 'bench', version: 1, requestId, predicted: 3, label: i % 4, correct: i % 4 === 3 } },
            }),
          );
      }
      for (let at = 0; at < records.length; at += 500) await telemetry.commit(device, records.slice(at, at + 500), T0 + 1000);
    }
    const service = new DatasetService({
      samples,
      policies: samples,
      repository: new SqliteDatasetRepository(db),
      blobs: snapshotBlobsOf(new ArtifactStore(join(dir, 'datasets'))),
      devices: { deviceIds: async () => new Set() },
      lineage: { versionsOf: async () => [1], trainingDatasetOf: async () => undefined },
      clock,
      maxRows: 10_000_000,
    });

    // The raw baseline reads and decodes every row the snapshot holds: the id's parts (to make `<device>/<boot>/<seq>`),
    // the input's bytes copied into one Float32Array, the label; nothing a snapshot needs besides (shape, version,
    // classes, name) and none of its work (split hash, order by id, statistics, files, sha256s, the fsynced tar).
    const scan = db.prepare('SELECT device_id, boot, seq, input, label FROM samples WHERE model = ? ORDER BY model, id').raw();
    const rawScan = (): number => {
      const x = new Float32Array(SAMPLES * FEATURES);
      const bytes = new Uint8Array(x.buffer);
      const ids: string[] = [];
      const labels: number[] = [];
      let n = 0;
      for (const [device, boot, seq, input, label] of scan.iterate('bench') as Iterable<[string, number, number, Buffer, number | null]>) {
        bytes.set(input, n * FEATURES * 4);
        ids.push(`${device}/${boot}/${seq}`);
        labels.push(label ?? -1);
        n++;
      }
      return n;
    };
    const cpuSeconds = (since: NodeJS.CpuUsage): number => {
      const used = process.cpuUsage(since);
      return (used.user + used.system) / 1e6;
    };

    // One untimed run of each first (the JIT's warm-up, as a control plane that has made a snapshot before is warm); then
    // the runs alternate (snapshot, raw, snapshot, ...) so that a load that comes and goes on a shared machine falls on both.
    const fresh = (): void => {
      // The same content would be found stored and not written again: each run writes its snapshot anew.
      db.exec('DELETE FROM datasets');
      rmSync(join(dir, 'datasets', 'sha256'), { recursive: true, force: true });
    };
    fresh();
    await service.create({ model: 'bench' });
    rawScan();
    const snapshotSeconds: number[] = [];
    const rawSeconds: number[] = [];
    const snapshotCpu: number[] = [];
    const rawCpu: number[] = [];
    let rows = 0;
    for (let run = 0; run < RUNS; run++) {
      fresh();
      let cpu = process.cpuUsage();
      let started = performance.now();
      const record = await service.create({ model: 'bench' });
      snapshotSeconds.push((performance.now() - started) / 1000);
      snapshotCpu.push(cpuSeconds(cpu));
      rows = record.rows;

      cpu = process.cpuUsage();
      started = performance.now();
      const n = rawScan();
      rawSeconds.push((performance.now() - started) / 1000);
      rawCpu.push(cpuSeconds(cpu));
      if (n !== rows) throw new Error(`the raw scan read ${n} rows, the snapshot holds ${rows}`);
    }
    const snapshotRowsPerS = rows / median(snapshotSeconds);
    const rawRowsPerS = rows / median(rawSeconds);
    const seconds = (values: number[]): string => values.map((v) => v.toFixed(3)).join(', ');
    log(`snapshot: ${rows} rows in ${seconds(snapshotSeconds)} s (cpu ${seconds(snapshotCpu)}); raw scan ${seconds(rawSeconds)} s (cpu ${seconds(rawCpu)})`);
    return {
      snapshot_vs_raw: Number((snapshotRowsPerS / rawRowsPerS).toFixed(3)),
      snapshot_rows_per_s: Math.round(snapshotRowsPerS),
      raw_rows_per_s: Math.round(rawRowsPerS),
      // The same ratio in CPU seconds (the process's, its threads' too): steadier on a loaded machine, blind to fsync waits.
      snapshot_cpu_vs_raw: Number((median(rawCpu) / median(snapshotCpu)).toFixed(3)),
    };
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(`${JSON.stringify(await measureSnapshot())}\n`);
}
