import { connect } from 'node:net';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { defaultBodyLimits, MEMORY_BUDGET_SHARE } from '../agent/local-api/body-limit.js';
import { startLocalApi, type LocalApi } from '../agent/local-api/server.js';
import { loadFirmwareProfiles } from '../common/firmware-profile.js';
import { silentLogger } from '../common/logger.js';
import { buildModel } from '../common/onnx/builder.js';
import { modelFolder, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
const MEMORY_BUDGET = loadFirmwareProfiles().get('generic-x86_64-cpu')!.inference.memoryBudget;

/** A detector's input (1x3xHxW, fixed or dynamic) reduced to its per-channel mean: cheap to run at any size. */
function channelMeanModel(height: number | string, width: number | string): Uint8Array {
  return buildModel({
    name: 'detector',
    inputs: [{ name: 'images', type: 'float32', shape: [1, 3, height, width] }],
    outputs: [{ name: 'means', type: 'float32', shape: [1, 3, 1, 1] }],
    nodes: [{ op: 'GlobalAveragePool', inputs: ['images'], outputs: ['means'] }],
  });
}

/** Channel c holds the value c + 1 everywhere. */
const image = (height: number, width: number): Float32Array =>
  Float32Array.from({ length: 3 * height * width }, (_, i) => Math.floor(i / (height * width)) + 1);

function binaryRequest(data: Float32Array, shape: number[]): { body: Buffer; headers: Record<string, string> } {
  const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'images', shape, datatype: 'FP32', parameters: { binary_data_size: data.byteLength } }] }));
  return {
    body: Buffer.concat([header, Buffer.from(data.buffer, data.byteOffset, data.byteLength)]),
    headers: { 'inference-header-content-length': String(header.length) },
  };
}

/** Sends only the request head with this content-length and reads the answer: the server must not wait for a body it refuses. */
function declareBody(url: string, contentLength: number, extra = ''): Promise<{ status: number; json: Record<string, unknown> }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let text = '';
    socket.on('data', (chunk) => (text += chunk.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => {
      const [head, body] = text.split('\r\n\r\n', 2) as [string, string];
      resolve({ status: Number(head.slice(9, 12)), json: JSON.parse(body) as Record<string, unknown> });
    });
    socket.write(
      `POST /v2/models/detector/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${contentLength}\r\n${extra}\r\n{"inputs":`,
    );
  });
}

describe('local api body limit', () => {
  let folder: ModelFolder;
  const engines: InferenceEngine[] = [];
  const apis: LocalApi[] = [];
  let dynamicApi: LocalApi;
  let fixedApi: LocalApi;

  const serve = async (bytes: Uint8Array, options: { maxBodyBytes?: number } = {}): Promise<LocalApi> => {
    const engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger });
    engines.push(engine);
    await engine.load({ name: 'detector', version: 1, ...(await folder.write(`detector-${engines.length}.onnx`, bytes)) });
    const api = await startLocalApi({
      engine,
      health: () => ({ ok: true, details: {} }),
      metrics: new Registry(),
      logger,
      memoryBudgetBytes: MEMORY_BUDGET,
      ...options,
    });
    apis.push(api);
    return api;
  };

  beforeAll(async () => {
    folder = await modelFolder();
    dynamicApi = await serve(channelMeanModel('height', 'width'));
    fixedApi = await serve(channelMeanModel(480, 640));
  });

  afterAll(async () => {
    await Promise.all(apis.map((a) => a.close()));
    await Promise.all(engines.map((e) => e.shutdown()));
    await folder?.remove();
  });

  const infer = async (api: LocalApi, body: string | Buffer, headers: Record<string, string> = {}) => {
    const res = await fetch(`${api.url}/v2/models/detector/infer`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
    return { status: res.status, json: (await res.json()) as { code?: string; setting?: string; limit_bytes?: number; outputs?: Array<{ data: number[] }> } };
  };

  it('body limit - is derived from a fixed input shape as JSON numbers and as raw bytes, and from the memory budget for dynamic dimensions', () => {
    const fixed = defaultBodyLimits([{ name: 'images', type: 'float32', shape: [1, 3, 480, 640] }], MEMORY_BUDGET);
    // The binary limit is the tensor's bytes plus room for the JSON header; JSON allows for the longest numbers.
    expect(fixed.binary).toBeGreaterThanOrEqual(3 * 480 * 640 * 4);
    expect(fixed.binary).toBeLessThan(3 * 480 * 640 * 4 + 1024 ** 2);
    expect(fixed.json).toBeGreaterThanOrEqual(3 * 480 * 640 * 24);
    const dynamic = defaultBodyLimits([{ name: 'images', type: 'float32', shape: [1, 3, -1, -1] }], MEMORY_BUDGET);
    expect(dynamic).toEqual({ json: MEMORY_BUDGET * MEMORY_BUDGET_SHARE, binary: MEMORY_BUDGET * MEMORY_BUDGET_SHARE });
  });

  it('body limit - accepts a 640x480 detector input over JSON and a 1280x736 one over binary by default', async () => {
    const json = JSON.stringify({
      inputs: [{ name: 'images', shape: [1, 3, 480, 640], datatype: 'FP32', data: Array.from(image(480, 640), (v, i) => v + Math.sin(i) * 1e-3) }],
    });
    // Larger than the old fixed 8 MiB.
    expect(json.length).toBeGreaterThan(8 * 1024 ** 2);
    for (const api of [dynamicApi, fixedApi]) {
      const res = await infer(api, json);
      expect(res.status).toBe(200);
      expect(res.json.outputs![0]!.data.map((v) => Math.round(v))).toEqual([1, 2, 3]);
    }
    const { body, headers } = binaryRequest(image(736, 1280), [1, 3, 736, 1280]);
    expect(body.length).toBeGreaterThan(8 * 1024 ** 2);
    const res = await infer(dynamicApi, body, headers);
    expect(res.status).toBe(200);
    expect(res.json.outputs![0]!.data).toEqual([1, 2, 3]);
  });

  it('body limit - refuses a body declared larger than the limit with 413 naming localApi.maxBodyBytes, before reading it', async () => {
    const limits = defaultBodyLimits([{ name: 'images', type: 'float32', shape: [1, 3, 480, 640] }], MEMORY_BUDGET);
    const res = await declareBody(fixedApi.url, limits.json + 1);
    expect(res).toEqual({
      status: 413,
      json: { error: expect.stringContaining('localApi.maxBodyBytes'), code: 'PAYLOAD_TOO_LARGE', setting: 'localApi.maxBodyBytes', limit_bytes: limits.json },
    });
    // The binary extension's limit is the tensor's bytes: far lower than JSON's.
    const binary = await declareBody(fixedApi.url, limits.binary + 1, 'Inference-Header-Content-Length: 10\r\n');
    expect(binary.json).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', setting: 'localApi.maxBodyBytes', limit_bytes: limits.binary });
  });

  it('body limit - refuses a streamed body once it passes the limit, without buffering or waiting for the rest', async () => {
    const limit = defaultBodyLimits([{ name: 'images', type: 'float32', shape: [1, 3, 480, 640] }], MEMORY_BUDGET).binary;
    const { hostname, port } = new URL(fixedApi.url);
    const socket = connect(Number(port), hostname);
    await new Promise((resolve) => socket.once('connect', resolve));
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('error', () => undefined);
    socket.write(`POST /v2/models/detector/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n`);
    // Chunks past the limit, and never the last chunk: the body does not end, so an answer
    // proves the server did not wait for it (stopping short of flooding a socket it closes).
    const chunk = Buffer.concat([Buffer.from(`${(64 * 1024).toString(16)}\r\n`), Buffer.alloc(64 * 1024), Buffer.from('\r\n')]);
    let sent = 0;
    while (!answer.includes('\r\n\r\n') && !socket.destroyed && sent <= limit + 256 * 1024) {
      sent += 64 * 1024;
      if (!socket.write(chunk)) await new Promise((resolve) => socket.once('drain', resolve).once('close', resolve));
    }
    await new Promise((resolve) => (socket.destroyed ? resolve(undefined) : socket.once('close', resolve)));
    const [head, body] = answer.split('\r\n\r\n', 2) as [string, string];
    expect(head.slice(9, 12)).toBe('413');
    expect(JSON.parse(body)).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', setting: 'localApi.maxBodyBytes', limit_bytes: limit });
    expect(sent).toBeGreaterThan(limit);
  });

  it('body limit - localApi.maxBodyBytes overrides the derived limit', async () => {
    const api = await serve(channelMeanModel('height', 'width'), { maxBodyBytes: 1024 });
    const res = await infer(api, JSON.stringify({ inputs: [{ name: 'images', shape: [1, 3, 16, 16], datatype: 'FP32', data: Array.from(image(16, 16)) }] }));
    expect(res.status).toBe(413);
    expect(res.json).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', setting: 'localApi.maxBodyBytes', limit_bytes: 1024 });
  });
});
