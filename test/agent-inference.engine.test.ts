import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fromHalf } from '../agent/inference/datatypes.js';
import { InferenceEngine, type InferenceRecord, type InferInput } from '../agent/inference/engine.js';
import { chainObservers, registerInferenceMetrics } from '../agent/inference/metrics.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { ManualClock } from '../common/clock.js';
import { DriftlineError, type ErrorCode } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import { demoModelBytes, echoModelBytes, modelFolder, reshapeModelBytes, type ModelFile, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
let folder: ModelFolder;
let demo: ModelFile;
let echo: ModelFile;
let reshape: ModelFile;

beforeAll(async () => {
  folder = await modelFolder();
  demo = await folder.write('demo.onnx', demoModelBytes(1));
  echo = await folder.write('echo.onnx', echoModelBytes());
  reshape = await folder.write('reshape.onnx', reshapeModelBytes());
});
afterAll(() => folder.remove());

function newEngine(observer?: (r: InferenceRecord) => void, clock = new ManualClock()) {
  return InferenceEngine.create({
    runtime: createOnnxRuntime({ logger }),
    providers: ['cpu'],
    logger,
    clock,
    ...(observer ? { observer: { onInference: observer } } : {}),
  });
}

const features = (rows: number[][]): InferInput => ({ name: 'features', datatype: 'FP32', shape: [rows.length, 8], data: rows.flat() });
const row = (seed: number) => Array.from({ length: 8 }, (_, i) => Math.sin(seed + i));

async function failure(work: Promise<unknown>): Promise<DriftlineError> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DriftlineError);
  return err as DriftlineError;
}

describe('inference engine', () => {
  it('engine - classifies a batch with the demo model and reports it to the observer', async () => {
    const records: InferenceRecord[] = [];
    const clock = new ManualClock(1_800_000_000_000);
    const engine = newEngine((r) => records.push(r), clock);
    const info = await engine.load({ name: 'vibration', version: 1, ...demo });
    expect(info).toMatchObject({ name: 'vibration', version: 1, sha256: demo.sha256, provider: 'cpu', loadedAtMs: 1_800_000_000_000 });
    expect(info.inputs).toEqual([{ name: 'features', type: 'float32', shape: [-1, 8] }]);
    expect(info.outputs).toEqual([
      { name: 'probabilities', type: 'float32', shape: [-1, 4] },
      { name: 'label', type: 'int64', shape: [-1] },
    ]);
    expect(engine.active()).toEqual(info);

    const result = await engine.infer('vibration', [features([row(1), row(2)])]);
    expect(result).toMatchObject({ model: 'vibration', version: 1, provider: 'cpu' });
    const [probabilities, label] = result.outputs;
    expect(probabilities).toMatchObject({ name: 'probabilities', datatype: 'FP32', shape: [2, 4] });
    expect(label).toMatchObject({ name: 'label', datatype: 'INT64', shape: [2] });
    const p = Array.from(probabilities!.data as Float32Array);
    for (const r of [0, 1]) {
      const rowP = p.slice(r * 4, r * 4 + 4);
      expect(rowP.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      expect(Number((label!.data as BigInt64Array)[r])).toBe(rowP.indexOf(Math.max(...rowP)));
    }

    expect(records).toHaveLength(1);
    const top = p.slice(0, 4);
    expect(records[0]).toMatchObject({
      model: 'vibration',
      version: 1,
      provider: 'cpu',
      ok: true,
      batchSize: 2,
      topClass: Number((label!.data as BigInt64Array)[0]),
      confidence: Math.max(...top),
    });
    expect(records[0]!.latencyMs).toBeGreaterThanOrEqual(0);
    await engine.shutdown();
  });

  it('engine - returns only the outputs the caller asks for, and refuses an unknown one', async () => {
    const engine = newEngine();
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const result = await engine.infer('vibration', [features([row(3)])], { outputs: ['label'] });
    expect(result.outputs.map((o) => o.name)).toEqual(['label']);
    expect((await failure(engine.infer('vibration', [features([row(3)])], { outputs: ['logits'] }))).code).toBe('REQUEST_INVALID');
    await engine.shutdown();
  });

  const badInputs: Array<[string, InferInput[], string]> = [
    ['an unknown input name', [{ name: 'feature', datatype: 'FP32', shape: [1, 8], data: row(1) }], 'feature'],
    ['a missing input', [], 'features'],
    ['the same input twice', [features([row(1)]), features([row(2)])], 'features'],
    ['the wrong datatype', [{ name: 'features', datatype: 'FP64', shape: [1, 8], data: row(1) }], 'features'],
    ['a datatype the protocol does not define', [{ name: 'features', datatype: 'FLOAT', shape: [1, 8], data: row(1) }], 'features'],
    ['the wrong rank', [{ name: 'features', datatype: 'FP32', shape: [8], data: row(1) }], 'features'],
    ['a fixed dimension that does not match', [{ name: 'features', datatype: 'FP32', shape: [1, 7], data: row(1).slice(1) }], 'features'],
    ['a negative dimension', [{ name: 'features', datatype: 'FP32', shape: [-1, 8], data: row(1) }], 'features'],
    ['fewer values than the shape needs', [{ name: 'features', datatype: 'FP32', shape: [2, 8], data: row(1) }], 'features'],
    ['more values than the shape needs', [{ name: 'features', datatype: 'FP32', shape: [1, 8], data: [...row(1), 0] }], 'features'],
    ['a value of the wrong kind', [{ name: 'features', datatype: 'FP32', shape: [1, 8], data: [...row(1).slice(1), 'x'] }], 'features'],
  ];

  it.each(badInputs)('engine - refuses %s with INFERENCE_INPUT_INVALID naming the input, before running', async (_, inputs, named) => {
    const records: InferenceRecord[] = [];
    const engine = newEngine((r) => records.push(r));
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const err = await failure(engine.infer('vibration', inputs));
    expect(err.code).toBe('INFERENCE_INPUT_INVALID');
    expect(err.details).toEqual({ input: named });
    expect(records).toEqual([expect.objectContaining({ ok: false, errorCode: 'INFERENCE_INPUT_INVALID', batchSize: 0 })]);
    await engine.shutdown();
  });

  it('engine - carries FP32, FP16, INT64, INT32, UINT8, BOOL and BYTES through a model unchanged', async () => {
    const engine = newEngine();
    await engine.load({ name: 'echo', version: 1, ...echo });
    const result = await engine.infer('echo', [
      { name: 'f32', datatype: 'FP32', shape: [2, 2], data: [0.5, -1, 2, 3] },
      { name: 'f16', datatype: 'FP16', shape: [2], data: [1.5, -65504] },
      { name: 'i64', datatype: 'INT64', shape: [2], data: [Number.MAX_SAFE_INTEGER, -3] },
      { name: 'i32', datatype: 'INT32', shape: [2], data: [2 ** 31 - 1, -(2 ** 31)] },
      { name: 'u8', datatype: 'UINT8', shape: [2], data: Uint8Array.of(0, 255) },
      { name: 'flag', datatype: 'BOOL', shape: [2], data: [true, false] },
      { name: 'text', datatype: 'BYTES', shape: [2], data: ['a', 'héllo'] },
    ]);
    const out = Object.fromEntries(result.outputs.map((o) => [o.name, o]));
    expect(Array.from(out.f32_out!.data as Float32Array)).toEqual([0.5, -1, 2, 3]);
    expect(Array.from(out.f16_out!.data as Uint16Array, fromHalf)).toEqual([1.5, -65504]);
    expect(Array.from(out.i64_out!.data as BigInt64Array)).toEqual([BigInt(Number.MAX_SAFE_INTEGER), -3n]);
    expect(Array.from(out.i32_out!.data as Int32Array)).toEqual([2 ** 31 - 1, -(2 ** 31)]);
    expect(Array.from(out.u8_out!.data as Uint8Array)).toEqual([0, 255]);
    expect(Array.from(out.flag_out!.data as Uint8Array)).toEqual([1, 0]);
    expect(out.text_out!.data).toEqual(['a', 'héllo']);
    expect(result.outputs.map((o) => o.datatype)).toEqual(['FP32', 'FP16', 'INT64', 'INT32', 'UINT8', 'BOOL', 'BYTES']);
    await engine.shutdown();
  });

  const outOfRange: Array<[string, unknown[]]> = [
    ['i64', [1.5]],
    ['i64', [2 ** 53]],
    ['i32', [2 ** 31]],
    ['u8', [256]],
    ['u8', [-1]],
    ['flag', [1]],
    ['text', [7]],
  ];

  it.each(outOfRange)('engine - refuses %s values %j that its datatype cannot hold', async (name, bad) => {
    const engine = newEngine();
    await engine.load({ name: 'echo', version: 1, ...echo });
    const good: Record<string, InferInput> = {
      f32: { name: 'f32', datatype: 'FP32', shape: [1, 2], data: [0, 0] },
      f16: { name: 'f16', datatype: 'FP16', shape: [1], data: [0] },
      i64: { name: 'i64', datatype: 'INT64', shape: [1], data: [0] },
      i32: { name: 'i32', datatype: 'INT32', shape: [1], data: [0] },
      u8: { name: 'u8', datatype: 'UINT8', shape: [1], data: [0] },
      flag: { name: 'flag', datatype: 'BOOL', shape: [1], data: [false] },
      text: { name: 'text', datatype: 'BYTES', shape: [1], data: [''] },
    };
    const inputs = Object.values(good).map((i) => (i.name === name ? { ...i, data: bad } : i));
    const err = await failure(engine.infer('echo', inputs));
    expect(err.code).toBe('INFERENCE_INPUT_INVALID');
    expect(err.details).toEqual({ input: name });
    await engine.shutdown();
  });

  it('engine - takes class probabilities from the first rank-2 float output when the model names none', async () => {
    const records: InferenceRecord[] = [];
    const engine = newEngine((r) => records.push(r));
    await engine.load({ name: 'echo', version: 1, ...echo });
    await engine.infer('echo', [
      { name: 'f32', datatype: 'FP32', shape: [1, 2], data: [0.25, 0.75] },
      { name: 'f16', datatype: 'FP16', shape: [1], data: [0] },
      { name: 'i64', datatype: 'INT64', shape: [1], data: [0] },
      { name: 'i32', datatype: 'INT32', shape: [1], data: [0] },
      { name: 'u8', datatype: 'UINT8', shape: [1], data: [0] },
      { name: 'flag', datatype: 'BOOL', shape: [1], data: [false] },
      { name: 'text', datatype: 'BYTES', shape: [1], data: [''] },
    ]);
    expect(records[0]).toMatchObject({ ok: true, topClass: 1, confidence: 0.75, batchSize: 1 });
    await engine.shutdown();
  });

  it('engine - refuses a probabilities output the model does not have, keeping the current model', async () => {
    const engine = newEngine();
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const err = await failure(engine.load({ name: 'vibration', version: 2, ...demo, probabilitiesOutput: 'scores' }));
    expect(err.code).toBe('MODEL_INVALID');
    expect(engine.active()?.version).toBe(1);
    await engine.shutdown();
  });

  it("engine - answers a shape onnxruntime says the model cannot take with INPUT_SHAPE_INVALID in the model's words, with its cause", async () => {
    const records: InferenceRecord[] = [];
    const engine = newEngine((r) => records.push(r));
    await engine.load({ name: 'reshape', version: 1, ...reshape });
    const err = await failure(engine.infer('reshape', [{ name: 'x', datatype: 'FP32', shape: [2, 4], data: new Float32Array(8) }]));
    expect(err.code).toBe('INPUT_SHAPE_INVALID');
    expect(err.message).toContain('Reshape node');
    expect(err.message).not.toContain('onnxruntime_src');
    expect(err.cause).toBeInstanceOf(Error);
    expect(records).toEqual([expect.objectContaining({ ok: false, errorCode: 'INPUT_SHAPE_INVALID', batchSize: 2 })]);
    // The engine keeps serving after a failed run.
    const ok = await engine.infer('reshape', [{ name: 'x', datatype: 'FP32', shape: [1, 4], data: new Float32Array(4) }]);
    expect(ok.outputs[0]!.shape).toEqual([2, 2]);
    await engine.shutdown();
  });

  it('engine - answers MODEL_NOT_LOADED before any model and MODEL_NOT_FOUND for another name or version', async () => {
    const engine = newEngine();
    expect((await failure(engine.infer('vibration', [features([row(1)])]))).code).toBe('MODEL_NOT_LOADED');
    await engine.load({ name: 'vibration', version: 3, ...demo });
    expect((await failure(engine.infer('other', [features([row(1)])]))).code).toBe('MODEL_NOT_FOUND');
    expect((await failure(engine.infer('vibration', [features([row(1)])], { version: 2 }))).code).toBe('MODEL_NOT_FOUND');
    expect((await engine.infer('vibration', [features([row(1)])], { version: 3 })).version).toBe(3);
    await engine.shutdown();
  });

  it('engine - refuses a model that onnxruntime cannot load or that is described wrongly, keeping the current one', async () => {
    const engine = newEngine();
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const garbage = await folder.write('garbage.onnx', new TextEncoder().encode('not a model'));
    const cases: Array<[object, ErrorCode]> = [
      [{ name: 'vibration', version: 2, ...garbage }, 'MODEL_INVALID'],
      [{ name: 'vibration', version: 2, path: `${folder.dir}/missing.onnx`, sha256: demo.sha256 }, 'MODEL_INVALID'],
      [{ name: 'vibration', version: 0, ...demo }, 'MODEL_INVALID'],
      [{ name: 'vibration', version: 2, path: demo.path, sha256: 'abc' }, 'MODEL_INVALID'],
      [{ name: '__proto__', version: 2, ...demo }, 'ID_INVALID'],
    ];
    for (const [model, code] of cases) {
      expect((await failure(engine.load(model as Parameters<typeof engine.load>[0]))).code).toBe(code);
    }
    expect(engine.active()?.version).toBe(1);
    expect((await engine.infer('vibration', [features([row(1)])])).version).toBe(1);
    await engine.shutdown();
  });

  it('engine - maps an aborted request to INFERENCE_CANCELLED and a passed deadline to INFERENCE_TIMEOUT', async () => {
    const records: InferenceRecord[] = [];
    const engine = newEngine((r) => records.push(r));
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const cancelled = await failure(engine.infer('vibration', [features([row(1)])], { signal: AbortSignal.abort() }));
    expect(cancelled.code).toBe('INFERENCE_CANCELLED');
    const late = AbortSignal.abort(new DOMException('deadline passed', 'TimeoutError'));
    expect((await failure(engine.infer('vibration', [features([row(1)])], { signal: late }))).code).toBe('INFERENCE_TIMEOUT');
    expect(records.map((r) => r.errorCode)).toEqual(['INFERENCE_CANCELLED', 'INFERENCE_TIMEOUT']);
    await engine.shutdown();
  });

  it('engine - refuses requests and loads with SHUTTING_DOWN once shut down', async () => {
    const engine = newEngine();
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const inFlight = engine.infer('vibration', [features([row(1)])]);
    await engine.shutdown();
    expect((await inFlight).version).toBe(1);
    expect(engine.active()).toBeUndefined();
    expect((await failure(engine.infer('vibration', [features([row(1)])]))).code).toBe('SHUTTING_DOWN');
    expect((await failure(engine.load({ name: 'vibration', version: 2, ...demo }))).code).toBe('SHUTTING_DOWN');
  });

  it('engine - counts requests by outcome and provider in Prometheus, next to other chained observers', async () => {
    const registry = new Registry();
    const records: InferenceRecord[] = [];
    const engine = InferenceEngine.create({
      runtime: createOnnxRuntime({ logger }),
      providers: ['cpu'],
      logger,
      observer: chainObservers(registerInferenceMetrics(registry), { onInference: (r) => records.push(r) }),
    });
    await engine.load({ name: 'vibration', version: 1, ...demo });
    await engine.infer('vibration', [features([row(1)])]);
    await engine.infer('vibration', [features([row(2)])]);
    await failure(engine.infer('vibration', []));
    const text = await registry.metrics();
    expect(text).toContain('driftline_inference_requests_total{model="vibration",outcome="ok",provider="cpu"} 2');
    expect(text).toContain('driftline_inference_requests_total{model="vibration",outcome="INFERENCE_INPUT_INVALID",provider="cpu"} 1');
    expect(text).toContain('driftline_inference_latency_seconds_count{model="vibration",provider="cpu"} 2');
    expect(records).toHaveLength(3);
    await engine.shutdown();
  });
});
