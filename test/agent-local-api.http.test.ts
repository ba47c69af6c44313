import { spawnSync } from 'node:child_process';
import { lstat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine } from '../agent/inference/engine.js';
import { registerInferenceMetrics } from '../agent/inference/metrics.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { startLocalApi, type LocalApi } from '../agent/local-api/server.js';
import { httpDate } from '../common/http/date.js';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { DRIFTLINE_VERSION } from '../common/version.js';
import { demoModelBytes, modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
let folder: ModelFolder;
let demo: ModelFile;
let engine: InferenceEngine;
let registry: Registry;
let healthy = true;
let api: LocalApi;

const MAX_BODY_BYTES = 64 * 1024;

beforeAll(async () => {
  folder = await modelFolder();
  demo = await folder.write('demo.onnx', demoModelBytes(1));
  registry = new Registry();
  engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger, observer: registerInferenceMetrics(registry) });
  await engine.load({ name: 'vibration', version: 1, ...demo });
  api = await startLocalApi({
    engine,
    health: () => ({ ok: healthy, details: { uplink: healthy ? 'connected' : 'offline' } }),
    metrics: registry,
    logger,
    maxBodyBytes: MAX_BODY_BYTES,
  });
});

afterAll(async () => {
  await api.close();
  await engine.shutdown();
  await folder.remove();
});

const rows = (n: number) => Array.from({ length: n * 8 }, (_, i) => Math.sin(i));

function inferBody(overrides: Record<string, unknown> = {}) {
  return { id: 'req-1', inputs: [{ name: 'features', shape: [2, 8], datatype: 'FP32', data: rows(2), ...overrides }] };
}

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${api.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

async function get(path: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${api.url}${path}`);
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe('local inference API', () => {
  it('local api - listens on loopback only, on a port the OS picked', () => {
    expect(api.url).toBe(`http://127.0.0.1:${api.port}`);
    expect(api.port).toBeGreaterThan(0);
  });

  it('local api - dates every answer (IMF-fixdate) by the injected clock, errors too', async () => {
    const clock = new ManualClock(Date.UTC(2031, 1, 9, 7, 5, 3, 999));
    const dated = await startLocalApi({ engine, health: () => ({ ok: true, details: {} }), metrics: registry, logger, clock });
    try {
      expect((await fetch(`${dated.url}/v2/health/live`)).headers.get('date')).toBe('Sun, 09 Feb 2031 07:05:03 GMT');
      clock.advance(86_400_000 + 1);
      const missing = await fetch(`${dated.url}/v2/nowhere`);
      expect(missing.status).toBe(404);
      expect(missing.headers.get('date')).toBe('Mon, 10 Feb 2031 07:05:04 GMT');
    } finally {
      await dated.close();
    }
  });

  it('local api - formats Date headers exactly as toUTCString does', () => {
    for (let t = Date.UTC(1999, 11, 31, 23, 59, 59); t < Date.UTC(2101, 0, 1); t += 86_400_000 * 37 + 3_723_456)
      expect(httpDate(t)).toBe(new Date(Math.floor(t / 1000) * 1000).toUTCString());
  });

  it('local api - answers liveness, readiness and server metadata', async () => {
    expect(await get('/v2/health/live')).toEqual({ status: 200, json: { live: true } });
    expect(await get('/v2/health/ready')).toEqual({ status: 200, json: { ready: true } });
    expect(await get('/v2')).toEqual({
      status: 200,
      json: { name: 'driftline-agent', version: DRIFTLINE_VERSION, extensions: ['binary_tensor_data', 'model_repository'] },
    });
  });

  it('local api - describes the active model with protocol datatypes, its provider and its sha256', async () => {
    const { status, json } = await get('/v2/models/vibration');
    expect(status).toBe(200);
    expect(json).toEqual({
      name: 'vibration',
      versions: ['1'],
      platform: 'onnxruntime',
      inputs: [{ name: 'features', datatype: 'FP32', shape: [-1, 8] }],
      outputs: [
        { name: 'probabilities', datatype: 'FP32', shape: [-1, 4] },
        { name: 'label', datatype: 'INT64', shape: [-1] },
      ],
      provider: 'cpu',
      provider_fallbacks: [],
      max_batch_size: 1,
      batching: { enabled: false, reason: 'profile_max_batch_1', detail: expect.any(String) },
      sha256: demo.sha256,
    });
    expect(await get('/v2/models/vibration/ready')).toEqual({ status: 200, json: { name: 'vibration', ready: true } });
    expect(await get('/v2/models/vibration/versions/1/ready')).toEqual({ status: 200, json: { name: 'vibration', ready: true } });
    expect((await get('/v2/models/other/ready')).json.code).toBe('MODEL_NOT_FOUND');
  });

  it('local api - runs an inference request end to end, with int64 outputs as JSON numbers', async () => {
    const { status, json } = await post('/v2/models/vibration/infer', inferBody());
    expect(status).toBe(200);
    expect(json).toMatchObject({ model_name: 'vibration', model_version: '1', id: 'req-1' });
    const outputs = json.outputs as Array<{ name: string; shape: number[]; datatype: string; data: number[] }>;
    expect(outputs.map(({ name, shape, datatype }) => ({ name, shape, datatype }))).toEqual([
      { name: 'probabilities', shape: [2, 4], datatype: 'FP32' },
      { name: 'label', shape: [2], datatype: 'INT64' },
    ]);
    const [probabilities, label] = outputs;
    for (const r of [0, 1]) {
      const p = probabilities!.data.slice(r * 4, r * 4 + 4);
      expect(label!.data[r]).toBe(p.indexOf(Math.max(...p)));
    }
  });

  it('local api - accepts nested row-major data, a pinned version and a chosen subset of outputs', async () => {
    const nested = [rows(1), rows(1)];
    const { status, json } = await post('/v2/models/vibration/versions/1/infer', {
      inputs: [{ name: 'features', shape: [2, 8], datatype: 'FP32', data: nested }],
      outputs: [{ name: 'label' }],
    });
    expect(status).toBe(200);
    expect(typeof json.id).toBe('string');
    expect((json.outputs as Array<{ name: string }>).map((o) => o.name)).toEqual(['label']);
  });

  const refusals: Array<[string, string, unknown, number, string]> = [
    ['a wrong shape', '/v2/models/vibration/infer', inferBody({ shape: [2, 7] }), 400, 'INFERENCE_INPUT_INVALID'],
    ['a wrong datatype', '/v2/models/vibration/infer', inferBody({ datatype: 'INT64' }), 400, 'INFERENCE_INPUT_INVALID'],
    ['an unknown model', '/v2/models/nope/infer', inferBody(), 404, 'MODEL_NOT_FOUND'],
    ['a version that is not active', '/v2/models/vibration/versions/2/infer', inferBody(), 404, 'MODEL_NOT_FOUND'],
    ['a version that is not a number', '/v2/models/vibration/versions/latest/infer', inferBody(), 400, 'REQUEST_INVALID'],
    ['malformed JSON', '/v2/models/vibration/infer', '{"inputs": [', 400, 'REQUEST_INVALID'],
    ['a body without inputs', '/v2/models/vibration/infer', { id: 'x' }, 400, 'REQUEST_INVALID'],
    ['data that is not an array', '/v2/models/vibration/infer', inferBody({ data: 'abc' }), 400, 'REQUEST_INVALID'],
    ['an unknown output', '/v2/models/vibration/infer', { ...inferBody(), outputs: [{ name: 'logits' }] }, 400, 'REQUEST_INVALID'],
    ['an unknown route', '/v2/nothing', {}, 404, 'ROUTE_NOT_FOUND'],
    ['a bad percent-encoding', '/v2/models/%E0%A4%A/infer', inferBody(), 400, 'REQUEST_INVALID'],
  ];

  it.each(refusals)('local api - answers %s with a JSON error and its stable code', async (_, path, body, status, code) => {
    const res = await post(path, body);
    expect(res.status).toBe(status);
    expect(res.json).toEqual({ error: expect.any(String), code });
  });

  it('local api - refuses a declared oversized body with 413 PAYLOAD_TOO_LARGE', async () => {
    const res = await post('/v2/models/vibration/infer', inferBody({ data: rows(MAX_BODY_BYTES / 8) }));
    expect(res.status).toBe(413);
    expect(res.json.code).toBe('PAYLOAD_TOO_LARGE');
  });

  it('local api - refuses a streamed body with 413 once it passes the limit, without waiting for the rest', async () => {
    const chunk = new TextEncoder().encode(' '.repeat(16 * 1024));
    let sent = 0;
    // Endless: the only way this request ends is the server answering before the body does.
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        sent += chunk.length;
        controller.enqueue(chunk);
      },
    });
    const res = await fetch(`${api.url}/v2/models/vibration/infer`, { method: 'POST', body, duplex: 'half' } as RequestInit);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { code: string }).code).toBe('PAYLOAD_TOO_LARGE');
    expect(sent).toBeGreaterThan(MAX_BODY_BYTES);
    // The connection that carried the refused body is closed, and the server keeps serving.
    expect((await post('/v2/models/vibration/infer', inferBody())).status).toBe(200);
  });

  it('local api - serves /healthz from the injected health function, 503 when it is not ok', async () => {
    expect(await get('/healthz')).toEqual({ status: 200, json: { ok: true, details: { uplink: 'connected' } } });
    healthy = false;
    try {
      expect(await get('/healthz')).toEqual({ status: 503, json: { ok: false, details: { uplink: 'offline' } } });
    } finally {
      healthy = true;
    }
  });

  it('local api - exposes the engine metrics in Prometheus text', async () => {
    await post('/v2/models/vibration/infer', inferBody());
    const res = await fetch(`${api.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    const text = await res.text();
    expect(text).toMatch(/driftline_inference_requests_total\{model="vibration",outcome="ok",provider="cpu"\} \d+/);
    expect(text).toContain('driftline_inference_requests_total{model="vibration",outcome="INFERENCE_INPUT_INVALID",provider="cpu"}');
  });

  it('local api - reports not ready, and 503 MODEL_NOT_LOADED, before a model is loaded', async () => {
    const empty = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger });
    const bare = await startLocalApi({ engine: empty, health: () => ({ ok: true, details: {} }), metrics: new Registry(), logger });
    try {
      expect((await fetch(`${bare.url}/v2/health/ready`)).status).toBe(503);
      const res = await fetch(`${bare.url}/v2/models/vibration/infer`, { method: 'POST', body: JSON.stringify(inferBody()) });
      expect(res.status).toBe(503);
      expect(((await res.json()) as { code: string }).code).toBe('MODEL_NOT_LOADED');
    } finally {
      await bare.close();
      await empty.shutdown();
    }
  });
});

function overSocket(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown> }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

describe('local inference API on a unix socket', () => {
  it('local api - serves inference over a unix socket instead of TCP', async () => {
    const socketPath = join(folder.dir, 'agent.sock');
    const local = await startLocalApi({ engine, health: () => ({ ok: true, details: {} }), metrics: registry, logger, socketPath });
    try {
      expect(local).toMatchObject({ url: `unix:${socketPath}`, port: 0 });
      expect(await overSocket(socketPath, 'GET', '/v2/health/ready')).toEqual({ status: 200, json: { ready: true } });
      const res = await overSocket(socketPath, 'POST', '/v2/models/vibration/infer', inferBody());
      expect(res.status).toBe(200);
      expect(res.json.model_name).toBe('vibration');
    } finally {
      await local.close();
    }
  });

  it('local api - takes over a socket file left behind by a killed agent, but not one that is in use', async () => {
    const socketPath = join(folder.dir, 'stale.sock');
    // A process that dies by SIGKILL while listening leaves its socket file behind.
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect((await lstat(socketPath)).isSocket()).toBe(true);
    const local = await startLocalApi({ engine, health: () => ({ ok: true, details: {} }), metrics: registry, logger, socketPath });
    try {
      expect((await overSocket(socketPath, 'GET', '/v2/health/live')).status).toBe(200);
      const second = await startLocalApi({ engine, health: () => ({ ok: true, details: {} }), metrics: registry, logger, socketPath }).catch((e: unknown) => e);
      expect((second as { code: string }).code).toBe('LISTEN_FAILED');
      expect((await overSocket(socketPath, 'GET', '/v2/health/live')).status).toBe(200);
    } finally {
      await local.close();
    }
  });
});
