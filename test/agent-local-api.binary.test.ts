import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { startLocalApi, type LocalApi } from '../agent/local-api/server.js';
import { silentLogger } from '../common/logger.js';
import { waitFor } from './helpers/processes.js';
import { echoModelBytes, demoModelBytes, modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
let folder: ModelFolder;
let echo: ModelFile;
let demo: ModelFile;
let echoEngine: InferenceEngine;
let demoEngine: InferenceEngine;
let echoApi: LocalApi;
let demoApi: LocalApi;

beforeAll(async () => {
  folder = await modelFolder();
  echo = await folder.write('echo.onnx', echoModelBytes());
  demo = await folder.write('demo.onnx', demoModelBytes(1));
  echoEngine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger });
  demoEngine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger });
  await echoEngine.load({ name: 'echo', version: 1, ...echo });
  await demoEngine.load({ name: 'vibration', version: 1, ...demo });
  const common = { health: () => ({ ok: true, details: {} }), metrics: new Registry(), logger };
  echoApi = await startLocalApi({ engine: echoEngine, ...common });
  demoApi = await startLocalApi({ engine: demoEngine, ...common });
});

afterAll(async () => {
  await Promise.all([echoApi.close(), demoApi.close()]);
  await Promise.all([echoEngine.shutdown(), demoEngine.shutdown()]);
  await folder.remove();
});

/** A body in the binary extension's layout: the JSON header, then each part's bytes. */
function binaryBody(header: unknown, parts: Uint8Array[]): { body: Buffer; headerLength: number } {
  const json = Buffer.from(JSON.stringify(header));
  return { body: Buffer.concat([json, ...parts]), headerLength: json.length };
}

const bytesOf = (view: ArrayBufferView) => new Uint8Array(view.buffer, view.byteOffset, view.byteLength);

function bytesElements(values: string[]): Uint8Array {
  const encoded = values.map((v) => Buffer.from(v));
  const out = Buffer.alloc(encoded.reduce((n, e) => n + 4 + e.length, 0));
  let offset = 0;
  for (const e of encoded) {
    out.writeUInt32LE(e.length, offset);
    e.copy(out, offset + 4);
    offset += 4 + e.length;
  }
  return out;
}

async function postBinary(api: LocalApi, path: string, header: unknown, parts: Uint8Array[]) {
  const { body, headerLength } = binaryBody(header, parts);
  const res = await fetch(`${api.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(headerLength) },
    body,
  });
  const raw = Buffer.from(await res.arrayBuffer());
  const length = res.headers.get('inference-header-content-length');
  if (length === null) return { status: res.status, json: JSON.parse(raw.toString()) as Record<string, unknown>, binary: Buffer.alloc(0) };
  return { status: res.status, json: JSON.parse(raw.subarray(0, Number(length)).toString()) as Record<string, unknown>, binary: raw.subarray(Number(length)) };
}

describe('local inference API binary tensors', () => {
  it('local api - takes every datatype as raw little-endian bytes after the JSON header and answers in JSON', async () => {
    const inputs = [
      { name: 'f32', datatype: 'FP32', shape: [1, 2], bytes: bytesOf(Float32Array.of(0.5, -2)) },
      { name: 'f16', datatype: 'FP16', shape: [1], bytes: bytesOf(Uint16Array.of(0x3e00)) },
      { name: 'i64', datatype: 'INT64', shape: [1], bytes: bytesOf(BigInt64Array.of(-(2n ** 40n))) },
      { name: 'i32', datatype: 'INT32', shape: [1], bytes: bytesOf(Int32Array.of(-7)) },
      { name: 'u8', datatype: 'UINT8', shape: [1], bytes: Uint8Array.of(200) },
      { name: 'flag', datatype: 'BOOL', shape: [1], bytes: Uint8Array.of(1) },
      { name: 'text', datatype: 'BYTES', shape: [1], bytes: bytesElements(['héllo']) },
    ];
    const header = { inputs: inputs.map(({ name, datatype, shape, bytes }) => ({ name, datatype, shape, parameters: { binary_data_size: bytes.length } })) };
    const res = await postBinary(
      echoApi,
      '/v2/models/echo/infer',
      header,
      inputs.map((i) => i.bytes),
    );
    expect(res.status).toBe(200);
    const data = Object.fromEntries((res.json.outputs as Array<{ name: string; data: unknown[] }>).map((o) => [o.name, o.data]));
    expect(data).toEqual({ f32_out: [0.5, -2], f16_out: [1.5], i64_out: [-(2 ** 40)], i32_out: [-7], u8_out: [200], flag_out: [true], text_out: ['héllo'] });
  });

  it('local api - answers with binary outputs when asked, mixing JSON and binary inputs', async () => {
    const rows = Float32Array.from({ length: 16 }, (_, i) => Math.sin(i));
    const header = {
      inputs: [{ name: 'features', datatype: 'FP32', shape: [2, 8], parameters: { binary_data_size: rows.byteLength } }],
      outputs: [{ name: 'probabilities', parameters: { binary_data: true } }, { name: 'label' }],
    };
    const res = await postBinary(demoApi, '/v2/models/vibration/infer', header, [bytesOf(rows)]);
    expect(res.status).toBe(200);
    const [probabilities, label] = res.json.outputs as Array<{ name: string; shape: number[]; data?: number[]; parameters?: { binary_data_size: number } }>;
    expect(probabilities).toEqual({ name: 'probabilities', shape: [2, 4], datatype: 'FP32', parameters: { binary_data_size: 32 } });
    expect(res.binary.length).toBe(32);
    const p = new Float32Array(Uint8Array.from(res.binary).buffer);
    const json = await demoEngine.infer('vibration', [{ name: 'features', datatype: 'FP32', shape: [2, 8], data: rows }]);
    expect(Array.from(p)).toEqual(Array.from(json.outputs[0]!.data as Float32Array));
    expect(label!.data).toEqual(Array.from(json.outputs[1]!.data as BigInt64Array, Number));
  });

  const refusals: Array<[string, unknown, Uint8Array[], string | undefined, number, string]> = [
    [
      'a byte count that is not whole elements',
      { inputs: [{ name: 'features', datatype: 'FP32', shape: [1, 8], parameters: { binary_data_size: 31 } }] },
      [new Uint8Array(31)],
      undefined,
      400,
      'INFERENCE_INPUT_INVALID',
    ],
    [
      'fewer bytes than declared',
      { inputs: [{ name: 'features', datatype: 'FP32', shape: [1, 8], parameters: { binary_data_size: 32 } }] },
      [new Uint8Array(16)],
      undefined,
      400,
      'INFERENCE_INPUT_INVALID',
    ],
    [
      'bytes that belong to no input',
      { inputs: [{ name: 'features', datatype: 'FP32', shape: [1, 8], parameters: { binary_data_size: 32 } }] },
      [new Uint8Array(40)],
      undefined,
      400,
      'REQUEST_INVALID',
    ],
    [
      'the wrong element count for the shape',
      { inputs: [{ name: 'features', datatype: 'FP32', shape: [2, 8], parameters: { binary_data_size: 32 } }] },
      [new Uint8Array(32)],
      undefined,
      400,
      'INFERENCE_INPUT_INVALID',
    ],
    [
      'both data and binary bytes',
      { inputs: [{ name: 'features', datatype: 'FP32', shape: [1, 8], data: [1], parameters: { binary_data_size: 32 } }] },
      [new Uint8Array(32)],
      undefined,
      400,
      'REQUEST_INVALID',
    ],
    ['a header length past the body', { inputs: [] }, [], '100000', 400, 'REQUEST_INVALID'],
  ];

  it.each(refusals)('local api - refuses %s with its stable code', async (_, header, parts, headerLength, status, code) => {
    const { body, headerLength: real } = binaryBody(header, parts);
    const res = await fetch(`${demoApi.url}/v2/models/vibration/infer`, {
      method: 'POST',
      headers: { 'inference-header-content-length': headerLength ?? String(real) },
      body,
    });
    expect(res.status).toBe(status);
    expect(((await res.json()) as { code: string }).code).toBe(code);
  });

  it('local api - answers 429 INFERENCE_OVERLOADED when the model queue is full, and serves the queued requests after', async () => {
    // Batches wait for 8 rows or a delay that only this test's timer ends, so two requests fill the queue.
    let fire: (() => void) | undefined;
    const timers = { now: () => 0, setTimeout: (fn: () => void) => ((fire = fn), () => (fire = undefined)) };
    const engine = InferenceEngine.create({
      runtime: createOnnxRuntime({ logger }),
      providers: ['cpu'],
      logger,
      batching: { defaultBatch: 8, maxBatch: 8, maxQueueDelayMs: 1000, maxQueue: 2, concurrency: 1 },
      timers,
    });
    await engine.load({ name: 'vibration', version: 1, ...demo });
    const api = await startLocalApi({ engine, health: () => ({ ok: true, details: {} }), metrics: new Registry(), logger });
    try {
      const rows = Float32Array.from({ length: 8 }, (_, i) => i);
      const header = { inputs: [{ name: 'features', datatype: 'FP32', shape: [1, 8], parameters: { binary_data_size: rows.byteLength } }] };
      const queued = [
        postBinary(api, '/v2/models/vibration/infer', header, [bytesOf(rows)]),
        postBinary(api, '/v2/models/vibration/infer', header, [bytesOf(rows)]),
      ];
      await waitFor(
        () => engine.queueStats().queued,
        (n) => n === 2,
        { what: 'two queued requests' },
      );
      const refused = await postBinary(api, '/v2/models/vibration/infer', header, [bytesOf(rows)]);
      expect(refused.status).toBe(429);
      expect(refused.json.code).toBe('INFERENCE_OVERLOADED');
      expect(engine.queueStats()).toMatchObject({ queued: 2, peakQueued: 2, runs: 0 });
      fire!();
      expect((await Promise.all(queued)).map((r) => r.status)).toEqual([200, 200]);
      expect(engine.queueStats()).toMatchObject({ queued: 0, runs: 1, largestBatch: 2 });
    } finally {
      await api.close();
      await engine.shutdown();
    }
  });
});
