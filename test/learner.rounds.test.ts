import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpHeadSource } from '../agent/learner/http/head-download.js';
import { InferenceLatency } from '../agent/learner/inference-latency.js';
import { FederatedLearner, type LearnerOptions } from '../agent/learner/learner.js';
import { OnnxBackboneSource } from '../agent/learner/onnxruntime/backbone.js';
import { SqliteLearnerStore } from '../agent/learner/sqlite/learner-store.js';
import { systemClock } from '../common/clock.js';
import { encodeHead, flattenHead, unflattenHead } from '../common/federated/head-vector.js';
import { decodeUpdate, l2Norm } from '../common/federated/update-codec.js';
import { learnerGuardsSchema, type LearnerGuards } from '../common/firmware-profile.js';
import { evaluateHead, type DenseLayer } from '../common/learning/dense-head.js';
import { silentLogger } from '../common/logger.js';
import { findClassifierHead } from '../common/onnx/classifier-head.js';
import { FederatedInvitation_Kind, type FederatedReport } from '../common/proto/driftline/v1/device_link.js';
import { generateVibrationData } from '../demo/model/vibration-data.js';
import { demoModelBytes, modelFolder, type ModelFolder } from './fixtures/models.js';
import { featuresInput, startHeadServer, trainInvitation, type HeadServer } from './helpers/learner-rig.js';

const DEVICE = { id: 'edge-learner', secret: 'secret-of-edge-learner' };
const MODEL_BYTES = demoModelBytes(5);

describe('learner - federated rounds on the device', () => {
  let dir: string;
  let models: ModelFolder;
  let heads: HeadServer;
  let store: SqliteLearnerStore;
  let modelFile: { path: string; sha256: string };
  /** The model's own last layer (a good head) and a zero head (a bad one), as artifacts. */
  let goodHead: { sha256: string; size: number; path: string };
  let zeroHead: { sha256: string; size: number; path: string };
  let zeroLayers: DenseLayer[];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-learner-rounds-'));
    models = await modelFolder();
    modelFile = await models.write('vibration.onnx', MODEL_BYTES);
    heads = await startHeadServer(DEVICE);
    const own = findClassifierHead(MODEL_BYTES, { maxLayers: 1 }).layers;
    goodHead = await heads.store(encodeHead(own));
    zeroLayers = own.map((l) => ({ ...l, weights: new Float32Array(l.weights.length), bias: new Float32Array(l.bias.length) }));
    zeroHead = await heads.store(encodeHead(zeroLayers));
    store = SqliteLearnerStore.open({
      file: join(dir, 'learner.db'),
      maxSamples: 10_000,
      maxBytes: 64 << 20,
      maxSampleBytes: 4096,
      embeddingCacheRows: 10_000,
      reportMemory: 100,
    });
    // 400 labelled samples as the local API would have kept them: inputs by request id, then their feedback.
    const data = generateVibrationData({ rows: 400, seed: 77 });
    for (let r = 0; r < 400; r++) {
      store.add({ id: `req-${r}`, model: 'vibration', version: 1, inputs: featuresInput(data.x.subarray(r * 8, r * 8 + 8)) });
      store.label(`req-${r}`, 'vibration', data.y[r]!);
    }
  });

  afterAll(async () => {
    store?.close();
    await heads?.close();
    await models?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function learner(overrides: { guards?: Partial<LearnerGuards>; minSamples?: number; temperature?: number; latency?: InferenceLatency } = {}) {
    const reports: FederatedReport[] = [];
    const options: LearnerOptions = {
      samples: store,
      embeddings: store,
      reports: store.reportMemory(),
      backbones: new OnnxBackboneSource((name, version) => (name === 'vibration' && version === 1 ? modelFile : undefined)),
      heads: new HttpHeadSource({
        artifactBaseUrl: heads.url,
        credential: { username: DEVICE.id, password: DEVICE.secret },
        dir: join(dir, `heads-${Math.random().toString(36).slice(2)}`),
        maxHeadBytes: 1 << 20,
        timeoutMs: 30_000,
      }),
      publish: async (report) => void reports.push(report),
      latency: overrides.latency ?? new InferenceLatency(systemClock),
      guards: { ...learnerGuardsSchema.parse({}), ...overrides.guards },
      minSamples: overrides.minSamples ?? 32,
      maxSamplesPerRound: 10_000,
      temperature: async () => overrides.temperature,
      clock: systemClock,
      logger: silentLogger(),
    };
    return { learner: new FederatedLearner(options), reports };
  }

  let taskSeq = 0;
  const task = () => `task-${++taskSeq}`;

  it('KIND_TRAIN - trains the global head on the train split and answers with an update that lowers the loss', async () => {
    const { learner: l, reports } = learner();
    const invitation = trainInvitation(zeroHead, { taskId: task(), localEpochs: 3, learningRate: 0.1, batchSize: 16 });
    await l.handle(invitation);
    expect(reports).toHaveLength(1);
    const report = reports[0]!;
    expect(report).toMatchObject({
      taskId: invitation.taskId,
      round: 1,
      kind: FederatedInvitation_Kind.KIND_TRAIN,
      headSha256: zeroHead.sha256,
      headVersion: 1,
      errorCode: '',
    });
    expect(report.sampleCount).toBe(store.count('vibration', 'train'));
    expect(report.sampleCount).toBeLessThan(400);
    expect(report.cpuMs).toBeGreaterThan(0);
    expect(report.wallMs).toBeGreaterThan(0);
    // The update, applied to the starting head, is a head that fits the training rows better.
    const start = flattenHead(zeroLayers);
    const delta = decodeUpdate(report.update!, start.length);
    const trained = unflattenHead(
      start.map((v, i) => v + delta[i]!),
      zeroLayers,
    );
    const backbone = await new OnnxBackboneSource(() => modelFile).open('vibration', 1, 1);
    const train = store.labelled('vibration', 'train', 10_000);
    const x = new Float32Array(train.length * backbone.features);
    for (let i = 0; i < train.length; i++) x.set(await backbone.embed(train[i]!.inputs), i * backbone.features);
    await backbone.close();
    const rows = { x, y: Int32Array.from(train, (s) => s.label), rows: train.length, features: backbone.features };
    expect(evaluateHead(trained, rows).loss).toBeLessThan(evaluateHead(zeroLayers, rows).loss * 0.7);
    expect(report.trainLoss).toBeGreaterThan(0);
    const round = l.stats().rounds[0]!;
    expect(round.slices).toBeGreaterThanOrEqual(3 * Math.ceil(report.sampleCount / (16 * 4)));
    expect(round.embeddedNow + round.embeddingsCached).toBe(report.sampleCount);
  });

  it('KIND_TRAIN replayed - answers again with the same report and does not train or download twice', async () => {
    const { learner: l, reports } = learner();
    const invitation = trainInvitation(zeroHead, { taskId: task() });
    await l.handle(invitation);
    const downloads = heads.downloads;
    await l.handle(invitation);
    await l.handle({ ...invitation });
    expect(reports).toHaveLength(3);
    expect(reports[1]).toEqual(reports[0]);
    expect(reports[2]).toEqual(reports[0]);
    expect(l.stats()).toMatchObject({ replays: 2 });
    expect(l.stats().rounds).toHaveLength(1);
    expect(heads.downloads).toBe(downloads);
    // A learner restarted on the same store still remembers the answer.
    const again = learner();
    await again.learner.handle(invitation);
    expect(again.reports).toEqual([reports[0]]);
    expect(again.learner.stats().rounds).toHaveLength(0);
    // The embeddings were cached by (model sha256, sample id): a new round embeds nothing again.
    await l.handle(trainInvitation(zeroHead, { taskId: task() }));
    expect(l.stats().rounds[1]).toMatchObject({ embeddedNow: 0 });
  });

  it('KIND_TRAIN - clips the update to clipping_norm and encodes it as update_compression asks', async () => {
    const { learner: l, reports } = learner();
    await l.handle(trainInvitation(zeroHead, { taskId: task(), clippingNorm: 0.05, updateCompression: 'int8', learningRate: 0.2 }));
    const update = reports[0]!.update!;
    expect(update.encoding).toBe('int8');
    const delta = decodeUpdate(update, flattenHead(zeroLayers).length);
    // int8 with stochastic rounding: within one quantum per element of the clipped norm.
    expect(l2Norm(delta)).toBeLessThanOrEqual(0.05 + update.scale * Math.sqrt(delta.length));
    expect(l2Norm(delta)).toBeGreaterThan(0.03);
  });

  it('KIND_EVALUATE - scores the head on the held-out samples only, with per-class support and correct answers', async () => {
    const { learner: l, reports } = learner();
    const id = task();
    const base = trainInvitation(goodHead, { taskId: id, kind: FederatedInvitation_Kind.KIND_EVALUATE });
    await l.handle(base);
    await l.handle({ ...trainInvitation(zeroHead, { taskId: id, round: 2, kind: FederatedInvitation_Kind.KIND_EVALUATE }) });
    const [good, zero] = reports;
    const heldOut = store.count('vibration', 'held-out');
    expect(heldOut).toBeGreaterThan(20);
    for (const r of [good!, zero!]) {
      expect(r.errorCode).toBe('');
      expect(r.evalSamples).toBe(heldOut);
      expect(r.perClassSupport.reduce((a, b) => a + b, 0)).toBe(heldOut);
      expect(r.perClassCorrect.reduce((a, b) => a + b, 0)).toBe(r.evalCorrect);
      r.perClassCorrect.forEach((c, i) => expect(c).toBeLessThanOrEqual(r.perClassSupport[i]!));
    }
    const labels = store.labelled('vibration', 'held-out', 10_000).map((s) => s.label);
    expect(good!.perClassSupport).toEqual([0, 1, 2, 3].map((c) => labels.filter((y) => y === c).length));
    // The model's own head is good on its data; a zero head is uniform (loss ln 4).
    expect(good!.evalCorrect / good!.evalSamples).toBeGreaterThan(0.8);
    expect(zero!.evalLoss).toBeCloseTo(Math.log(4), 5);
    expect(good!.evalLoss).toBeLessThan(zero!.evalLoss);
  });

  it('guards - declines with LEARNER_NOT_ALLOWED (disabled, too hot, outside its window, busy), LEARNER_NOT_ENOUGH_SAMPLES and LEARNER_NO_HEAD', async () => {
    const now = new Date();
    const hour = (now.getUTCHours() + 2) % 24;
    const window = `${String(hour).padStart(2, '0')}:00-${String((hour + 1) % 24).padStart(2, '0')}:00`;
    const busy = new InferenceLatency(systemClock);
    for (let i = 0; i < 600; i++) busy.observe(1);
    const cases: Array<[string, ReturnType<typeof learner>, Partial<Parameters<typeof trainInvitation>[1]>]> = [
      ['LEARNER_NOT_ALLOWED', learner({ guards: { enabled: false } }), {}],
      ['LEARNER_NOT_ALLOWED', learner({ guards: { maxTemperatureC: 70 }, temperature: 81 }), {}],
      ['LEARNER_NOT_ALLOWED', learner({ guards: { timeWindows: [window] } }), {}],
      ['LEARNER_NOT_ALLOWED', learner({ guards: { maxInferencesPerSecond: 2 }, latency: busy }), {}],
      ['LEARNER_NOT_ENOUGH_SAMPLES', learner({ minSamples: 10_000 }), {}],
      ['LEARNER_NO_HEAD', learner(), { version: 2 }],
      ['FEDERATED_TASK_INVALID', learner(), { updateCompression: 'bfloat16' }],
    ];
    for (const [code, { learner: l, reports }, overrides] of cases) {
      await l.handle(trainInvitation(zeroHead, { taskId: task(), ...overrides }));
      expect(
        reports.map((r) => r.errorCode),
        code,
      ).toEqual([code]);
      expect(reports[0]!.update).toBeUndefined();
      expect(reports[0]!.message.length).toBeGreaterThan(0);
    }
    // Inside its window, cool enough and idle enough: it trains.
    const allowed = learner({
      guards: {
        timeWindows: [`${String(now.getUTCHours()).padStart(2, '0')}:00-${String((now.getUTCHours() + 1) % 24).padStart(2, '0')}:00`],
        maxTemperatureC: 90,
      },
      temperature: 60,
    });
    await allowed.learner.handle(trainInvitation(zeroHead, { taskId: task() }));
    expect(allowed.reports[0]!.errorCode).toBe('');
  });

  it('budget - stops a round past its CPU-time cap and refuses one whose memory would pass its cap, with LEARNER_BUDGET_EXCEEDED', async () => {
    const cpu = learner({ guards: { cpuTimePerRound: 1 } });
    await cpu.learner.handle(trainInvitation(zeroHead, { taskId: task(), localEpochs: 50 }));
    expect(cpu.reports[0]).toMatchObject({ errorCode: 'LEARNER_BUDGET_EXCEEDED' });
    expect(cpu.reports[0]!.cpuMs).toBeGreaterThan(1);
    const memory = learner({ guards: { memoryPerRound: 1024 } });
    await memory.learner.handle(trainInvitation(zeroHead, { taskId: task() }));
    expect(memory.reports[0]).toMatchObject({ errorCode: 'LEARNER_BUDGET_EXCEEDED' });
    expect(memory.learner.stats().rounds[0]).toMatchObject({ slices: 0, embeddedNow: 0 });
  });

  it('a head that does not match its announced size and sha256 is refused (MODEL_CHECKSUM_MISMATCH); a late invitation is not started; a cancel stops the task', async () => {
    const { learner: l, reports } = learner();
    // The server sends more bytes than the invitation announced: cut off, nothing decoded.
    await l.handle(trainInvitation(zeroHead, { taskId: task(), headSizeBytes: zeroHead.size - 1 }));
    expect(reports.map((r) => r.errorCode)).toEqual(['MODEL_CHECKSUM_MISMATCH']);
    await l.handle(trainInvitation(zeroHead, { taskId: task(), deadlineMs: Date.now() - 1 }));
    expect(reports).toHaveLength(1);
    expect(l.stats().late).toBe(1);
    // A cancel that comes while the round trains stops it at the next slice, with no answer.
    const id = task();
    const running = l.handle(trainInvitation(zeroHead, { taskId: id, localEpochs: 200 }));
    await new Promise<void>((resolve) => setImmediate(resolve));
    const waitUntilTraining = async (): Promise<void> => {
      while ((l.stats().rounds.at(-1)?.slices ?? 0) === 0) await new Promise<void>((resolve) => setImmediate(resolve));
    };
    await waitUntilTraining();
    await l.handle(trainInvitation(zeroHead, { taskId: id, kind: FederatedInvitation_Kind.KIND_CANCEL }));
    await running;
    expect(l.stats().rounds.at(-1)).toMatchObject({ outcome: 'cancelled' });
    expect(l.stats().rounds.at(-1)!.slices).toBeLessThan(200);
    expect(reports).toHaveLength(1);
    // And the cancelled task takes no new work.
    await l.handle(trainInvitation(zeroHead, { taskId: id, round: 2 }));
    expect(reports).toHaveLength(1);
  });

  it('latency bound - pauses training while inference p95 during training exceeds the factor times the p95 before it, and only then', async () => {
    const run = async (duringMs: number) => {
      const latency = new InferenceLatency(systemClock);
      for (let i = 0; i < 50; i++) latency.observe(2);
      const { learner: l, reports } = learner({ latency, guards: { inferenceP95Factor: 1.5, pause: 5, batchesPerSlice: 1 } });
      // Inference keeps answering while the learner trains: every turn of the event loop, one answer of duringMs.
      let training = true;
      const traffic = (async () => {
        while (training) {
          latency.observe(duringMs);
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
      })();
      await l.handle(trainInvitation(zeroHead, { taskId: task(), localEpochs: 2 }));
      training = false;
      await traffic;
      return { round: l.stats().rounds[0]!, report: reports[0]! };
    };
    const slow = await run(8);
    expect(slow.report.errorCode).toBe('');
    expect(slow.round.baselineP95Ms).toBe(2);
    expect(slow.round.inferenceP95Ms).toBe(8);
    expect(slow.report.inferenceP95Ms).toBe(8);
    expect(slow.round.overBound).toBeGreaterThan(0);
    expect(slow.round.pauses).toBe(slow.round.overBound);
    const fast = await run(2.5);
    expect(fast.report.errorCode).toBe('');
    expect(fast.round.inferenceP95Ms).toBe(2.5);
    expect(fast.round.overBound).toBe(0);
    expect(fast.round.pauses).toBe(0);
  });
});
