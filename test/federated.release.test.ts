/**
 * The end of a federated task over one real SQLite file, the real registry and artifact store,
 * the real release store and signer (a trust root delegating the model to an automation key), the
 * real rollout engine and onnxruntime: the gate refuses a worse head (no version), a passing head
 * becomes v2 (v1's ONNX with the head written in: onnxruntime computes exactly the head's math),
 * its lineage is in the signed canary manifest for the task's cohort, its golden vectors are
 * recorded on v1's example inputs, and the canary rollout starts once, whatever the retries.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { REFERENCE_METADATA_KEY, buildReference, serializeReference } from '../common/drift/reference.js';
import { headProbabilities, type DenseLayer } from '../common/learning/dense-head.js';
import { silentLogger } from '../common/logger.js';
import { buildModel } from '../common/onnx/builder.js';
import { findClassifierHead } from '../common/onnx/classifier-head.js';
import { ReportedState } from '../common/proto/driftline/v1/device_link.js';
import { seededRandom } from '../common/seeded-random.js';
import { buildManifest, signManifestBytes, verifyRelease } from '../common/trust/manifest.js';
import { signRootBytes } from '../common/trust/root.js';
import type { FederatedEvaluationCounts, FederatedJudgeInput, FederatedRegisterInput } from '../control-plane/federated/ports.js';
import { FederatedReleaseData, releaseStoreManifests } from '../control-plane/federated/release/federated-release-data.js';
import { FederatedRelease } from '../control-plane/federated/release/federated-release.js';
import { normalizeFederatedGates } from '../control-plane/federated/release/federated-judge.js';
import { DesiredStates } from '../control-plane/fleet/desired-states.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { ModelRegistry } from '../control-plane/registry/model-registry.js';
import { ReleaseSigner } from '../control-plane/registry/release-signing.js';
import { ReleaseStore } from '../control-plane/registry/release-store.js';
import { RolloutEngine } from '../control-plane/rollout/engine.js';
import { DesiredStatePublisher, FleetStoreView, RegistryCatalog } from '../control-plane/rollout/fleet-adapters.js';
import { SqliteCohortMetrics } from '../control-plane/store/sqlite/cohort-metrics.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { SqliteModelVersionRepository } from '../control-plane/store/sqlite/model-version-repository.js';
import { SqliteReleaseRepository } from '../control-plane/store/sqlite/release-repository.js';
import { SqliteRetrainingPolicyRepository } from '../control-plane/store/sqlite/retraining-policy-repository.js';
import { SqliteRolloutRepository } from '../control-plane/store/sqlite/rollout-repository.js';
import { OnnxRuntimeSessions } from '../control-plane/training/onnxruntime/ort-sessions.js';
import { parseRetrainingPolicy } from '../control-plane/training/retraining-policy.js';
import { canarySigningOf } from '../control-plane/training/wiring.js';
import { newKey, testTrust } from './helpers/releases.js';
import { chunksOf, sha256 } from './helpers/training.js';

const MODEL = 'clf';
const FEATURES = 4;
const EMBEDDING = 5;
const HIDDEN = 6;
const CLASSES = 3;
const START = Date.UTC(2026, 0, 5);
const HOUR = 3_600_000;
const NORTH = ['n-1', 'n-2', 'n-3', 'n-4'];
const SOUTH = ['s-1', 's-2'];

const random = seededRandom(11);
const values = (n: number) => Array.from({ length: n }, () => Number(random.uniform(-1, 1).toFixed(3)));
/** The frozen body: features × BODY → ReLU (a MatMul without Add is not a dense layer: the head stops above it). */
const BODY = values(FEATURES * EMBEDDING);
const W1 = values(HIDDEN * EMBEDDING);
const B1 = values(HIDDEN);
const W2 = values(CLASSES * HIDDEN);
const B2 = values(CLASSES);

/** v1: a frozen body, then a two-layer dense head (Gemm transB=1, ReLU, Gemm transB=1), then Softmax. */
const V1 = buildModel({
  name: MODEL,
  inputs: [{ name: 'features', type: 'float32', shape: ['batch', FEATURES] }],
  outputs: [{ name: 'probabilities', type: 'float32', shape: ['batch', CLASSES] }],
  nodes: [
    { op: 'MatMul', inputs: ['features', 'body'], outputs: ['pre'] },
    { op: 'Relu', inputs: ['pre'], outputs: ['embedding'] },
    { op: 'Gemm', inputs: ['embedding', 'w1', 'b1'], outputs: ['h1'], attributes: { transB: { int: 1 } } },
    { op: 'Relu', inputs: ['h1'], outputs: ['a1'] },
    { op: 'Gemm', inputs: ['a1', 'w2', 'b2'], outputs: ['logits'], attributes: { transB: { int: 1 } } },
    { op: 'Softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: { int: 1 } } },
  ],
  initializers: [
    { name: 'body', type: 'float32', dims: [FEATURES, EMBEDDING], values: BODY },
    { name: 'w1', type: 'float32', dims: [HIDDEN, EMBEDDING], values: W1 },
    { name: 'b1', type: 'float32', dims: [HIDDEN], values: B1 },
    { name: 'w2', type: 'float32', dims: [CLASSES, HIDDEN], values: W2 },
    { name: 'b2', type: 'float32', dims: [CLASSES], values: B2 },
  ],
});

/** The trained head: v1's with every parameter moved (what the rounds aggregated). */
function trainedHead(): DenseLayer[] {
  const move = (v: readonly number[]) => Float32Array.from(v, (x, i) => x + 0.25 * Math.sin(i + 1));
  return [
    { inputs: EMBEDDING, outputs: HIDDEN, weights: move(W1), bias: move(B1) },
    { inputs: HIDDEN, outputs: CLASSES, weights: move(W2), bias: move(B2) },
  ];
}

/** The head's math without ONNX: the body in plain arithmetic, then headProbabilities. */
function expectedProbabilities(head: readonly DenseLayer[], x: Float32Array, rows: number): Float32Array {
  const embedding = new Float32Array(rows * EMBEDDING);
  for (let r = 0; r < rows; r++) {
    for (let e = 0; e < EMBEDDING; e++) {
      let sum = 0;
      for (let f = 0; f < FEATURES; f++) sum += x[r * FEATURES + f]! * BODY[f * EMBEDDING + e]!;
      embedding[r * EMBEDDING + e] = Math.max(0, sum);
    }
  }
  return headProbabilities(head, embedding, rows);
}

/** Summed evaluation counts of `correct` right answers out of 120 samples (40 per class). */
function counts(correctPerClass: [number, number, number]): FederatedEvaluationCounts {
  return {
    devices: NORTH.length,
    samples: 120,
    correct: correctPerClass.reduce((a, b) => a + b, 0),
    loss: 1 - correctPerClass.reduce((a, b) => a + b, 0) / 200,
    perClassSupport: [40, 40, 40],
    perClassCorrect: [...correctPerClass],
  };
}

const LINEAGE = { taskId: 'fl_task1', rounds: 5, clientsPerRound: 4, strategy: 'fedavg', mode: 'sync', epsilon: 2.5, delta: 1e-5 };
/** v1's signed example: the golden vectors of v2 are recorded on exactly these values. */
const EXAMPLE = [0.5, -0.25, 1, 0.75];

interface Rig {
  dir: string;
  clock: ManualClock;
  db: Database;
  registry: ModelRegistry;
  releases: ReleaseStore;
  rollouts: RolloutEngine;
  policies: SqliteRetrainingPolicyRepository;
  release: FederatedRelease;
  root: ReturnType<ReturnType<typeof testTrust>['metadata']>;
  sent: string[];
}

async function rig(): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-fedrelease-'));
  const clock = new ManualClock(START);
  const logger = silentLogger();
  const db = openDatabase(join(dir, 'control-plane.db'));
  const fleet = new FleetStore(new SqliteFleetRepository(db));
  const artifacts = new ArtifactStore(join(dir, 'artifacts'));
  const registry = new ModelRegistry({ versions: new SqliteModelVersionRepository(db), artifacts, clock, maxModelBytes: 1 << 24 });
  const trust = testTrust(clock.now());
  const automation = newKey();
  const root = trust.metadata(1, { automationKeys: { [automation.keyId]: { publicKey: automation.publicKey, scope: { models: [MODEL], maxDevices: 8 } } } });
  const releases = new ReleaseStore({
    releases: new SqliteReleaseRepository(db),
    clock,
    logger,
    rootChain: [
      signRootBytes(
        root,
        trust.rootKeys.slice(0, 2).map((k) => k.signer),
      ),
    ],
    registry,
  });
  const bytesOf = (sha: string) => readFile(artifacts.fileOf(sha));
  const signing = canarySigningOf({
    signer: new ReleaseSigner({ releases, registry, clock, logger, automationSigner: automation.signer }),
    fleet,
    registry,
    releases,
    logger,
    release: new FederatedReleaseData({ registry, bytesOf, sessions: new OnnxRuntimeSessions(), parents: releaseStoreManifests(releases), logger }),
  });
  const sent: string[] = [];
  let ids = 0;
  const rollouts = new RolloutEngine({
    repository: new SqliteRolloutRepository(db),
    fleet: new FleetStoreView(fleet),
    metrics: new SqliteCohortMetrics(db),
    publisher: new DesiredStatePublisher({
      fleet,
      registry,
      desiredStates: new DesiredStates({ fleet, link: { sendDesired: async (deviceId) => void sent.push(deviceId) }, logger }),
      rollbackTtlMs: HOUR,
      logger,
    }),
    catalog: new RegistryCatalog(registry),
    clock,
    logger,
    newId: () => `ro_fed${++ids}`,
  });
  const policies = new SqliteRetrainingPolicyRepository(db);
  const release = new FederatedRelease({
    registry,
    modelBytes: async (model, version) => bytesOf((await registry.resolve(model, version)).sha256),
    rollouts,
    policies,
    signing,
    limits: { minSplitRows: 50 },
    clock,
    logger,
  });

  // v1: an operator's upload with a drift reference, signed fleet-wide by the release key with an example input.
  const reference = serializeReference(
    buildReference(
      Array.from({ length: 50 }, () => values(FEATURES)),
      { featureNames: ['a', 'b', 'c', 'd'], classNames: ['x', 'y', 'z'], bins: 4, input: 'features' },
    ),
  );
  const v1 = await registry.upload(
    { name: MODEL, sizeBytes: V1.length, sha256: sha256(V1), description: 'v1', metadata: { [REFERENCE_METADATA_KEY]: reference } },
    chunksOf(V1),
  );
  const manifest = buildManifest({
    type: 'driftline-release',
    name: MODEL,
    version: 1,
    artifact: { sha256: v1.sha256, sizeBytes: v1.sizeBytes },
    opset: v1.opset,
    inputs: v1.inputs.map((t) => ({ name: t.name, type: t.type, shape: [...t.shape] })),
    outputs: v1.outputs.map((t) => ({ name: t.name, type: t.type, shape: [...t.shape] })),
    examples: [{ features: { type: 'float32', dims: [1, FEATURES], data: EXAMPLE } }],
    golden: { tolerance: { abs: 1e-4, rel: 1e-3 }, vectors: [] },
    createdAtMs: clock.now(),
  });
  await releases.publish(MODEL, 1, signManifestBytes(manifest, trust.release.signer));

  for (const [ids, cohort] of [
    [NORTH, 'north'],
    [SOUTH, 'south'],
  ] as const) {
    for (const id of ids) {
      const { token } = await fleet.createEnrollmentToken(id, { cohort }, clock.now() + HOUR, clock.now());
      await fleet.enroll({ token, deviceId: id, firmwareProfile: 'x86-cpu' }, clock.now());
      await fleet.saveReported(
        id,
        ReportedState.fromPartial({ firmwareProfile: 'x86-cpu', activeModel: { name: MODEL, version: 1, sha256: v1.sha256, provider: 'cpu' }, boot: 1 }),
        clock.now(),
      );
    }
  }
  return { dir, clock, db, registry, releases, rollouts, policies, release, root, sent };
}

describe('federated release - judge, register and release a federated head', () => {
  let r: Rig;
  beforeEach(async () => {
    r = await rig();
  });
  afterEach(() => {
    if (r.db.open) r.db.close();
    rmSync(r.dir, { recursive: true, force: true });
  });

  const judge = (candidate: FederatedEvaluationCounts, parent: FederatedEvaluationCounts): FederatedJudgeInput => ({
    taskId: LINEAGE.taskId,
    model: MODEL,
    baseVersion: 1,
    gates: normalizeFederatedGates([]),
    candidate,
    parent,
    nowMs: r.clock.now(),
  });
  const registration = async (head: DenseLayer[] = trainedHead()): Promise<FederatedRegisterInput> => ({
    model: MODEL,
    baseVersion: 1,
    headSha256: 'a'.repeat(64),
    layers: head,
    lineage: LINEAGE,
    evaluation: await r.release.judge(judge(counts([38, 35, 36]), counts([30, 25, 28]))),
  });

  it('federated release - the gate refuses a worse head: rejected, and register makes no version (FEDERATED_STATE_INVALID)', async () => {
    const report = await r.release.judge(judge(counts([20, 22, 25]), counts([30, 25, 28])));
    expect(report.verdict).toBe('fail');
    expect(report.reason).toMatch(/accuracy/);
    const input = { ...(await registration()), evaluation: report };
    await expect(r.release.register(input)).rejects.toMatchObject({ code: 'FEDERATED_STATE_INVALID' });
    expect((await r.registry.get(MODEL)).versions.map((v) => v.version)).toEqual([1]);
  });

  it('federated release - too few samples is inconclusive and no version either', async () => {
    const few = (c: number): FederatedEvaluationCounts => ({
      devices: 1,
      samples: 9,
      correct: c,
      loss: 0.5,
      perClassSupport: [3, 3, 3],
      perClassCorrect: [c, 0, 0],
    });
    const report = await r.release.judge(judge(few(3), few(1)));
    expect(report.verdict).toBe('inconclusive');
    await expect(r.release.register({ ...(await registration()), evaluation: report })).rejects.toMatchObject({ code: 'FEDERATED_STATE_INVALID' });
  });

  it('federated release - v2 is v1 with the trained head written in: onnxruntime answers exactly the head math, same signature, lineage in metadata', async () => {
    const input = await registration();
    expect(input.evaluation.verdict).toBe('pass');
    const { version } = await r.release.register(input);
    expect(version).toBe(2);
    const [v1, v2] = [await r.registry.resolve(MODEL, 1), await r.registry.resolve(MODEL, 2)];
    expect(v2.inputs).toEqual(v1.inputs);
    expect(v2.outputs).toEqual(v1.outputs);
    expect(v2.sha256).not.toBe(v1.sha256);

    const session = await new OnnxRuntimeSessions().open(await modelBytesOf(r, 2), 'v2');
    try {
      const rows = 8;
      const x = Float32Array.from(values(rows * FEATURES));
      const out = await session.run({ features: { type: 'float32', dims: [rows, FEATURES], data: x } });
      const expected = expectedProbabilities(trainedHead(), x, rows);
      const actual = Array.from(out.probabilities!.data as ArrayLike<number>);
      expect(actual).toHaveLength(expected.length);
      actual.forEach((p, i) => expect(p).toBeCloseTo(expected[i]!, 5));
      // And not v1's answers: the head really changed.
      const base = findClassifierHead(V1, { maxLayers: 2 }).layers;
      expect(Math.max(...actual.map((p, i) => Math.abs(p - expectedProbabilities(base, x, rows)[i]!)))).toBeGreaterThan(1e-3);
    } finally {
      await session.release();
    }
    expect(v2.metadata).toMatchObject({
      'lineage.parent_version': '1',
      'lineage.job_id': LINEAGE.taskId,
      'lineage.federated_task_id': LINEAGE.taskId,
      'evaluation.verdict': 'pass',
      // No central data: drift for v2 is judged against v1's reference.
      [REFERENCE_METADATA_KEY]: v1.metadata[REFERENCE_METADATA_KEY],
    });
    expect(JSON.parse(v2.metadata['lineage.federated']!)).toEqual(LINEAGE);
    expect(JSON.parse(v2.metadata['lineage.metrics']!)).toMatchObject({ rounds: 5, clients_per_round: 4, epsilon: 2.5, delta: 1e-5 });
    expect(v2.metadata['evaluation.notes']).toMatch(/calibration/);

    // A retry (a crash before the engine recorded the version) finds v2, registers no v3.
    expect(await r.release.register(input)).toEqual({ version: 2 });
    expect((await r.registry.get(MODEL)).versions.map((v) => v.version)).toEqual([1, 2]);
  });

  it('federated release - refuses a head that does not fit the base model or holds NaN, registering nothing', async () => {
    const [first, second] = trainedHead();
    const narrow: DenseLayer = { inputs: HIDDEN, outputs: CLASSES - 1, weights: second!.weights.slice(0, HIDDEN * 2), bias: second!.bias.slice(0, 2) };
    await expect(r.release.register(await registration([first!, narrow]))).rejects.toMatchObject({ code: 'MODEL_HEAD_UNSUPPORTED' });
    const poisoned = trainedHead();
    poisoned[1]!.weights[3] = Number.NaN;
    await expect(r.release.register(await registration(poisoned))).rejects.toMatchObject({ code: 'FEDERATED_UPDATE_NOT_FINITE' });
    expect((await r.registry.get(MODEL)).versions.map((v) => v.version)).toEqual([1]);
  });

  it('federated release - a signed canary for the cohort: lineage and golden vectors (on v1’s example) in the manifest, one rollout whatever the retries', async () => {
    await r.policies.save(
      MODEL,
      parseRetrainingPolicy({ onDrift: {}, job: { trainer: 'ts-dense-head' }, rollout: { waves: [50, 100], bake: '10m', minDevices: 1 } }),
      r.clock.now(),
      'tok_operator',
    );
    const { version } = await r.release.register(await registration());
    const input = { taskId: LINEAGE.taskId, model: MODEL, version, cohortSelector: 'cohort=north' };
    const released = await r.release.release(input);
    expect(released).toMatchObject({ state: 'rolling-out', version: 2, audience: 'cohort=north', rolloutId: 'ro_fed1', errorCode: '' });

    const rollout = await r.rollouts.get(released.rolloutId);
    expect(rollout.plan).toMatchObject({ model: MODEL, version: 2, target: 'cohort=north' });
    expect([...rollout.targets].sort()).toEqual(NORTH);
    expect(r.sent.length).toBeGreaterThan(0);
    for (const id of r.sent) expect(NORTH).toContain(id);

    const envelope = (await r.releases.envelopeOf(MODEL, 2))!;
    const { manifest, signedBy } = verifyRelease(envelope, r.root, r.clock, { deviceId: 'n-1' });
    expect(signedBy).toBe('automation-key');
    expect(manifest.audience).toEqual(NORTH);
    expect(() => verifyRelease(envelope, r.root, r.clock, { deviceId: 's-1' })).toThrow(expect.objectContaining({ code: 'RELEASE_NOT_IN_AUDIENCE' }));
    expect(manifest.lineage).toMatchObject({
      parentVersion: 1,
      job: LINEAGE.taskId,
      federated: LINEAGE,
      metrics: { rounds: 5, clients_per_round: 4, epsilon: 2.5 },
    });
    expect(manifest.examples).toEqual([{ features: { type: 'float32', dims: [1, FEATURES] } }]);
    expect(manifest.golden.vectors).toHaveLength(1);
    const [golden] = manifest.golden.vectors;
    expect(golden!.inputs.features!.data).toEqual(Array.from(Float32Array.from(EXAMPLE)));
    const expected = expectedProbabilities(trainedHead(), Float32Array.from(EXAMPLE), 1);
    (golden!.outputs.probabilities!.data as number[]).forEach((p, i) => expect(p).toBeCloseTo(expected[i]!, 5));

    // Asked again (the engine retries, or follows the canary): the same rollout, none started twice.
    expect(await r.release.release(input)).toMatchObject({ state: 'rolling-out', rolloutId: 'ro_fed1' });
    expect(await r.rollouts.list({ model: MODEL })).toHaveLength(1);

    // The canary aborts: the release says so.
    await r.rollouts.command('ro_fed1', 'abort', { actor: 'tok_operator', clientRequestId: '' }, 'north answers got worse');
    expect(await r.release.release(input)).toMatchObject({
      state: 'aborted',
      rolloutId: 'ro_fed1',
      reason: expect.stringContaining('north answers got worse'),
    });
  });

  it('federated release - a policy that does not roll out skips the canary; no rollout, no signature', async () => {
    await r.policies.save(
      MODEL,
      parseRetrainingPolicy({ onDrift: {}, job: { trainer: 'ts-dense-head' }, rollout: { enabled: false } }),
      r.clock.now(),
      'tok_operator',
    );
    const { version } = await r.release.register(await registration());
    expect(await r.release.release({ taskId: LINEAGE.taskId, model: MODEL, version, cohortSelector: 'cohort=north' })).toMatchObject({
      state: 'skipped',
      version: 2,
    });
    expect(await r.rollouts.list({ model: MODEL })).toEqual([]);
    expect(await r.releases.envelopeOf(MODEL, 2)).toBeUndefined();
  });
});

async function modelBytesOf(r: Rig, version: number): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  const stored = await r.registry.resolve(MODEL, version);
  for await (const chunk of new ArtifactStore(join(r.dir, 'artifacts')).read(stored.sha256)) chunks.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}
