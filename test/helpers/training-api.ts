import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createOperatorClient, type OperatorClient } from '../../client/operator-client.js';
import { ManualClock } from '../../common/clock.js';
import { untarSnapshot } from '../../common/datasets/snapshot-tar.js';
import { silentLogger } from '../../common/logger.js';
import { DatasetServiceService } from '../../common/proto/driftline/v1/datasets.js';
import { TelemetryBatch, type TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';
import { AccessServiceService, Role } from '../../common/proto/driftline/v1/fleet.js';
import { WorkerServiceService } from '../../common/proto/driftline/v1/learning.js';
import type { ControlPlaneConfigInput } from '../../control-plane/config.js';
import { startControlPlane, type ControlPlane } from '../../control-plane/server.js';
import { buildDemoModel } from '../../demo/model/demo-model.js';
import { generateVibrationData } from '../../demo/model/vibration-data.js';
import { labelRecord, sampleRecord } from './sample-records.js';

export const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** The demo classifier (8 vibration features → 3 classes), trained on clean data: v1 of `vibration`. */
export const BASE_MODEL = buildDemoModel().bytes;

export interface TrainingApiRig {
  cp: ControlPlane;
  clock: ManualClock;
  admin: OperatorClient;
  operator: OperatorClient;
  viewer: OperatorClient;
  worker: OperatorClient;
  /** A second worker token's client (another GPU host). */
  otherWorker: OperatorClient;
  tokens: { operator: string; viewer: string; worker: string; otherWorker: string };
  close(): Promise<void>;
}

/**
 * A real control plane (gRPC on an OS-chosen port, SQLite file, artifact store, onnxruntime)
 * on a ManualClock, `vibration` v1 registered, and one client per role: admin, operator,
 * viewer, and two worker tokens (`tokens create --role worker`). `baseMetadata`: v1's metadata
 * entries (a drift reference).
 */
export async function startTrainingApi(
  dir: string,
  config: Partial<ControlPlaneConfigInput> = {},
  options: { baseMetadata?: Record<string, string> } = {},
): Promise<TrainingApiRig> {
  const clock = new ManualClock();
  const cp = await startControlPlane(
    { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, ingest: { deviceRate: { burst: 100_000 } }, ...config },
    { logger: silentLogger(), clock },
  );
  const client = (token: string): OperatorClient => createOperatorClient({ address: cp.addresses.grpc, token, streamTimeoutMs: 120_000 });
  const admin = client(readFileSync(cp.adminTokenFile, 'utf8').trim());
  const access = admin.service(AccessServiceService);
  const mint = async (name: string, role: Role): Promise<string> => (await access.createToken({ name, role })).token;
  const tokens = {
    operator: await mint('ops', Role.ROLE_OPERATOR),
    viewer: await mint('dashboards', Role.ROLE_VIEWER),
    worker: await mint('gpu-host-1', Role.ROLE_WORKER),
    otherWorker: await mint('gpu-host-2', Role.ROLE_WORKER),
  };
  await admin.uploadModelBytes(BASE_MODEL, { name: 'vibration', description: 'clean-data classifier', metadata: options.baseMetadata ?? {} });
  const clients = { operator: client(tokens.operator), viewer: client(tokens.viewer), worker: client(tokens.worker), otherWorker: client(tokens.otherWorker) };
  return {
    cp,
    clock,
    admin,
    ...clients,
    tokens,
    async close() {
      for (const c of [admin, ...Object.values(clients)]) c.close();
      await cp.shutdown();
    },
  };
}

/**
 * Captured samples of drifted vibration rows (sensor aging: the features moved, the labels did
 * not; the clean-data v1 is poor on them) with their labels, through the control plane's real
 * ingest path, then a labelled-only snapshot made by the operator (DatasetService): of every
 * sample kept, or of those captured within sinceMsAgo, replaying the latest version's training
 * snapshot when asked.
 */
export async function drifted(
  rig: TrainingApiRig,
  options: { rows: number; severity?: number; seed?: number; device?: string; sinceMsAgo?: number; replayParent?: boolean },
): Promise<{ id: string; sha256: string }> {
  const data = generateVibrationData({ rows: options.rows, seed: options.seed ?? 91, drift: { severity: options.severity ?? 2 } });
  const before = (await rig.cp.samples.stats('vibration')).labelled;
  const features = data.featureNames.length;
  const device = options.device ?? 'edge-drifted';
  const records: TelemetryRecord[] = [];
  for (let r = 0; r < options.rows; r++) {
    const requestId = `req-${r}`;
    records.push(sampleRecord(2 * r + 1, { requestId, features: Array.from(data.x.subarray(r * features, (r + 1) * features)), timeMs: rig.clock.now() }));
    records.push(labelRecord(2 * r + 2, requestId, data.y[r]!));
  }
  const payload = Buffer.from(TelemetryBatch.encode({ records, sentAtMs: rig.clock.now(), deflated: Buffer.alloc(0) }).finish());
  await rig.cp.ingest.handle(device, 'telemetry', payload);
  const stats = await rig.cp.samples.stats('vibration');
  if (stats.labelled < before + options.rows) throw new Error(`expected ${options.rows} more labelled samples, the store has ${JSON.stringify(stats)}`);
  const dataset = await rig.operator.service(DatasetServiceService).createDataset({
    model: 'vibration',
    version: 0,
    selector: '',
    sinceMsAgo: options.sinceMsAgo ?? 0,
    labelledOnly: true,
    replayParentId: '',
    replayParent: options.replayParent ?? false,
  });
  return { id: dataset.id, sha256: dataset.sha256 };
}

/** A worker's registration, as `driftline worker` would send it (a CPU host with the TypeScript trainer). */
export const workerRegistration = (name: string, trainers: string[] = ['typescript']) => ({
  name,
  gpus: [],
  cpu: 2,
  memoryBytes: 4 * 1024 ** 3,
  trainers,
  version: 'test',
});

/** Downloads an artifact a lease names, chunk by chunk, as a worker does; the bytes and how many chunks came. */
export async function download(worker: OperatorClient, leaseId: string, sha: string): Promise<{ bytes: Buffer; chunks: number }> {
  const parts: Buffer[] = [];
  for await (const { chunk } of worker.service(WorkerServiceService).downloadArtifact({ leaseId, sha256: sha })) parts.push(chunk);
  return { bytes: Buffer.concat(parts), chunks: parts.length };
}

/** A snapshot tar unpacked into a driftline-dataset/1 folder (what the trainer reads). */
export function unpackSnapshot(tar: Buffer, dir: string): string {
  for (const [path, bytes] of untarSnapshot(tar, tar.length)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), bytes);
  }
  return dir;
}

export function* chunksOf(bytes: Uint8Array, size = 16 * 1024): Generator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}
