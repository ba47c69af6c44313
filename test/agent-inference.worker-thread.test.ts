import type { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine, type InferInput } from '../agent/inference/engine.js';
import { createOnnxRuntime, type OnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { markOwnedTensorData } from '../agent/inference/owned-tensors.js';
import { buildConvModel } from '../bench/conv-model.js';
import { DriftlineError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import { stridedDetectorModelBytes } from './fixtures/inference-models.js';
import { demoModelBytes, modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';
import { waitFor } from './helpers/processes.js';

const logger = silentLogger();
let folder: ModelFolder;
let demo: ModelFile;
let conv: ModelFile;
let detector: ModelFile;

beforeAll(async () => {
  folder = await modelFolder();
  demo = await folder.write('demo.onnx', demoModelBytes(1));
  conv = await folder.write('conv.onnx', buildConvModel().bytes);
  detector = await folder.write('detector.onnx', stridedDetectorModelBytes());
});
afterAll(() => folder.remove());

const row = (seed: number) => Array.from({ length: 8 }, (_, i) => Math.sin(seed + i));
const features = (rows: number[][]): InferInput => ({ name: 'features', datatype: 'FP32', shape: [rows.length, 8], data: Float32Array.from(rows.flat()) });
const images = (n: number) => Float32Array.from({ length: n * 3 * 64 * 64 }, (_, i) => Math.sin(i) * 0.5 + 0.5);

async function failure(work: Promise<unknown>): Promise<DriftlineError> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DriftlineError);
  return err as DriftlineError;
}

function engineOn(runtime: OnnxRuntime) {
  return InferenceEngine.create({ runtime, providers: ['cpu'], logger });
}

describe('onnxruntime on a worker thread', () => {
  it('worker thread - answers exactly what the main thread answers, and leaves the caller its inputs', async () => {
    const main = createOnnxRuntime({ logger });
    // As the agent runs it: on a worker thread, onnxruntime's threads not spinning between runs.
    const worker = createOnnxRuntime({ logger, thread: 'worker', spinning: false });
    const onMain = engineOn(main);
    const onWorker = engineOn(worker);
    await onMain.load({ name: 'vibration', version: 1, ...demo });
    const info = await onWorker.load({ name: 'vibration', version: 1, ...demo });
    expect(info.inputs).toEqual([{ name: 'features', type: 'float32', shape: [-1, 8] }]);
    expect(info.batching).toEqual({ enabled: false, reason: 'profile_max_batch_1', detail: expect.any(String) });
    const input = features([row(1), row(2), row(3)]);
    const expected = await onMain.infer('vibration', [input]);
    const got = await onWorker.infer('vibration', [input]);
    expect(got.outputs).toEqual(expected.outputs);
    // The request's own buffer was copied, not handed over: the caller can still read it.
    expect((input.data as Float32Array).length).toBe(24);
    await onMain.shutdown();
    await onWorker.shutdown();
    await worker.close();
  });

  it('worker thread - the event loop keeps turning while a model runs', async () => {
    const count = async (runtime: OnnxRuntime): Promise<number> => {
      const session = await runtime.load(conv.path, { providers: ['cpu'] });
      await session.run({ image: { type: 'float32', dims: [1, 3, 64, 64], data: images(1) } });
      let turns = 0;
      let running = true;
      const spin = () => {
        if (!running) return;
        turns++;
        setImmediate(spin);
      };
      const run = session.run({ image: { type: 'float32', dims: [8, 3, 64, 64], data: images(8) } });
      setImmediate(spin);
      await run;
      running = false;
      await session.release();
      return turns;
    };
    const worker = createOnnxRuntime({ logger, thread: 'worker' });
    // On the main thread the run blocks the loop from the turn it starts to the turn it ends.
    expect(await count(createOnnxRuntime({ logger }))).toBeLessThanOrEqual(2);
    expect(await count(worker)).toBeGreaterThan(10);
    await worker.close();
  });

  it('worker thread - a buffer the run owns is handed over without a copy', async () => {
    const runtime = createOnnxRuntime({ logger, thread: 'worker' });
    const session = await runtime.load(demo.path, { providers: ['cpu'] });
    const owned = markOwnedTensorData(Float32Array.from([...row(1), ...row(2)]));
    const copied = Float32Array.from([...row(1), ...row(2)]);
    const fromOwned = await session.run({ features: { type: 'float32', dims: [2, 8], data: owned } });
    const fromCopied = await session.run({ features: { type: 'float32', dims: [2, 8], data: copied } });
    expect(owned.length).toBe(0); // transferred to the worker
    expect(copied.length).toBe(16);
    expect(fromOwned).toEqual(fromCopied);
    await session.release();
    await runtime.close();
  });

  it("worker thread - a caller's bad shape keeps its stable code", async () => {
    const runtime = createOnnxRuntime({ logger, thread: 'worker' });
    const engine = engineOn(runtime);
    const info = await engine.load({ name: 'detector', version: 1, ...detector });
    const input = info.inputs[0]!;
    // Too small for the detector's strides: onnxruntime's message, the caller's fault.
    const shape = input.shape.map((d, i) => (d >= 0 ? d : i === 0 ? 1 : 3));
    const err = await failure(
      engine.infer('detector', [{ name: input.name, datatype: 'FP32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) }]),
    );
    expect(err.code).toBe('INPUT_SHAPE_INVALID');
    await engine.shutdown();
    await runtime.close();
  });

  it('worker thread - a thread that dies mid-run fails the run with INFERENCE_RUNTIME_CRASHED and the model loads again', async () => {
    const threads: Worker[] = [];
    const runtime = createOnnxRuntime({ logger, thread: 'worker', onThread: (w) => threads.push(w) });
    const engine = engineOn(runtime);
    await engine.load({ name: 'conv', version: 1, ...conv });
    expect(threads).toHaveLength(1);
    // The thread ends with the request in flight, as on a fatal error of its own: it exits on
    // the message posted before the request, which it never reads.
    threads[0]!.postMessage({ op: 'exit' });
    const inFlight = engine.infer('conv', [{ name: 'image', datatype: 'FP32', shape: [8, 3, 64, 64], data: images(8) }]);
    expect((await failure(inFlight)).code).toBe('INFERENCE_RUNTIME_CRASHED');
    // The next request starts a new thread, creates the session there again, and answers.
    const again = await engine.infer('conv', [{ name: 'image', datatype: 'FP32', shape: [1, 3, 64, 64], data: images(1) }]);
    expect(again.outputs[0]!.shape).toEqual([1, 10]);
    expect(threads).toHaveLength(2);
    await engine.shutdown();
    await runtime.close();
  });

  it('worker thread - close lets the runs in flight finish, then refuses with SHUTTING_DOWN', async () => {
    const runtime = createOnnxRuntime({ logger, thread: 'worker' });
    const session = await runtime.load(conv.path, { providers: ['cpu'] });
    const running = [1, 2, 3].map(() => session.run({ image: { type: 'float32', dims: [2, 3, 64, 64], data: images(2) } }));
    const closed = runtime.close();
    const results = await Promise.all(running);
    for (const r of results) expect(r.probabilities!.dims).toEqual([2, 10]);
    await closed;
    const late = await failure(session.run({ image: { type: 'float32', dims: [1, 3, 64, 64], data: images(1) } }));
    expect(late.code).toBe('SHUTTING_DOWN');
    expect((await failure(runtime.load(demo.path, { providers: ['cpu'] }))).code).toBe('SHUTTING_DOWN');
  });

  it('worker thread - close with a grace of 0 cuts the runs in flight with SHUTTING_DOWN and ends the thread', async () => {
    const threads: Worker[] = [];
    const runtime = createOnnxRuntime({ logger, thread: 'worker', onThread: (w) => threads.push(w) });
    const session = await runtime.load(conv.path, { providers: ['cpu'] });
    const running = session.run({ image: { type: 'float32', dims: [8, 3, 64, 64], data: images(8) } });
    let exited = false;
    threads[0]!.once('exit', () => (exited = true));
    await runtime.close({ graceMs: 0 });
    expect((await failure(running)).code).toBe('SHUTTING_DOWN');
    // The run cut off finishes on the thread (never terminated mid-run), which then ends.
    await waitFor(
      () => exited,
      (e) => e,
      { what: 'the inference thread to end', timeoutMs: 10_000 },
    );
  });

  it('worker thread - an idle runtime keeps no process alive and its thread ends with close', async () => {
    const threads: Worker[] = [];
    const runtime = createOnnxRuntime({ logger, thread: 'worker', onThread: (w) => threads.push(w) });
    const session = await runtime.load(demo.path, { providers: ['cpu'] });
    await session.run({ features: { type: 'float32', dims: [1, 8], data: Float32Array.from(row(1)) } });
    let exited = false;
    threads[0]!.once('exit', () => (exited = true));
    await runtime.close();
    await waitFor(
      () => exited,
      (e) => e,
      { what: 'the inference thread to end', timeoutMs: 10_000 },
    );
  });
});
