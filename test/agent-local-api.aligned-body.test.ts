import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { concatenate } from '../agent/inference/batcher.js';
import { InferenceEngine, type InferenceService, type InferInput } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { isOwnedTensorData } from '../agent/inference/owned-tensors.js';
import { startLocalApi, type LocalApi } from '../agent/local-api/server.js';
import { silentLogger } from '../common/logger.js';
import { demoModelBytes, modelFolder, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
let folder: ModelFolder;
let engine: InferenceEngine;
let api: LocalApi;
/** What the local API handed the engine, request by request (the real engine answers). */
const seen: InferInput[][] = [];

beforeAll(async () => {
  folder = await modelFolder();
  const demo = await folder.write('demo.onnx', demoModelBytes(1));
  engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger, thread: 'worker' }), providers: ['cpu'], logger });
  await engine.load({ name: 'vibration', version: 1, ...demo });
  const watched: InferenceService = {
    active: () => engine.active(),
    models: () => engine.models(),
    model: (name) => engine.model(name),
    queueStats: (name) => engine.queueStats(name),
    infer: (model, inputs, options) => {
      seen.push([...inputs]);
      return engine.infer(model, inputs, options);
    },
  };
  api = await startLocalApi({ engine: watched, health: () => ({ ok: true, details: {} }), metrics: new Registry(), logger });
});

afterAll(async () => {
  await api.close();
  await engine.shutdown();
  await folder.remove();
});

describe('local inference API: binary bodies without copies', () => {
  it('local api - decodes FP32 binary data as a view on the request body whatever the JSON header length', async () => {
    const values = Float32Array.from({ length: 8 }, (_, i) => Math.sin(i));
    for (let pad = 0; pad < 8; pad++) {
      // A request id of varying length moves where the raw bytes start.
      const header = Buffer.from(
        JSON.stringify({ id: 'x'.repeat(pad + 1), inputs: [{ name: 'features', shape: [1, 8], datatype: 'FP32', parameters: { binary_data_size: 32 } }] }),
      );
      const res = await fetch(`${api.url}/v2/models/vibration/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) },
        body: Buffer.concat([header, Buffer.from(values.buffer)]),
      });
      expect(res.status).toBe(200);
      const data = seen.at(-1)![0]!.data as Float32Array;
      expect(Array.from(data)).toEqual(Array.from(values));
      // A view into the body after the header, not a copy of the 32 bytes.
      expect(data.buffer.byteLength).toBeGreaterThanOrEqual(header.length + 32);
      expect(data.byteOffset % 8).toBe(0);
    }
  });

  it("batcher - a batch's concatenation is the run's own, so a worker-thread runtime takes it without a copy", () => {
    const rows = [Float32Array.of(1, 2), Float32Array.of(3, 4)];
    const batch = concatenate(rows.map((data) => ({ feeds: { x: { type: 'float32' as const, dims: [1, 2], data } }, rows: 1 })));
    expect(Array.from(batch.x!.data as Float32Array)).toEqual([1, 2, 3, 4]);
    expect(isOwnedTensorData(batch.x!.data)).toBe(true);
    // The requests' own buffers are not: their callers still read them.
    expect(isOwnedTensorData(rows[0]!)).toBe(false);
  });
});
