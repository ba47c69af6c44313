import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { DriftlineError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import type { ExampleInputs } from '../common/onnx/example-inputs.js';
import { sequenceModelBytes, stridedDetectorModelBytes } from './fixtures/inference-models.js';
import { modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
let folder: ModelFolder;
let sequence8: ModelFile;
let sequence48: ModelFile;
let detector: ModelFile;

beforeAll(async () => {
  folder = await modelFolder();
  sequence8 = await folder.write('sequence-8.onnx', sequenceModelBytes(8));
  sequence48 = await folder.write('sequence-48.onnx', sequenceModelBytes(48));
  detector = await folder.write('detector.onnx', stridedDetectorModelBytes());
});
afterAll(() => folder.remove());

const newEngine = () => InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger });

async function failure(work: Promise<unknown>): Promise<DriftlineError> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DriftlineError);
  return err as DriftlineError;
}

/** A sequence of 96 tokens: two windows of 48. */
const sequenceExamples: ExampleInputs = [
  { tokens: { type: 'float32', dims: [1, 96] }, step: { type: 'int64', dims: [], data: [3] }, state: { type: 'float32', dims: [1, 48] } },
];

describe('inference engine warm-up', () => {
  it('warm-up - loads a stateful sequence model that cannot run on a length of 1, by trying longer sequences', async () => {
    const engine = newEngine();
    const info = await engine.load({ name: 'sequence', version: 1, ...sequence8 });
    expect(info.batching).toMatchObject({ enabled: false, reason: 'fixed_leading_dimension' });
    const tokens = Array.from({ length: 16 }, (_, i) => i);
    const result = await engine.infer('sequence', [
      { name: 'tokens', datatype: 'FP32', shape: [1, 16], data: tokens },
      { name: 'step', datatype: 'INT64', shape: [], data: [2] },
      { name: 'state', datatype: 'FP32', shape: [1, 8], data: new Array(8).fill(1) },
    ]);
    const state = result.outputs.find((o) => o.name === 'state_out')!;
    // Windows [0..7] and [8..15] summed per column, plus the state 1 and the step 2.
    expect(Array.from(state.data as Float32Array)).toEqual(Array.from({ length: 8 }, (_, c) => c + (c + 8) + 1 + 2));
    await engine.shutdown();
  });

  it('warm-up - loads a detector whose strides need an image larger than 1x1', async () => {
    const engine = newEngine();
    await engine.load({ name: 'detector', version: 1, ...detector });
    expect(engine.active()?.name).toBe('detector');
    await engine.shutdown();
  });

  it("warm-up - refuses a model that runs on no size tried with MODEL_WARMUP_FAILED, in the model's own words", async () => {
    const engine = newEngine();
    const err = await failure(engine.load({ name: 'sequence', version: 1, ...sequence48 }));
    expect(err.code).toBe('MODEL_WARMUP_FAILED');
    expect(err.message).toContain('Reshape');
    expect(err.message).toContain('cannot be reshaped');
    expect(err.message).not.toContain('onnxruntime_src');
    expect((err.details as { attempts: unknown[] }).attempts).toHaveLength(4);
    expect(engine.active()).toBeUndefined();
    await engine.shutdown();
  });

  it("warm-up - warms up on the release's example inputs when sizes alone would not do", async () => {
    const engine = newEngine();
    await engine.load({ name: 'sequence', version: 1, ...sequence48, examples: sequenceExamples });
    const result = await engine.infer('sequence', [
      { name: 'tokens', datatype: 'FP32', shape: [1, 96], data: new Array(96).fill(1) },
      { name: 'step', datatype: 'INT64', shape: [], data: [0] },
      { name: 'state', datatype: 'FP32', shape: [1, 48], data: new Array(48).fill(0) },
    ]);
    expect(Array.from(result.outputs.find((o) => o.name === 'state_out')!.data as Float32Array)).toEqual(new Array(48).fill(2));
    await engine.shutdown();
  });

  it('warm-up - refuses example inputs the model cannot run on, with MODEL_WARMUP_FAILED', async () => {
    const engine = newEngine();
    const wrong: ExampleInputs = [{ ...sequenceExamples[0]!, tokens: { type: 'float32', dims: [1, 50] } }];
    const err = await failure(engine.load({ name: 'sequence', version: 1, ...sequence48, examples: wrong }));
    expect(err.code).toBe('MODEL_WARMUP_FAILED');
    expect(err.message).toContain('tokens float32 [1, 50]');
    await engine.shutdown();
  });
});
