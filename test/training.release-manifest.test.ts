/**
 * A retrained version's release material (issue #14 item 6), end to end on a real control plane
 * (gRPC, SQLite, artifact store, dataset snapshots, onnxruntime): the job's candidate becomes v2
 * with a drift reference built from its snapshot's training rows in v1's reference layout, drift
 * for v2 is judged against it, and the canary signing port signs a manifest whose golden vectors
 * (recorded on the snapshot's test rows) pass the agent's self-test on v2 and fail on v1: a real
 * agent ModelManager in the cohort installs the canary through them.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { runGoldenSelfTest } from '../agent/models/golden-self-test.js';
import { ModelManager } from '../agent/models/model-manager.js';
import { PinnedRoot } from '../agent/trust/pinned-root.js';
import { ManualClock } from '../common/clock.js';
import { readSnapshotFiles, type SplitData } from '../common/datasets/snapshot-layout.js';
import { untarSnapshot } from '../common/datasets/snapshot-tar.js';
import {
  REFERENCE_METADATA_KEY,
  buildReference,
  countOnEdges,
  parseReference,
  serializeReference,
  withDriftPolicy,
  type DriftReference,
} from '../common/drift/reference.js';
import { SketchBuilder } from '../common/drift/sketch.js';
import { DriftlineError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import { DesiredState, Stream, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { DriftServiceService } from '../common/proto/driftline/v1/drift.js';
import { TrainingServiceService, WorkerServiceService } from '../common/proto/driftline/v1/learning.js';
import { ModelServiceService, type ModelVersion } from '../common/proto/driftline/v1/models.js';
import { verifyRelease } from '../common/trust/manifest.js';
import { signRootBytes } from '../common/trust/root.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { ReleaseSigner } from '../control-plane/registry/release-signing.js';
import { ReleaseStore } from '../control-plane/registry/release-store.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteReleaseRepository } from '../control-plane/store/sqlite/release-repository.js';
import { OnnxRuntimeSessions } from '../control-plane/training/onnxruntime/ort-sessions.js';
import { RetrainedReleaseData } from '../control-plane/training/release-data.js';
import { canarySigningOf } from '../control-plane/training/wiring.js';
import { VIBRATION_CLASSES, VIBRATION_FEATURES, generateVibrationData } from '../demo/model/vibration-data.js';
import { builtInTrainerCommand } from '../worker/built-in-trainers.js';
import { runTrainer } from '../worker/trainer-process.js';
import { capturingLogger } from './fixtures/logs.js';
import { ArtifactTestServer, newKey, testTrust } from './helpers/releases.js';
import {
  BASE_MODEL,
  chunksOf,
  download,
  drifted,
  sha256,
  startTrainingApi,
  unpackSnapshot,
  workerRegistration,
  type TrainingApiRig,
} from './helpers/training-api.js';

const FEATURES = [...VIBRATION_FEATURES];
const CLASSES = [...VIBRATION_CLASSES];

/** v1's reference as `models push --reference --drift-policy` would record it: clean data, 8 bins, a policy and a weighted feature. */
function v1Reference(): DriftReference {
  const clean = generateVibrationData({ rows: 2000, seed: 5 });
  const rows = Array.from({ length: 2000 }, (_, r) => Array.from(clean.x.subarray(r * 8, (r + 1) * 8)));
  const built = buildReference(rows, { featureNames: FEATURES, classNames: CLASSES, labels: Array.from(clean.y), bins: 8, input: 'features' });
  return withDriftPolicy(built, JSON.stringify({ psiAlert: 0.4, belowFloor: 'warn', importance: { [FEATURES[0]!]: 3 } }));
}

/** One worker attempt over the API: lease, download, the built-in TypeScript trainer, upload, complete; the engine judges it. */
async function trainOnce(rig: TrainingApiRig, dir: string, datasetId: string): Promise<{ jobId: string; candidate: Buffer }> {
  const started = await rig.operator.service(TrainingServiceService).startTrainingJob({
    model: 'vibration',
    baseVersion: 1,
    clientRequestId: 'release-manifest-1',
    datasetId,
    trainer: 'typescript',
    hyperparametersJson: '{"epochs": 12, "learning_rate": 0.005, "seed": 3}',
    resources: undefined,
    maxDurationSeconds: 0,
    maxAttempts: 0,
    gates: ['accuracy-delta>=0.01'],
  });
  const worker = rig.worker.service(WorkerServiceService);
  const { workerId } = await worker.registerWorker(workerRegistration('cpu-box-1'));
  const { lease } = await worker.leaseTrainingJob({ workerId });
  const job = join(dir, 'job');
  const files = {
    dataset: unpackSnapshot((await download(rig.worker, lease!.leaseId, lease!.dataset!.sha256)).bytes, join(job, 'dataset')),
    baseModel: join(job, 'base.onnx'),
    hyperparameters: join(job, 'hyperparameters.json'),
    output: join(job, 'output'),
  };
  writeFileSync(files.baseModel, (await download(rig.worker, lease!.leaseId, lease!.baseModel!.sha256)).bytes);
  writeFileSync(files.hyperparameters, lease!.hyperparametersJson);
  const outcome = await runTrainer({ trainer: await builtInTrainerCommand('typescript'), files, onEvent: () => {} });
  const candidate = readFileSync(outcome.modelPath);
  const uploaded = await rig.worker.uploadCandidate({ leaseId: lease!.leaseId, sizeBytes: candidate.length, sha256: sha256(candidate) }, chunksOf(candidate));
  const metrics = Object.fromEntries(Object.entries(outcome.metrics).filter((e): e is [string, number] => typeof e[1] === 'number'));
  await worker.completeTrainingAttempt({ leaseId: lease!.leaseId, candidateId: uploaded.candidateId, metrics });
  await rig.cp.training.settled();
  const done = await rig.viewer.service(TrainingServiceService).getTrainingJob({ id: started.id });
  expect(done.evaluation?.verdict, done.evaluation?.reason).toBe('pass');
  expect(done).toMatchObject({ state: 'succeeded', resultVersion: 2 });
  return { jobId: started.id, candidate };
}

const rowsOf = (split: SplitData, count = split.ids.length): number[][] =>
  Array.from({ length: count }, (_, r) => Array.from(split.x.subarray(r * 8, (r + 1) * 8)));

describe('training - a retrained version carries a drift reference from its training data and golden vectors in its canary manifest', () => {
  let dir: string;
  let rig: TrainingApiRig;
  let dataset: { id: string; sha256: string };
  let trained: { jobId: string; candidate: Buffer };
  let train: SplitData;
  let test: SplitData;
  const parent = v1Reference();
  const registry = {
    async resolve(name: string, version: number): Promise<ModelVersion> {
      const found = (await rig.viewer.service(ModelServiceService).getModel({ name })).versions.find((v) => v.version === version);
      if (!found) throw new DriftlineError('MODEL_NOT_FOUND', `${name} v${version}`);
      return found;
    },
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-release-manifest-'));
    rig = await startTrainingApi(
      dir,
      { training: { minSplitRows: 20, leaseTtl: '60s' } },
      { baseMetadata: { [REFERENCE_METADATA_KEY]: serializeReference(parent) } },
    );
    dataset = await drifted(rig, { rows: 600 });
    trained = await trainOnce(rig, dir, dataset.id);
    const { sizeBytes } = await rig.cp.datasets.getDataset(dataset.id);
    ({ train, test } = readSnapshotFiles(untarSnapshot(await rig.cp.datasets.readTar(dataset.id), sizeBytes)).splits);
  }, 120_000);

  afterAll(async () => {
    await rig?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("v2's reference counts its snapshot's training rows on v1's layout (names, bins, policy), with v2's own predictions", async () => {
    const v2 = await registry.resolve('vibration', 2);
    const reference = parseReference(v2.metadata[REFERENCE_METADATA_KEY]!);
    expect(train.ids.length).toBeGreaterThan(300);
    expect(reference.rows).toBe(train.ids.length);
    expect(reference.input).toBe('features');
    expect(reference.features.map((f) => f.name)).toEqual(FEATURES);
    expect(Math.max(...reference.features.map((f) => f.edges.length))).toBe(9);
    expect(reference.policy).toEqual({ psiAlert: 0.4, belowFloor: 'warn' });
    expect(reference.features.map((f) => f.importance)).toEqual([3, ...new Array<undefined>(7).fill(undefined)]);
    const rows = rowsOf(train);
    reference.features.forEach((f, j) => {
      expect(f.counts).toEqual(
        countOnEdges(
          rows.map((r) => r[j]!),
          f.edges,
        ),
      );
      expect(f.edges).not.toEqual(parent.features[j]!.edges);
    });
    expect(reference.classes).toMatchObject({ names: CLASSES, source: 'predictions' });
    expect(reference.classes.counts.reduce((a, b) => a + b, 0)).toBe(train.ids.length);
    expect(reference.confidence.counts.reduce((a, b) => a + b, 0)).toBe(train.ids.length);
  });

  it("drift for v2 is judged against its own reference: a device's sketch of training-like rows is computed, not no_reference", async () => {
    const reference = parseReference((await registry.resolve('vibration', 2)).metadata[REFERENCE_METADATA_KEY]!);
    const builder = new SketchBuilder(reference, 'vibration', 2, rig.clock.now() - 60_000);
    for (const row of rowsOf(train)) {
      builder.observeFeatures(row, 1, 8);
      builder.observeRequest(5, true);
    }
    const record = TelemetryRecord.fromPartial({
      boot: 1,
      seq: 10_000,
      timeMs: rig.clock.now() - 1000,
      stream: Stream.STREAM_INFERENCE,
      body: { $case: 'drift', value: builder.finish(rig.clock.now()) },
    });
    await rig.cp.ingest.handle(
      'edge-drifted',
      'telemetry',
      Buffer.from(TelemetryBatch.encode({ records: [record], sentAtMs: rig.clock.now(), deflated: Buffer.alloc(0) }).finish()),
    );
    const { statuses } = await rig.viewer.service(DriftServiceService).getDriftStatus({ model: 'vibration', version: 2, sinceMs: 0 });
    const fleet = statuses.find((s) => s.version === 2 && s.cohort === '')!;
    expect(fleet.status).not.toMatch(/no_reference|no_data/);
    expect(fleet.rows).toBe(train.ids.length);
    expect(fleet.features.map((f) => f.name)).toEqual(FEATURES);
    for (const f of fleet.features) expect(f.psi).toBeLessThan(1e-9);
  });

  /** A release store on SQLite under a root delegating `vibration` to an automation key (none: no trust root), and the signing port over it. */
  async function signingRig(name: string, options: { trusted?: boolean } = {}) {
    const clock = new ManualClock(1_700_000_000_000);
    const trust = testTrust(clock.now());
    const automation = newKey();
    const root = trust.metadata(1, {
      automationKeys: { [automation.keyId]: { publicKey: automation.publicKey, scope: { models: ['vibration'], maxDevices: 4 } } },
    });
    const rootBytes = signRootBytes(
      root,
      trust.rootKeys.slice(0, 2).map((k) => k.signer),
    );
    const db = openDatabase(join(dir, `${name}.db`));
    const { logger, lines } = capturingLogger();
    const store = new ReleaseStore({
      releases: new SqliteReleaseRepository(db),
      clock,
      logger,
      rootChain: options.trusted === false ? [] : [rootBytes],
      registry,
    });
    const artifacts = join(dir, `${name}-artifacts`);
    mkdirSync(artifacts, { recursive: true });
    writeFileSync(join(artifacts, sha256(trained.candidate)), trained.candidate);
    writeFileSync(join(artifacts, sha256(BASE_MODEL)), BASE_MODEL);
    // The drifted cohort: two enrolled devices (enrolled out of order) and a decommissioned one; the rest of the fleet elsewhere.
    const fleet = new FleetStore(new SqliteFleetRepository(db));
    for (const [id, site] of [
      ['edge-b', 'north'],
      ['edge-a', 'north'],
      ['edge-d', 'north'],
      ['edge-c', 'south'],
    ] as const) {
      const { token } = await fleet.createEnrollmentToken(id, { site }, clock.now() + 60_000, clock.now());
      await fleet.enroll({ token, deviceId: id, firmwareProfile: 'x86-cpu' }, clock.now());
    }
    await fleet.decommission('edge-d');
    const signing = canarySigningOf({
      signer: new ReleaseSigner({ releases: store, registry, clock, logger, automationSigner: automation.signer }),
      fleet,
      registry,
      logger,
      release: new RetrainedReleaseData({
        registry,
        artifacts: { fileOf: (sha) => join(artifacts, sha) },
        snapshots: rig.cp.datasets,
        sessions: new OnnxRuntimeSessions(),
        logger,
      }),
    });
    return { signing, store, root, rootBytes, clock, lines, artifacts, removeArtifacts: () => rmSync(artifacts, { recursive: true }), close: () => db.close() };
  }

  it("canarySigningOf signs v2 for the cohort's devices with golden vectors from its test rows: they pass the agent's self-test on v2 and fail on v1", async () => {
    const { signing, store, root, rootBytes, clock, artifacts, close } = await signingRig('releases');
    expect(await signing.signCanary({ model: 'vibration', version: 2, audience: 'site=north' })).toEqual({ state: 'signed' });

    const v2 = await registry.resolve('vibration', 2);
    const { model } = await store.desiredModel(v2);
    const manifest = verifyRelease(model.envelope, root, clock, { deviceId: 'edge-a' }).manifest;
    expect(manifest.audience).toEqual(['edge-a', 'edge-b']);
    expect(() => verifyRelease(model.envelope, root, clock, { deviceId: 'edge-c' })).toThrow(expect.objectContaining({ code: 'RELEASE_NOT_IN_AUDIENCE' }));
    expect(manifest.lineage).toMatchObject({ parentVersion: 1, dataSha256: dataset.sha256, job: trained.jobId });
    expect(manifest.examples).toEqual([{ features: { type: 'float32', dims: [1, 8] } }]);
    expect(manifest.golden.tolerance).toEqual({ abs: 1e-4, rel: 1e-3 });
    expect(manifest.golden.vectors).toHaveLength(3);
    manifest.golden.vectors.forEach((v, i) => expect(v.inputs.features!.data).toEqual(Array.from(test.x.subarray(i * 8, (i + 1) * 8))));
    const v2Reference = parseReference(v2.metadata[REFERENCE_METADATA_KEY]!);
    expect(manifest.reference).toEqual({
      rows: v2Reference.rows,
      dataSha256: dataset.sha256,
      features: v2Reference.features.map((f) => ({ name: f.name, edges: f.edges, counts: f.counts })),
    });

    const runtime = createOnnxRuntime({ logger: silentLogger() });
    await runGoldenSelfTest(runtime, ['cpu'], join(artifacts, sha256(trained.candidate)), manifest.golden);
    const onV1 = await runGoldenSelfTest(runtime, ['cpu'], join(artifacts, sha256(BASE_MODEL)), manifest.golden).then(
      () => 'passed',
      (err: unknown) => (err as DriftlineError).code,
    );
    expect(onV1).toBe('RELEASE_SELF_TEST_FAILED');

    // A real agent in the cohort (pinned root, download, verify, warm-up on the examples, golden self-test, swap) runs the canary.
    const server = new ArtifactTestServer();
    await server.start();
    server.serve(v2.sha256, trained.candidate);
    const home = join(dir, 'edge-a');
    mkdirSync(home, { recursive: true });
    const agentLog = capturingLogger();
    const agentRuntime = createOnnxRuntime({ logger: agentLog.logger });
    const buffer = SqliteBuffer.open({ file: join(home, 'buffer.db'), synchronous: 'NORMAL' });
    const engine = InferenceEngine.create({ runtime: agentRuntime, providers: ['cpu'], logger: agentLog.logger, clock, intraOpThreads: 1 });
    const pinned = PinnedRoot.open(home);
    pinned.pin(rootBytes, clock);
    const selfTests: number[] = [];
    const manager = new ModelManager({
      modelsDir: join(home, 'models'),
      host: engine,
      state: buffer.state,
      artifactBaseUrl: server.url,
      credential: { username: 'edge-a', password: 'secret' },
      downloadTimeoutMs: 30_000,
      maxModelBytes: 64 * 1024 * 1024,
      activationRetries: 1,
      logger: agentLog.logger,
      clock,
      trust: pinned,
      device: { deviceId: 'edge-a', arch: 'x86_64', providers: ['cpu'], memoryBytes: 8 * 1024 ** 3 },
      selfTest: async (path, golden) => {
        selfTests.push(golden.vectors.length);
        await runGoldenSelfTest(agentRuntime, ['cpu'], path, golden);
      },
      onChange: () => {},
    });
    try {
      const { model: desired, rootChain } = await store.desiredModel(v2);
      await manager.apply(DesiredState.fromPartial({ revision: 1, model: { ...desired, rollback: Buffer.alloc(0) }, rootChain, rollback: Buffer.alloc(0) }));
      expect(manager.error).toBeUndefined();
      expect(engine.active()).toMatchObject({ name: 'vibration', version: 2 });
      expect(selfTests).toEqual([3]);
    } finally {
      await engine.shutdown({ graceMs: 0 });
      await buffer.close();
      await server.close();
    }
    close();
  }, 60_000);

  it('canarySigningOf: a cohort with no devices awaits a signature and signs nothing; without a trust root the version rolls out unsigned (logged)', async () => {
    const trusted = await signingRig('empty-cohort');
    expect(await trusted.signing.signCanary({ model: 'vibration', version: 2, audience: 'site=west' })).toEqual({ state: 'awaiting-signature' });
    expect((await trusted.store.desiredModel(await registry.resolve('vibration', 2))).model.envelope).toHaveLength(0);
    trusted.close();

    const unsigned = await signingRig('untrusted', { trusted: false });
    expect(await unsigned.signing.signCanary({ model: 'vibration', version: 2, audience: 'site=north' })).toEqual({ state: 'signed' });
    expect(unsigned.lines.some((l) => String(l.msg).includes('rolls out unsigned'))).toBe(true);
    unsigned.close();
  }, 60_000);

  it('canarySigningOf: release data that cannot be read (the artifact is gone) is logged and the canary is signed without golden vectors', async () => {
    const { signing, store, root, clock, lines, removeArtifacts, close } = await signingRig('no-artifacts');
    removeArtifacts();
    expect(await signing.signCanary({ model: 'vibration', version: 2, audience: 'site=north' })).toEqual({ state: 'signed' });
    const manifest = verifyRelease((await store.desiredModel(await registry.resolve('vibration', 2))).model.envelope, root, clock, {
      deviceId: 'edge-b',
    }).manifest;
    expect(manifest.golden.vectors).toEqual([]);
    expect(manifest.examples).toBeUndefined();
    expect(lines.some((l) => String(l.msg).includes('no golden vectors'))).toBe(true);
    close();
  }, 60_000);

  it('a parent without a drift reference gives the retrained version none, and says so in the log', async () => {
    const { logger, lines } = capturingLogger();
    const withoutReference = {
      resolve: async (name: string, version: number): Promise<ModelVersion> => {
        const found = await registry.resolve(name, version);
        return { ...found, metadata: Object.fromEntries(Object.entries(found.metadata).filter(([k]) => k !== REFERENCE_METADATA_KEY)) };
      },
    };
    const data = new RetrainedReleaseData({
      registry: withoutReference,
      artifacts: { fileOf: () => join(dir, 'never-read') },
      snapshots: rig.cp.datasets,
      sessions: new OnnxRuntimeSessions(),
      logger,
    });
    expect(
      await data.referenceFor({ model: 'vibration', parentVersion: 1, datasetId: dataset.id, candidateSha256: sha256(trained.candidate) }),
    ).toBeUndefined();
    expect(lines.some((l) => String(l.msg).includes('the parent version has no drift reference'))).toBe(true);
  });

  it('the reference is bounded: at most maxReferenceRows training rows are counted', async () => {
    const data = new RetrainedReleaseData({
      registry,
      artifacts: { fileOf: () => join(dir, 'bounded', sha256(trained.candidate)) },
      snapshots: rig.cp.datasets,
      sessions: new OnnxRuntimeSessions(),
      logger: silentLogger(),
      maxReferenceRows: 100,
    });
    mkdirSync(join(dir, 'bounded'), { recursive: true });
    writeFileSync(join(dir, 'bounded', sha256(trained.candidate)), trained.candidate);
    const reference = parseReference(
      (await data.referenceFor({ model: 'vibration', parentVersion: 1, datasetId: dataset.id, candidateSha256: sha256(trained.candidate) }))!,
    );
    expect(reference.rows).toBe(100);
    const rows = rowsOf(train, 100);
    reference.features.forEach((f, j) =>
      expect(f.counts).toEqual(
        countOnEdges(
          rows.map((r) => r[j]!),
          f.edges,
        ),
      ),
    );
    expect(reference.classes.counts.reduce((a, b) => a + b, 0)).toBe(100);
  });
});
