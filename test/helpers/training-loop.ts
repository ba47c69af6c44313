import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../common/clock.js';
import { readSnapshotFiles } from '../../common/datasets/snapshot-layout.js';
import { untarSnapshot } from '../../common/datasets/snapshot-tar.js';
import { silentLogger } from '../../common/logger.js';
import { buildModel } from '../../common/onnx/builder.js';
import { DriftStatus } from '../../common/proto/driftline/v1/drift.js';
import { ReportedState, Stream, TelemetryRecord, type DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import { DatasetService } from '../../control-plane/datasets/dataset-service.js';
import { deviceSelectionOf, labelledSampleCounterOf, modelLineageOf, snapshotBlobsOf } from '../../control-plane/datasets/wiring.js';
import { DriftWatcher, type DriftStatusSource } from '../../control-plane/drift/drift-watcher.js';
import type { DriftLevel } from '../../control-plane/drift/ports.js';
import { DesiredStates } from '../../control-plane/fleet/desired-states.js';
import { FleetStore } from '../../control-plane/fleet/fleet-store.js';
import { ArtifactStore } from '../../control-plane/registry/artifact-store.js';
import { ModelRegistry } from '../../control-plane/registry/model-registry.js';
import { RolloutEngine } from '../../control-plane/rollout/engine.js';
import { DesiredStatePublisher, FleetStoreView, RegistryCatalog } from '../../control-plane/rollout/fleet-adapters.js';
import { SqliteCohortMetrics } from '../../control-plane/store/sqlite/cohort-metrics.js';
import { openDatabase, type Database } from '../../control-plane/store/sqlite/database.js';
import { SqliteDatasetRepository } from '../../control-plane/store/sqlite/dataset-repository.js';
import { SqliteDriftEvents } from '../../control-plane/store/sqlite/drift-events.js';
import { SqliteFleetRepository } from '../../control-plane/store/sqlite/fleet-repository.js';
import { SqliteModelVersionRepository } from '../../control-plane/store/sqlite/model-version-repository.js';
import { SqliteRetrainingPolicyRepository } from '../../control-plane/store/sqlite/retraining-policy-repository.js';
import { SqliteRolloutRepository } from '../../control-plane/store/sqlite/rollout-repository.js';
import { SqliteSampleRepository } from '../../control-plane/store/sqlite/sample-repository.js';
import { SqliteTelemetryRepository } from '../../control-plane/store/sqlite/telemetry-repository.js';
import { SqliteTrainingJobRepository } from '../../control-plane/store/sqlite/training-job-repository.js';
import { TrainingEngine } from '../../control-plane/training/engine.js';
import type { SplitRole } from '../../control-plane/training/evaluation.js';
import { OnnxRuntimeEvaluator, type EvaluationData, type LabelledSplit } from '../../control-plane/training/onnxruntime/onnx-evaluator.js';
import type { DatasetCatalog } from '../../control-plane/training/ports.js';
import { ArtifactStoreTrainingArtifacts, RegistryBaseModels, RegistryCandidateSink } from '../../control-plane/training/registry-adapters.js';
import type { ReleaseSigning } from '../../control-plane/training/release-canary.js';
import { connectRetrainingLoop, type RetrainingLoop } from '../../control-plane/training/retraining-loop.js';
import type { RetrainingPolicyStore } from '../../control-plane/training/retraining-ports.js';
import { TriggerWatcher } from '../../control-plane/training/trigger-watcher.js';
import { LIMITS, chunksOf, sha256 } from './training.js';

export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;
/** 2026-01-05T00:00:00Z. */
export const START = Date.UTC(2026, 0, 5);
const FEATURES = 4;
const CLASSES = 3;
export const WORKER_TOKEN = 'tok_worker';

/**
 * A 4-feature, 3-class linear classifier (MatMul then Softmax), input `features` FP32 [batch, 4]:
 * the identity-like weights answer the class of the largest of the first three features.
 */
export function classifier(weights: number[]): Uint8Array {
  return buildModel({
    name: 'vibration',
    inputs: [{ name: 'features', type: 'float32', shape: ['batch', FEATURES] }],
    outputs: [{ name: 'probabilities', type: 'float32', shape: ['batch', CLASSES] }],
    nodes: [
      { op: 'MatMul', inputs: ['features', 'w'], outputs: ['logits'] },
      { op: 'Softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: { int: 1 } } },
    ],
    initializers: [{ name: 'w', type: 'float32', dims: [FEATURES, CLASSES], values: weights }],
  });
}

/** Right on every sample below: class c where feature c is the largest. */
export const RETRAINED = classifier([4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0]);
/** Always class 0: right on a third of them. */
export const V1 = classifier([0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]);

/** A scripted drift status source: the test sets each (version, cohort) level; the real drift watcher records the changes. */
function scriptedDrift() {
  const levels = new Map<string, DriftLevel>();
  const source: DriftStatusSource = {
    versions: async () => [...new Set([...levels.keys()].map((k) => k.split('/')[0]!))].map((v) => ({ model: 'vibration', version: Number(v) })),
    status: async (_model, version) =>
      [...levels.entries()]
        .filter(([k]) => k.startsWith(`${version}/`))
        .map(([k, status]) => DriftStatus.fromPartial({ model: 'vibration', version, cohort: k.split('/')[1]!, status, rows: 500, devices: 5 })),
  };
  return { source, set: (version: number, cohort: string, level: DriftLevel) => levels.set(`${version}/${cohort}`, level) };
}

/** The training engine's dataset catalog over the datasets domain: a snapshot is its tar. */
export function datasetCatalogOf(datasets: DatasetService): DatasetCatalog {
  return {
    async describe(id) {
      const record = await datasets.get(id).catch(() => undefined);
      return record ? { id, sha256: record.sha256, sizeBytes: record.sizeBytes, model: record.model } : undefined;
    },
  };
}

/** The evaluation gate's data over a snapshot: its test split (labelled rows) as "test"; no regression split here. The manifest's input shape is the row shape. */
export function evaluationDataOf(datasets: DatasetService): EvaluationData {
  const read = async (id: string) => {
    const record = await datasets.get(id);
    return readSnapshotFiles(untarSnapshot(await datasets.readTar(id), record.sizeBytes), `dataset ${id}`);
  };
  return {
    async splits(id) {
      const { manifest, splits } = await read(id);
      const rowShape = manifest.input.shape;
      const width = rowShape.reduce((a, b) => a * b, 1);
      const rows: number[] = [];
      const labels: number[] = [];
      splits.test.y.forEach((y, i) => {
        if (y >= 0n) {
          rows.push(i);
          labels.push(Number(y));
        }
      });
      const x = new Float32Array(rows.length * width);
      rows.forEach((r, k) => x.set(splits.test.x.subarray(r * width, (r + 1) * width), k * width));
      const test: LabelledSplit = { x, rowShape, labels };
      return { test } as Partial<Record<SplitRole, LabelledSplit>>;
    },
    async classes(id) {
      return (await read(id)).manifest.classes;
    },
  };
}

/** A signing port the test answers: awaiting until it signs the version. */
export function testSigning() {
  const signed = new Set<string>();
  const asked: Array<{ model: string; version: number; audience: string }> = [];
  const signing: ReleaseSigning = {
    async signCanary(request) {
      asked.push(request);
      return { state: signed.has(`${request.model}@${request.version}`) ? 'signed' : 'awaiting-signature' };
    },
  };
  return { signing, asked, sign: (model: string, version: number) => signed.add(`${model}@${version}`) };
}

export interface LoopRig {
  dir: string;
  clock: ManualClock;
  db: Database;
  fleet: FleetStore;
  registry: ModelRegistry;
  datasets: DatasetService;
  engine: TrainingEngine;
  rollouts: RolloutEngine;
  policies: SqliteRetrainingPolicyRepository;
  driftWatcher: DriftWatcher;
  watcher: TriggerWatcher;
  loop: RetrainingLoop;
  drift: ReturnType<typeof scriptedDrift>;
  /** Where devices' telemetry is committed, as ingest does. */
  telemetry: SqliteTelemetryRepository;
  /** Desired states sent to devices, in order. */
  sent: Array<{ deviceId: string; desired: DesiredState }>;
  /** Enrolls devices with these labels; they report running v1. */
  enroll(ids: readonly string[], labels: Record<string, string>): Promise<void>;
  /** Captured samples of a device, each labelled (class = the largest of its first three features). */
  capture(deviceId: string, count: number): Promise<void>;
  /** A worker leases the next job and completes it with this candidate; resolves once the gate has judged it. */
  train(candidate: Uint8Array): Promise<string>;
  /** Stops the watchers and closes the database, then opens everything again over the same file (a restarted control plane). */
  restart(options?: { policies?: (store: SqliteRetrainingPolicyRepository) => RetrainingPolicyStore }): Promise<void>;
  close(): Promise<void>;
}

export async function loopRig(options: {
  signing: ReleaseSigning;
  policies?: (store: SqliteRetrainingPolicyRepository) => RetrainingPolicyStore;
}): Promise<LoopRig> {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-loop-'));
  const file = join(dir, 'control-plane.db');
  const clock = new ManualClock(START);
  const drift = scriptedDrift();
  const sent: LoopRig['sent'] = [];
  const logger = silentLogger();
  const seqs = new Map<string, number>();
  let workerId = '';
  let rolloutIds = 0;

  const build = (wrap?: (store: SqliteRetrainingPolicyRepository) => RetrainingPolicyStore) => {
    const db = openDatabase(file);
    const fleet = new FleetStore(new SqliteFleetRepository(db));
    const artifactStore = new ArtifactStore(join(dir, 'artifacts'));
    const registry = new ModelRegistry({ versions: new SqliteModelVersionRepository(db), artifacts: artifactStore, clock, maxModelBytes: 1 << 24 });
    const samples = new SqliteSampleRepository(db, { maxAgeMs: 30 * DAY, maxBytes: 1 << 30, maxTensorBytes: 1 << 20 });
    const telemetry = new SqliteTelemetryRepository(db, samples.recordRoutes());
    const devices = deviceSelectionOf(fleet);
    const datasets = new DatasetService({
      samples,
      policies: samples,
      repository: new SqliteDatasetRepository(db),
      blobs: snapshotBlobsOf(new ArtifactStore(join(dir, 'datasets'))),
      devices,
      lineage: modelLineageOf(registry),
      clock,
      maxRows: 100_000,
    });
    const engine = new TrainingEngine({
      repository: new SqliteTrainingJobRepository(db),
      baseModels: new RegistryBaseModels(registry),
      datasets: datasetCatalogOf(datasets),
      artifacts: new ArtifactStoreTrainingArtifacts(artifactStore),
      evaluator: new OnnxRuntimeEvaluator({
        data: evaluationDataOf(datasets),
        parents: { bytes: async (model, version) => readFile(artifactStore.fileOf((await registry.resolve(model, version)).sha256)) },
      }),
      sink: new RegistryCandidateSink(registry, artifactStore),
      limits: LIMITS,
      clock,
      logger,
    });
    const rollouts = new RolloutEngine({
      repository: new SqliteRolloutRepository(db),
      fleet: new FleetStoreView(fleet),
      metrics: new SqliteCohortMetrics(db),
      publisher: new DesiredStatePublisher({
        fleet,
        registry,
        desiredStates: new DesiredStates({ fleet, link: { sendDesired: async (deviceId, desired) => void sent.push({ deviceId, desired }) }, logger }),
        rollbackTtlMs: HOUR,
        logger,
      }),
      catalog: new RegistryCatalog(registry),
      clock,
      logger,
      // Stable ids: a rollout's cohorts hash (rollout, device), so its waves are the same on every run.
      newId: () => `ro_canary${++rolloutIds}`,
    });
    const policies = new SqliteRetrainingPolicyRepository(db);
    const driftWatcher = DriftWatcher.create({
      source: drift.source,
      store: new SqliteDriftEvents(db),
      clock,
      logger,
      evaluateIntervalMs: 30_000,
      windowMs: 15 * MINUTE,
      eventRetentionMs: 90 * DAY,
    });
    const loop = connectRetrainingLoop({
      training: engine,
      datasets,
      lineage: modelLineageOf(registry),
      policies,
      rollouts,
      signing: options.signing,
      clock,
      logger,
      tickIntervalMs: MINUTE,
    });
    const watcher = TriggerWatcher.create({
      policies: wrap ? wrap(policies) : policies,
      driftEvents: driftWatcher,
      labelledSamples: labelledSampleCounterOf(samples, devices),
      jobs: loop.jobs,
      clock,
      logger,
      tickIntervalMs: MINUTE,
      driftCatchUpMs: DAY,
      scheduleCatchUpMs: HOUR,
      decisionRetentionMs: 180 * DAY,
    });
    return { db, fleet, registry, datasets, engine, rollouts, policies, driftWatcher, watcher, loop, telemetry };
  };

  let parts = build(options.policies);
  const rig: LoopRig = {
    dir,
    clock,
    drift,
    sent,
    ...parts,
    async enroll(ids, labels) {
      for (const id of ids) {
        const { token } = await rig.fleet.createEnrollmentToken(id, labels, clock.now() + HOUR, clock.now());
        await rig.fleet.enroll({ token, deviceId: id, firmwareProfile: 'jetson-orin-nano-jp6' }, clock.now());
        await rig.fleet.saveReported(
          id,
          ReportedState.fromPartial({
            firmwareProfile: 'jetson-orin-nano-jp6',
            activeModel: { name: 'vibration', version: 1, sha256: '', provider: 'cpu' },
            boot: 1,
          }),
          clock.now(),
        );
      }
    },
    async capture(deviceId, count) {
      const next = () => {
        const seq = (seqs.get(deviceId) ?? 0) + 1;
        seqs.set(deviceId, seq);
        return seq;
      };
      const records: TelemetryRecord[] = [];
      const labels: Array<{ requestId: string; label: number }> = [];
      for (let i = 0; i < count; i++) {
        const seq = next();
        const label = seq % CLASSES;
        const features = [0, 0, 0, (seq % 7) / 7];
        features[label] = 1;
        const requestId = `${deviceId}-r${seq}`;
        records.push(
          TelemetryRecord.fromPartial({
            boot: 1,
            seq,
            timeMs: clock.now(),
            stream: Stream.STREAM_SAMPLES,
            body: {
              $case: 'sample',
              value: {
                model: 'vibration',
                version: 1,
                reason: 'sampled',
                requestId,
                inputs: [{ name: 'features', datatype: 'FP32', shape: [1, FEATURES], data: Buffer.from(new Float32Array(features).buffer) }],
                outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, CLASSES], data: Buffer.from(new Float32Array([0.8, 0.1, 0.1]).buffer) }],
                errorCode: '',
              },
            },
          }),
        );
        labels.push({ requestId, label });
      }
      await parts.telemetry.commit(deviceId, records, clock.now());
      const labelRecords = labels.map(({ requestId, label }) =>
        TelemetryRecord.fromPartial({
          boot: 1,
          seq: next(),
          timeMs: clock.now(),
          stream: Stream.STREAM_INFERENCE,
          body: {
            $case: 'label',
            value: { model: 'vibration', version: 1, requestId, predicted: 0, label, correct: label === 0, inferenceTimeMs: clock.now() },
          },
        }),
      );
      await parts.telemetry.commit(deviceId, labelRecords, clock.now());
    },
    async train(candidate) {
      if (!workerId) {
        workerId = (
          await rig.engine.registerWorker({ name: 'gpu-1', gpus: [], cpu: 4, memoryBytes: 1 << 30, trainers: ['ts-dense-head'], version: 'test' }, WORKER_TOKEN)
        ).id;
      }
      const grant = await rig.engine.lease(workerId, WORKER_TOKEN);
      if (!grant) throw new Error('no job to lease');
      await rig.engine.heartbeat(grant.leaseId, { progress: null, logLines: ['epoch 1'] }, WORKER_TOKEN);
      const stored = await rig.engine.uploadCandidate(
        { leaseId: grant.leaseId, sizeBytes: candidate.length, sha256: sha256(candidate) },
        chunksOf(candidate),
        WORKER_TOKEN,
      );
      await rig.engine.complete(grant.leaseId, stored.id, { loss: 0.1 }, WORKER_TOKEN);
      await rig.engine.settled();
      return grant.jobId;
    },
    async restart(again) {
      await rig.watcher.shutdown();
      await rig.loop.release.shutdown();
      await rig.driftWatcher.shutdown();
      await rig.engine.settled();
      rig.db.close();
      workerId = '';
      parts = build(again?.policies);
      Object.assign(rig, parts);
    },
    async close() {
      await rig.watcher.shutdown();
      await rig.loop.release.shutdown();
      await rig.driftWatcher.shutdown();
      await rig.engine.settled();
      if (rig.db.open) rig.db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return rig;
}

/** Registers v1 of the model (an operator's upload: no training dataset in its lineage). */
export async function uploadV1(registry: ModelRegistry): Promise<void> {
  await registry.upload({ name: 'vibration', sizeBytes: V1.length, sha256: sha256(V1), description: 'v1', metadata: {} }, chunksOf(V1));
}
