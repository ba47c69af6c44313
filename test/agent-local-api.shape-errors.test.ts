/**
 * Shapes that fit a model's signature but that the model cannot take: the caller gets a 400
 * with INPUT_SHAPE_INVALID in the model's own words, never a 500 with raw onnxruntime text.
 */
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine, type BatchingOptions } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { startLocalApi, type LocalApi } from '../agent/local-api/server.js';
import { silentLogger } from '../common/logger.js';
import { explainRuntimeFailure } from '../common/onnx/runtime-errors.js';
import { perTensorBatchNamesModelBytes, sequenceModelBytes, statefulModelBytes, stridedDetectorModelBytes } from './fixtures/inference-models.js';
import { modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
const BATCHING: BatchingOptions = { defaultBatch: 1, maxBatch: 8, maxQueueDelayMs: 0, maxQueue: 64, concurrency: 1 };
let folder: ModelFolder;
let engine: InferenceEngine;
let api: LocalApi;
const files: Record<string, ModelFile> = {};

beforeAll(async () => {
  folder = await modelFolder();
  files.detector = await folder.write('detector.onnx', stridedDetectorModelBytes());
  files.sequence = await folder.write('sequence.onnx', sequenceModelBytes(8));
  files.cell = await folder.write('cell.onnx', statefulModelBytes());
  files.boxes = await folder.write('boxes.onnx', perTensorBatchNamesModelBytes());
  engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger, batching: BATCHING });
  api = await startLocalApi({ engine, health: () => ({ ok: true, details: {} }), metrics: new Registry(), logger });
});

afterAll(async () => {
  await api.close();
  await engine.shutdown();
  await folder.remove();
});

type Input = { name: string; shape: number[]; datatype: string; data?: number[] };
const tensor = (name: string, shape: number[], datatype = 'FP32'): Input => ({
  name,
  shape,
  datatype,
  data: new Array<number>(shape.reduce((a, b) => a * b, 1)).fill(1),
});

async function infer(model: string, inputs: Input[]): Promise<{ status: number; json: Record<string, unknown> }> {
  if (engine.active()?.name !== model) await engine.load({ name: model, version: 1, ...files[model]! });
  const res = await fetch(`${api.url}/v2/models/${model}/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const sequence = (length: number): Input[] => [tensor('tokens', [1, length]), { ...tensor('step', [], 'INT64'), data: [1] }, tensor('state', [1, 8])];

const refusals: Array<[string, string, Input[], string]> = [
  ['a detector input too small for its strides', 'detector', [tensor('images', [1, 1, 4, 4])], 'INPUT_SHAPE_INVALID'],
  ['a zero dimension', 'detector', [tensor('images', [1, 1, 0, 16])], 'INPUT_SHAPE_INVALID'],
  ['a sequence that is not a whole number of windows', 'sequence', sequence(12), 'INPUT_SHAPE_INVALID'],
  ['inputs that disagree on a shared batch dimension', 'cell', [tensor('x', [2, 4]), tensor('state', [3, 4])], 'INPUT_SHAPE_INVALID'],
  ['batched inputs with different rows, whatever their dims are named', 'boxes', [tensor('images', [2, 4]), tensor('gain', [3, 1])], 'INPUT_SHAPE_INVALID'],
  ['the wrong rank', 'detector', [tensor('images', [1, 16, 16])], 'INFERENCE_INPUT_INVALID'],
];

describe('local API - shape errors', () => {
  it.each(refusals)("shape errors - answers %s with 400 and a stable code in the model's own words", async (_, model, inputs, code) => {
    const { status, json } = await infer(model, inputs);
    expect({ status, code: json.code }).toEqual({ status: 400, code });
    expect(String(json.error)).not.toContain('onnxruntime_src');
    expect(String(json.error)).not.toContain('Non-zero status code');
  });

  it('shape errors - still serves shapes the model can take', async () => {
    expect((await infer('detector', [tensor('images', [1, 1, 16, 16])])).status).toBe(200);
    expect((await infer('sequence', sequence(24))).status).toBe(200);
    expect((await infer('cell', [tensor('x', [2, 4]), tensor('state', [2, 4])])).status).toBe(200);
  });

  it("shape errors - keeps a failure of the runtime itself a runtime failure, not the caller's", () => {
    const oom = explainRuntimeFailure(
      "Non-zero status code returned while running Conv node. Name:'conv_1' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 6553600\n",
    );
    expect(oom).toMatchObject({ op: 'Conv', node: 'conv_1', inputShape: false });
    const reshape = explainRuntimeFailure(
      "Non-zero status code returned while running Reshape node. Name:'Reshape_0' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:84 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, bool) size != 0 && (input_shape_size % size) == 0 was false. The input tensor cannot be reshaped to the requested shape. Input shape:{1,1}, requested shape:{-1,8}\n",
    );
    expect(reshape).toEqual({
      op: 'Reshape',
      node: 'Reshape_0',
      inputShape: true,
      message: 'The input tensor cannot be reshaped to the requested shape. Input shape:{1,1}, requested shape:{-1,8}',
    });
  });
});
