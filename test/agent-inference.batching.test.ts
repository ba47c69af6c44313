import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchTimers } from '../agent/inference/batcher.js';
import { InferenceEngine, type BatchingOptions, type InferInput, type InferResult } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { DriftlineError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import {
  fixedBatchModelBytes,
  flattenModelBytes,
  perTensorBatchNamesModelBytes,
  scalarInputModelBytes,
  statefulModelBytes,
  tokensModelBytes,
} from './fixtures/inference-models.js';
import { demoModelBytes, modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
let folder: ModelFolder;
let demo: ModelFile;
let demoV2: ModelFile;
let stateful: ModelFile;
let tokens: ModelFile;
let fixed: ModelFile;
let perTensor: ModelFile;
let scalar: ModelFile;
let flatten: ModelFile;

beforeAll(async () => {
  folder = await modelFolder();
  demo = await folder.write('demo.onnx', demoModelBytes(1));
  demoV2 = await folder.write('demo-v2.onnx', demoModelBytes(2));
  stateful = await folder.write('stateful.onnx', statefulModelBytes());
  tokens = await folder.write('tokens.onnx', tokensModelBytes());
  fixed = await folder.write('fixed.onnx', fixedBatchModelBytes());
  perTensor = await folder.write('per-tensor.onnx', perTensorBatchNamesModelBytes());
  scalar = await folder.write('scalar.onnx', scalarInputModelBytes());
  flatten = await folder.write('flatten.onnx', flattenModelBytes());
});
afterAll(() => folder.remove());

const GREEDY: BatchingOptions = { defaultBatch: 1, maxBatch: 8, maxQueueDelayMs: 0, maxQueue: 256, concurrency: 1 };
const UNBATCHED: BatchingOptions = { ...GREEDY, maxBatch: 1 };

function newEngine(batching: BatchingOptions, timers?: BatchTimers): InferenceEngine {
  return InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger, batching, ...(timers ? { timers } : {}) });
}

/** Timers moved by hand: nothing fires until the test says so. */
function manualTimers(): BatchTimers & { advance(ms: number): void; armed(): number } {
  let now = 0;
  let pending: Array<{ at: number; fn: () => void }> = [];
  return {
    now: () => now,
    setTimeout(fn, ms) {
      const entry = { at: now + ms, fn };
      pending.push(entry);
      return () => {
        pending = pending.filter((p) => p !== entry);
      };
    },
    advance(ms) {
      now += ms;
      const due = pending.filter((p) => p.at <= now);
      pending = pending.filter((p) => p.at > now);
      for (const p of due) p.fn();
    },
    armed: () => pending.length,
  };
}

const features = (seed: number, rows: number): InferInput => ({
  name: 'features',
  datatype: 'FP32',
  shape: [rows, 8],
  data: Array.from({ length: rows * 8 }, (_, i) => Math.sin(seed * 31 + i)),
});

const plain = (result: InferResult) => result.outputs.map((o) => ({ name: o.name, shape: o.shape, data: Array.from(o.data as ArrayLike<number | bigint>) }));

async function failure(work: Promise<unknown>): Promise<DriftlineError> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DriftlineError);
  return err as DriftlineError;
}

describe('inference engine micro-batching', () => {
  it('batching - answers 64 concurrent requests of 1 to 3 rows exactly as unbatched runs do, in fewer runs', async () => {
    const batched = newEngine(GREEDY);
    const unbatched = newEngine(UNBATCHED);
    await batched.load({ name: 'vibration', version: 1, ...demo });
    await unbatched.load({ name: 'vibration', version: 1, ...demo });
    expect(batched.active()?.maxBatch).toBe(8);
    expect(unbatched.active()?.maxBatch).toBe(1);

    const requests = Array.from({ length: 64 }, (_, i) => [features(i, 1 + (i % 3))]);
    const together = await Promise.all(requests.map((r) => batched.infer('vibration', r)));
    const alone: InferResult[] = [];
    for (const r of requests) alone.push(await unbatched.infer('vibration', r));

    expect(together.map(plain)).toEqual(alone.map(plain));
    const stats = batched.queueStats();
    expect(stats.runs).toBeLessThan(64);
    expect(stats.largestBatch).toBeGreaterThan(1);
    expect(stats).toMatchObject({ queued: 0, running: 0 });
    expect(unbatched.queueStats()).toMatchObject({ runs: 64, largestBatch: 1 });
    await Promise.all([batched.shutdown(), unbatched.shutdown()]);
  });

  it('batching - carries each caller its own state through a stateful model across steps', async () => {
    const batched = newEngine(GREEDY);
    const unbatched = newEngine(UNBATCHED);
    await batched.load({ name: 'cell', version: 1, ...stateful });
    await unbatched.load({ name: 'cell', version: 1, ...stateful });

    const STREAMS = 6;
    const STEPS = 5;
    const step = (engine: InferenceEngine, stream: number, t: number, state: Float32Array) =>
      engine.infer('cell', [
        { name: 'x', datatype: 'FP32', shape: [1, 4], data: Array.from({ length: 4 }, (_, i) => stream * 10 + t + i / 4) },
        { name: 'state', datatype: 'FP32', shape: [1, 4], data: state },
      ]);
    const run = async (engine: InferenceEngine, stream: number) => {
      let state: Float32Array<ArrayBufferLike> = new Float32Array(4);
      const ys: number[][] = [];
      for (let t = 0; t < STEPS; t++) {
        const result = await step(engine, stream, t, state);
        const out = Object.fromEntries(result.outputs.map((o) => [o.name, o]));
        ys.push(Array.from(out.y!.data as Float32Array));
        state = out.state_out!.data as Float32Array;
        expect(out.state_out!.shape).toEqual([1, 4]);
      }
      return ys;
    };
    const together = await Promise.all(Array.from({ length: STREAMS }, (_, s) => run(batched, s)));
    const alone: number[][][] = [];
    for (let s = 0; s < STREAMS; s++) alone.push(await run(unbatched, s));

    expect(together).toEqual(alone);
    // Step 2 of stream 0 sees state 0.5 * x0 + x1 from the two steps before it.
    expect(together[0]![2]![0]).toBeCloseTo(2 + (0.5 * 0 + 1), 6);
    expect(batched.queueStats().largestBatch).toBeGreaterThan(1);
    await Promise.all([batched.shutdown(), unbatched.shutdown()]);
  });

  it('batching - runs a multi-input int64 model with a dynamic sequence axis, combining only requests of the same length', async () => {
    const engine = newEngine(GREEDY);
    await engine.load({ name: 'tokens', version: 1, ...tokens });
    const request = (i: number): InferInput[] => {
      const seq = i % 2 === 0 ? 3 : 5;
      return [
        { name: 'ids', datatype: 'INT64', shape: [1, seq], data: Array.from({ length: seq }, (_, k) => i * 100 + k) },
        { name: 'scale', datatype: 'FP32', shape: [1, 1], data: [0.5] },
      ];
    };
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => engine.infer('tokens', request(i))));
    results.forEach((result, i) => {
      const seq = i % 2 === 0 ? 3 : 5;
      const ids = Array.from({ length: seq }, (_, k) => i * 100 + k);
      const [total, scaled] = result.outputs;
      expect(total).toMatchObject({ name: 'total', datatype: 'INT64', shape: [1] });
      expect(Array.from(total!.data as BigInt64Array)).toEqual([BigInt(ids.reduce((a, b) => a + b, 0))]);
      expect(scaled).toMatchObject({ name: 'scaled', datatype: 'FP32', shape: [1, seq] });
      expect(Array.from(scaled!.data as Float32Array)).toEqual(ids.map((v) => v * 0.5));
    });
    expect(engine.queueStats().largestBatch).toBeGreaterThan(1);
    await engine.shutdown();
  });

  it('batching - combines requests for a model whose dimension 0 is named differently per tensor, or not named', async () => {
    const engine = newEngine(GREEDY);
    const info = await engine.load({ name: 'detector', version: 1, ...perTensor });
    expect(info.batching).toEqual({ enabled: true });
    expect(info.maxBatch).toBe(8);
    const requests = Array.from({ length: 24 }, (_, i) => [
      { name: 'images', datatype: 'FP32', shape: [1, 4], data: [i, i + 1, i + 2, i + 3] },
      { name: 'gain', datatype: 'FP32', shape: [1, 1], data: [2] },
    ]);
    const results = await Promise.all(requests.map((r) => engine.infer('detector', r)));
    results.forEach((r, i) => {
      expect(r.outputs[0]!.shape).toEqual([1, 4]);
      expect(Array.from(r.outputs[0]!.data as Float32Array)).toEqual([2 * i, 2 * (i + 1), 2 * (i + 2), 2 * (i + 3)]);
    });
    expect(engine.queueStats().largestBatch).toBeGreaterThan(1);
    await engine.shutdown();
  });

  it('batching - answers each request alone when a combined run has an output that is not per row', async () => {
    const engine = newEngine(GREEDY);
    expect((await engine.load({ name: 'flatten', version: 1, ...flatten })).batching).toEqual({ enabled: true });
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => engine.infer('flatten', [{ name: 'x', datatype: 'FP32', shape: [1, 4], data: [i, i, i, i] }])),
    );
    results.forEach((r, i) => expect(Array.from(r.outputs[0]!.data as Float32Array)).toEqual([i, i, i, i]));
    expect(engine.queueStats().largestBatch).toBeGreaterThan(1);
    await engine.shutdown();
  });

  it('batching - says why it is off: a fixed first dimension, a scalar tensor, or the profile', async () => {
    const engine = newEngine(GREEDY);
    expect((await engine.load({ name: 'fixed', version: 1, ...fixed })).batching).toMatchObject({
      enabled: false,
      reason: 'fixed_leading_dimension',
      tensor: 'x',
    });
    expect((await engine.load({ name: 'scalar', version: 1, ...scalar })).batching).toMatchObject({
      enabled: false,
      reason: 'scalar_tensor',
      tensor: 'offset',
    });
    await engine.shutdown();
    const unbatched = newEngine(UNBATCHED);
    const info = await unbatched.load({ name: 'detector', version: 1, ...perTensor });
    expect(info.batching).toMatchObject({ enabled: false, reason: 'profile_max_batch_1' });
    expect(info.maxBatch).toBe(1);
    await unbatched.shutdown();
  });

  it('batching - stays off for a model whose batch dimension is fixed, and still serves it', async () => {
    const engine = newEngine(GREEDY);
    const info = await engine.load({ name: 'fixed', version: 1, ...fixed });
    expect(info.maxBatch).toBe(1);
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => engine.infer('fixed', [{ name: 'x', datatype: 'FP32', shape: [1, 4], data: [i, i, i, i] }])),
    );
    results.forEach((r, i) => expect(Array.from(r.outputs[0]!.data as Float32Array)).toEqual([2 * i, 2 * i, 2 * i, 2 * i]));
    expect(engine.queueStats()).toMatchObject({ runs: 8, largestBatch: 1 });
    await engine.shutdown();
  });

  it('batching - holds a lone request up to the queue delay for company, then runs what came as one batch', async () => {
    const timers = manualTimers();
    const engine = newEngine({ defaultBatch: 4, maxBatch: 8, maxQueueDelayMs: 5, maxQueue: 16, concurrency: 1 }, timers);
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const first = engine.infer('vibration', [features(1, 1)]);
    const second = engine.infer('vibration', [features(2, 1)]);
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(engine.queueStats()).toMatchObject({ queued: 2, runs: 0 });
    expect(timers.armed()).toBe(1);

    timers.advance(4);
    expect(engine.queueStats()).toMatchObject({ queued: 2, runs: 0 });
    timers.advance(1);
    const [a, b] = await Promise.all([first, second]);
    expect(a.outputs[0]!.shape).toEqual([1, 4]);
    expect(b.outputs[0]!.shape).toEqual([1, 4]);
    expect(engine.queueStats()).toMatchObject({ queued: 0, runs: 1, largestBatch: 2 });

    // A full default batch runs at once, without waiting for the delay.
    await Promise.all(Array.from({ length: 4 }, (_, i) => engine.infer('vibration', [features(10 + i, 1)])));
    expect(engine.queueStats()).toMatchObject({ runs: 2, largestBatch: 4 });
    await engine.shutdown();
  });

  it('batching - lets a caller cancel a request while it waits, and the rest of the batch still runs', async () => {
    const timers = manualTimers();
    const engine = newEngine({ defaultBatch: 4, maxBatch: 8, maxQueueDelayMs: 5, maxQueue: 16, concurrency: 1 }, timers);
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const controller = new AbortController();
    const cancelled = engine.infer('vibration', [features(1, 1)], { signal: controller.signal });
    const kept = engine.infer('vibration', [features(2, 1)]);
    controller.abort();
    expect((await failure(cancelled)).code).toBe('INFERENCE_CANCELLED');
    expect(engine.queueStats().queued).toBe(1);
    timers.advance(5);
    expect((await kept).outputs[0]!.shape).toEqual([1, 4]);
    expect(engine.queueStats()).toMatchObject({ queued: 0, runs: 1, largestBatch: 1 });
    await engine.shutdown();
  });

  it('overload - refuses requests past the queue limit with INFERENCE_OVERLOADED at once, and the queue never grows past it', async () => {
    const engine = newEngine({ defaultBatch: 1, maxBatch: 4, maxQueueDelayMs: 0, maxQueue: 4, concurrency: 1 });
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const outcomes = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => engine.infer('vibration', [features(i, 1)])));
    const refused = outcomes.filter((o) => o.status === 'rejected').map((o) => (o as PromiseRejectedResult).reason as DriftlineError);
    const served = outcomes.filter((o) => o.status === 'fulfilled');
    // One runs straight away and four wait; every other request is refused, none is lost.
    expect(served).toHaveLength(5);
    expect(refused).toHaveLength(35);
    expect(new Set(refused.map((e) => e.code))).toEqual(new Set(['INFERENCE_OVERLOADED']));
    expect(engine.queueStats()).toMatchObject({ queued: 0, peakQueued: 4 });
    // Once the queue drains, the engine serves again.
    expect((await engine.infer('vibration', [features(99, 1)])).version).toBe(1);
    await engine.shutdown();
  });

  it('hot swap - moves micro-batched traffic from v1 to v2 under concurrent load without a failed request', async () => {
    const engine = newEngine(GREEDY);
    await engine.load({ name: 'vibration', version: 1, ...demo });
    let swapped = false;
    const failures: unknown[] = [];
    const afterSwap: number[] = [];
    const loop = async (id: number) => {
      for (let n = 0, after = 0; after < 10; n++) {
        const sentAfter = swapped;
        try {
          const result = await engine.infer('vibration', [features(id * 100 + n, 1 + (n % 2))]);
          if (sentAfter) afterSwap.push(result.version);
        } catch (err) {
          failures.push(err);
        }
        if (sentAfter) after++;
        if (id === 0 && n === 5) {
          await engine.load({ name: 'vibration', version: 2, ...demoV2 });
          swapped = true;
        }
      }
    };
    await Promise.all(Array.from({ length: 6 }, (_, id) => loop(id)));
    expect(failures).toEqual([]);
    expect(afterSwap).toEqual(new Array(60).fill(2));
    await engine.shutdown();
  });
});
