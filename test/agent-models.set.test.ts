import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ModelManager } from '../agent/models/model-manager.js';
import { PinnedRoot } from '../agent/trust/pinned-root.js';
import { reportedModels, reportedState } from '../agent/reported-state.js';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { systemClock } from '../common/clock.js';
import { buildModel } from '../common/onnx/builder.js';
import { capturingLogger } from './fixtures/logs.js';
import { demoModelBytes } from './fixtures/models.js';
import { desiredSet, setDevice, type SetDevice } from './helpers/model-set-device.js';
import { ArtifactTestServer, desiredFor, makeRelease, testTrust, type TestRelease, type TestTrust } from './helpers/releases.js';
import { waitFor } from './helpers/processes.js';

const row = [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41];
const inferBody = JSON.stringify({ inputs: [{ name: 'features', shape: [1, 8], datatype: 'FP32', data: row }] });

let server: ArtifactTestServer;
let trust: TestTrust;
const r: Record<string, TestRelease> = {};

/** 24 MiB of weights summed into every output: bigger than the budgets below on its own file's size. */
function bigModelBytes(): Uint8Array {
  return weightsModelBytes('big', 6 * 1024 * 1024, 1e-9);
}

/** A model that holds `n` float32 weights (summed into every output; `fill` makes its bytes its own). */
function weightsModelBytes(name: string, n: number, fill: number): Uint8Array {
  return buildModel({
    name,
    inputs: [{ name: 'features', type: 'float32', shape: ['batch', 8] }],
    outputs: [{ name: 'y', type: 'float32', shape: ['batch', 8] }],
    nodes: [
      { op: 'ReduceSum', inputs: ['w'], outputs: ['s'] },
      { op: 'Add', inputs: ['features', 's'], outputs: ['y'] },
    ],
    initializers: [{ name: 'w', type: 'float32', dims: [n], values: new Float32Array(n).fill(fill) }],
  });
}

beforeAll(async () => {
  server = new ArtifactTestServer();
  await server.start();
  trust = testTrust(Date.now());
  const sign = trust.release.signer;
  r.detector1 = await makeRelease('detector', 1, demoModelBytes(1), sign);
  r.detector2 = await makeRelease('detector', 2, demoModelBytes(2), sign);
  r.classifier1 = await makeRelease('classifier', 1, demoModelBytes(3), sign);
  r.recognizer1 = await makeRelease('recognizer', 1, demoModelBytes(4), sign);
  r.big1 = await makeRelease('big', 1, bigModelBytes(), sign);
  // 10 MiB each: either fits a 16 MiB budget alone, not both.
  r.first1 = await makeRelease('first', 1, weightsModelBytes('first', 2_500_000, 1e-9), sign);
  r.second1 = await makeRelease('second', 1, weightsModelBytes('second', 2_500_000, 2e-9), sign);
  for (const release of Object.values(r)) server.serve(release.sha256, release.bytes);
}, 120_000);
afterAll(() => server.close());

const devices: SetDevice[] = [];
afterEach(async () => {
  for (const d of devices.splice(0)) await d.close();
});

async function device(options: { memoryBudgetBytes?: number; localApi?: boolean; dir?: string; artifactUrl?: string } = {}): Promise<SetDevice> {
  const d = await setDevice({ artifactUrl: server.url, root: trust.v1, logger: capturingLogger().logger, ...options });
  devices.push(d);
  return d;
}

async function call(d: SetDevice, method: string, path: string, body?: string): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`${d.api!.url}${path}`, { method, ...(body !== undefined ? { body, headers: { 'content-type': 'application/json' } } : {}) });
  return { status: res.status, json: await res.json() };
}

/** Requests in a loop on each model until stopped: every outcome counted by model and status. */
function load(d: SetDevice, names: string[], workersPerModel = 2): { counts: Map<string, Map<number, number>>; stop(): Promise<void> } {
  const counts = new Map(names.map((n) => [n, new Map<number, number>()]));
  let running = true;
  const workers = names.flatMap((name) =>
    Array.from({ length: workersPerModel }, async () => {
      while (running) {
        const res = await fetch(`${d.api!.url}/v2/models/${name}/infer`, { method: 'POST', body: inferBody, headers: { 'content-type': 'application/json' } });
        await res.arrayBuffer();
        const byStatus = counts.get(name)!;
        byStatus.set(res.status, (byStatus.get(res.status) ?? 0) + 1);
      }
    }),
  );
  return {
    counts,
    async stop() {
      running = false;
      await Promise.all(workers);
    },
  };
}
const ok = (counts: Map<number, number>): number => counts.get(200) ?? 0;
const failed = (counts: Map<number, number>): number => [...counts].filter(([status]) => status !== 200).reduce((n, [, c]) => n + c, 0);

describe('agent model set - several models on one device', () => {
  it('three models, one updated under load with no failed request on the others, one removed: each served by name, the update fails no request on any of them and reloads only that one, the removed one answers 404 MODEL_NOT_FOUND while the others serve', async () => {
    const d = await device({ localApi: true });
    await d.set.apply(desiredSet(1, [r.detector1!, r.classifier1!, r.recognizer1!]));
    expect(d.set.error).toBeUndefined();
    expect(d.set.entries().map((e) => [e.name, e.version, e.state])).toEqual([
      ['detector', 1, 'serving'],
      ['classifier', 1, 'serving'],
      ['recognizer', 1, 'serving'],
    ]);
    for (const name of ['detector', 'classifier', 'recognizer']) {
      expect(await call(d, 'GET', `/v2/models/${name}/versions/1/ready`)).toEqual({ status: 200, json: { name, ready: true } });
      expect((await call(d, 'GET', `/v2/models/${name}`)).json).toMatchObject({ name, versions: ['1'] });
    }
    const classifierBefore = d.engine.model('classifier');
    const recognizerBefore = d.engine.model('recognizer');

    const traffic = load(d, ['detector', 'classifier', 'recognizer']);
    await waitFor(
      () => [...traffic.counts.values()].map(ok),
      (oks) => oks.every((n) => n >= 20),
      { what: 'traffic on all three models' },
    );
    const eventsBefore = d.events.length;
    await d.set.apply(desiredSet(2, [r.detector2!, r.classifier1!, r.recognizer1!]));
    const afterSwap = ok(traffic.counts.get('detector')!);
    await waitFor(
      () => ok(traffic.counts.get('detector')!),
      (n) => n >= afterSwap + 20,
      { what: 'traffic on detector v2' },
    );
    await traffic.stop();

    for (const [name, counts] of traffic.counts) expect({ name, failed: failed(counts) }).toEqual({ name, failed: 0 });
    expect(d.engine.model('detector')).toMatchObject({ version: 2, sha256: r.detector2!.sha256 });
    // The others were not reloaded: the very same loaded model serves them.
    expect(d.engine.model('classifier')).toBe(classifierBefore);
    expect(d.engine.model('recognizer')).toBe(recognizerBefore);
    expect(d.events.slice(eventsBefore)).toEqual([{ kind: 'model.activated', model: 'detector', version: 2 }]);
    expect(d.set.desiredRevision).toBe(2);

    const removal = load(d, ['detector', 'recognizer']);
    await d.set.apply(desiredSet(3, [r.detector2!, r.recognizer1!]));
    const gone = await call(d, 'POST', '/v2/models/classifier/infer', inferBody);
    expect(gone).toMatchObject({ status: 404, json: { code: 'MODEL_NOT_FOUND' } });
    expect((await call(d, 'GET', '/v2/models/classifier')).json).toMatchObject({ code: 'MODEL_NOT_FOUND' });
    await removal.stop();
    for (const [name, counts] of removal.counts) expect({ name, failed: failed(counts), served: ok(counts) > 0 }).toEqual({ name, failed: 0, served: true });
    expect(d.engine.models().map((m) => m.name)).toEqual(['detector', 'recognizer']);
    // Garbage collection kept every slot's active and previous files, and dropped the removed model's.
    const files = readdirSync(join(d.dir, 'models')).sort();
    expect(files).toEqual([r.detector1!, r.detector2!, r.recognizer1!].map((x) => `${x.sha256}.onnx`).sort());
    expect(existsSync(join(d.dir, 'models', `${r.classifier1!.sha256}.onnx`))).toBe(false);
  }, 120_000);

  it('repository index - lists every model of the set with its state, and a refused one UNAVAILABLE with its code as the reason', async () => {
    const d = await device({ localApi: true, memoryBudgetBytes: 16 * 1024 * 1024 });
    await d.set.apply(desiredSet(1, [r.detector1!, r.classifier1!, r.big1!]));
    expect(await call(d, 'POST', '/v2/repository/index', '{}')).toEqual({
      status: 200,
      json: [
        { name: 'detector', version: '1', state: 'READY', reason: '' },
        { name: 'classifier', version: '1', state: 'READY', reason: '' },
        { name: 'big', version: '1', state: 'UNAVAILABLE', reason: expect.stringMatching(/^MODEL_SET_OVER_BUDGET: /) },
      ],
    });
    expect((await call(d, 'POST', '/v2/repository/index', '{"ready":true}')).json).toEqual([
      { name: 'detector', version: '1', state: 'READY', reason: '' },
      { name: 'classifier', version: '1', state: 'READY', reason: '' },
    ]);
    expect((await call(d, 'POST', '/v2/repository/index', '{"ready":"yes"}')).json).toMatchObject({ code: 'REQUEST_INVALID' });
  }, 120_000);

  it('a set over the memory budget refused and reported: the model that does not fit beside the running ones is refused with MODEL_SET_OVER_BUDGET on its entry, in last_error and in active_models; the running models are untouched', async () => {
    const d = await device({ memoryBudgetBytes: 16 * 1024 * 1024 });
    await d.set.apply(desiredSet(1, [r.detector1!, r.classifier1!]));
    const running = d.engine.models();
    expect(running.map((m) => m.name)).toEqual(['detector', 'classifier']);
    for (const m of running) expect(m.memoryBytes).toBeGreaterThanOrEqual(r.detector1!.bytes.length / 2);

    await d.set.apply(desiredSet(2, [r.detector1!, r.classifier1!, r.big1!]));
    expect(d.engine.models()).toEqual(running);
    expect(d.set.error?.code).toBe('MODEL_SET_OVER_BUDGET');
    const entries = d.set.entries();
    expect(entries.map((e) => [e.name, e.state, e.error?.code])).toEqual([
      ['detector', 'serving', undefined],
      ['classifier', 'serving', undefined],
      ['big', 'refused', 'MODEL_SET_OVER_BUDGET'],
    ]);
    expect(d.events.at(-1)).toEqual({ kind: 'model.failed', model: 'big', version: 1, code: 'MODEL_SET_OVER_BUDGET' });

    const state = reportedState({
      firmwareProfile: 'generic-x86_64-cpu',
      activeModel: d.engine.active(),
      models: reportedModels(entries, (name) => d.engine.model(name)),
      bufferDepth: 0,
      boot: 1,
      startedAtMs: 0,
      nowMs: 1000,
      desiredRevision: d.set.desiredRevision,
      lastError: d.set.error,
      droppedRecords: 0,
      warnings: [],
    });
    expect(state.lastErrorCode).toBe('MODEL_SET_OVER_BUDGET');
    expect(state.activeModel).toMatchObject({ name: 'detector', version: 1, state: 'serving' });
    expect(state.activeModels).toEqual([
      expect.objectContaining({
        name: 'detector',
        version: 1,
        provider: 'cpu',
        fallbacks: [],
        state: 'serving',
        lastErrorCode: '',
        memoryBytes: running[0]!.memoryBytes,
      }),
      expect.objectContaining({ name: 'classifier', version: 1, provider: 'cpu', state: 'serving', lastErrorCode: '' }),
      expect.objectContaining({ name: 'big', version: 0, sha256: '', state: 'refused', lastErrorCode: 'MODEL_SET_OVER_BUDGET' }),
    ]);
    // The same bad set is not retried until a new revision; the files of the running models stay.
    for (const x of [r.detector1!, r.classifier1!]) expect(existsSync(join(d.dir, 'models', `${x.sha256}.onnx`))).toBe(true);
  }, 120_000);

  it('the models listed first win the memory budget, whichever download finishes first: the second of the set, downloaded first, is refused with MODEL_SET_OVER_BUDGET once the first one loaded', async () => {
    // The artifact server, behind a relay that holds the first model's download until the second one's file is complete.
    const dir = mkdtempSync(join(tmpdir(), 'driftline-model-set-order-'));
    const secondFile = join(dir, 'models', `${r.second1!.sha256}.onnx`);
    const relay = createServer((req, res) => {
      void (async () => {
        if (req.url?.includes(r.first1!.sha256)) await waitFor(() => existsSync(secondFile), Boolean, { what: "the second model's download" });
        const upstream = await fetch(new URL(req.url!, server.url), { headers: req.headers.range ? { range: req.headers.range } : {} });
        const body = Buffer.from(await upstream.arrayBuffer());
        res.writeHead(upstream.status, { 'content-length': String(body.length) }).end(body);
      })().catch(() => res.destroy());
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    try {
      const d = await device({ dir, memoryBudgetBytes: 16 * 1024 * 1024, artifactUrl: `http://127.0.0.1:${(relay.address() as AddressInfo).port}/` });
      await d.set.apply(desiredSet(1, [r.first1!, r.second1!]));
      expect(d.set.entries().map((e) => [e.name, e.state, e.error?.code])).toEqual([
        ['first', 'serving', undefined],
        ['second', 'refused', 'MODEL_SET_OVER_BUDGET'],
      ]);
      expect(d.engine.models().map((m) => m.name)).toEqual(['first']);
    } finally {
      relay.closeAllConnections();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
    }
  }, 120_000);

  it('a refusal of one model (a version older than its highest) never disturbs the others, and its rollback directive is its own', async () => {
    const d = await device();
    await d.set.apply(desiredSet(1, [r.detector2!, r.classifier1!]));
    const classifier = d.engine.model('classifier');
    await d.set.apply(desiredSet(2, [r.detector1!, r.classifier1!, r.recognizer1!]));
    expect(d.set.entries().map((e) => [e.name, e.version, e.state, e.error?.code])).toEqual([
      ['detector', 2, 'serving', 'RELEASE_VERSION_REFUSED'],
      ['classifier', 1, 'serving', undefined],
      ['recognizer', 1, 'serving', undefined],
    ]);
    expect(d.engine.model('classifier')).toBe(classifier);
    expect(d.set.error?.code).toBe('RELEASE_VERSION_REFUSED');
  }, 120_000);
});

describe('agent model set - agents and control planes from before', () => {
  it('a legacy desired state (only `model` set) is a set of one', async () => {
    const d = await device();
    const legacy = desiredFor(1, r.detector1!);
    expect(legacy.models).toEqual([]);
    await d.set.apply(legacy);
    expect(d.engine.models().map((m) => [m.name, m.version])).toEqual([['detector', 1]]);
    expect(d.set.entries()).toEqual([expect.objectContaining({ name: 'detector', version: 1, state: 'serving' })]);
    // And the next one, in the set shape, adds a model beside it without reloading it.
    const detector = d.engine.model('detector');
    await d.set.apply(desiredSet(2, [r.detector1!, r.classifier1!]));
    expect(d.engine.model('detector')).toBe(detector);
    expect(d.engine.models().map((m) => m.name)).toEqual(['detector', 'classifier']);
  }, 120_000);

  it('the agent_state written by the single-model manager of before restores as a set of one, keeping its anti-rollback floor', async () => {
    const d = await device();
    const { logger } = capturingLogger();
    // The agent of before: one ModelManager on the 'models.manager' key.
    const old = new ModelManager({
      modelsDir: join(d.dir, 'models'),
      host: d.engine,
      state: d.buffer.state,
      artifactBaseUrl: server.url,
      credential: { username: 'edge-1', password: 'secret' },
      downloadTimeoutMs: 30_000,
      maxModelBytes: 64 * 1024 * 1024,
      activationRetries: 1,
      logger,
      clock: systemClock,
      trust: PinnedRoot.open(d.dir),
      device: { deviceId: 'edge-1', arch: 'x86_64', providers: ['cpu'], memoryBytes: 8 * 1024 ** 3 },
      onChange: () => undefined,
    });
    await old.apply(desiredFor(4, r.detector2!));
    expect(d.buffer.state.getState('models.manager')).toBeDefined();
    await d.close({ keep: true });
    devices.splice(devices.indexOf(d), 1);

    const upgraded = await device({ dir: d.dir });
    expect(upgraded.set.desiredRevision).toBe(4);
    await upgraded.set.restore();
    expect(upgraded.engine.models().map((m) => [m.name, m.version])).toEqual([['detector', 2]]);
    expect(upgraded.set.entries()).toEqual([expect.objectContaining({ name: 'detector', version: 2, state: 'serving' })]);
    expect(JSON.parse(upgraded.buffer.state.getState('models.slot.detector')!)).toMatchObject({ active: { version: 2 }, highest: { detector: 2 } });
    // A replay of the old revision changes nothing; an older detector is still refused.
    await upgraded.set.apply(desiredSet(5, [r.detector1!, r.classifier1!]));
    expect(upgraded.set.entries().map((e) => [e.name, e.version, e.error?.code])).toEqual([
      ['detector', 2, 'RELEASE_VERSION_REFUSED'],
      ['classifier', 1, undefined],
    ]);
  }, 120_000);
});

describe('inference engine - several models', () => {
  it('unloading one model leaves the others serving; the first loaded stays active()', async () => {
    const { logger } = capturingLogger();
    const engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger });
    const d = await device();
    await d.set.apply(desiredSet(1, [r.detector1!, r.classifier1!]));
    const path = (x: TestRelease) => join(d.dir, 'models', `${x.sha256}.onnx`);
    await engine.load({ name: 'detector', version: 1, path: path(r.detector1!), sha256: r.detector1!.sha256 });
    await engine.load({ name: 'classifier', version: 1, path: path(r.classifier1!), sha256: r.classifier1!.sha256, providers: ['cpu'] });
    expect(engine.active()?.name).toBe('detector');
    expect(await engine.unload('detector')).toBe(true);
    expect(await engine.unload('detector')).toBe(false);
    await expect(engine.infer('detector', [{ name: 'features', datatype: 'FP32', shape: [1, 8], data: row }])).rejects.toMatchObject({
      code: 'MODEL_NOT_FOUND',
    });
    expect((await engine.infer('classifier', [{ name: 'features', datatype: 'FP32', shape: [1, 8], data: row }])).model).toBe('classifier');
    expect(engine.active()?.name).toBe('classifier');
    expect(engine.queueStats('classifier').runs).toBe(1);
    await engine.shutdown({ graceMs: 0 });
  }, 60_000);
});
