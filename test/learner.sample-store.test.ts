import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { OnnxBackboneSource } from '../agent/learner/onnxruntime/backbone.js';
import { SqliteLearnerStore, type LearnerStoreOptions } from '../agent/learner/sqlite/learner-store.js';
import { splitOf } from '../common/datasets/snapshot-layout.js';
import { sha256Hex } from '../common/hashing.js';
import { findClassifierHead } from '../common/onnx/classifier-head.js';
import { demoModelBytes, modelFolder, type ModelFolder } from './fixtures/models.js';
import { featuresInput } from './helpers/learner-rig.js';

const options = (dir: string, overrides: Partial<LearnerStoreOptions> = {}): LearnerStoreOptions => ({
  file: join(dir, 'learner.db'),
  maxSamples: 1000,
  maxBytes: 1 << 20,
  maxSampleBytes: 4096,
  embeddingCacheRows: 100,
  reportMemory: 10,
  ...overrides,
});

const sample = (id: string, values: number[] = [1, 2, 3, 4, 5, 6, 7, 8]) => ({ id, model: 'vibration', version: 1, inputs: featuresInput(values) });

describe('learner - local sample store', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-learner-store-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('joins feedback labels to captured inputs by request id; unlabelled and unknown ids stay out of training', () => {
    const store = SqliteLearnerStore.open(options(dir));
    const ids = Array.from({ length: 40 }, (_, i) => `req-${i}`);
    for (const id of ids) expect(store.add(sample(id, [Number(id.slice(4)), 0, 0, 0, 0, 0, 0, 0]))).toBe(true);
    // Labels for every other request; one for a request the store never saw.
    ids.forEach((id, i) => i % 2 === 0 && expect(store.label(id, 'vibration', i % 4)).toBe(true));
    expect(store.label('never-seen', 'vibration', 1)).toBe(false);
    expect(store.label('req-1', 'another-model', 1)).toBe(false);
    const labelled = ids.filter((_, i) => i % 2 === 0);
    const train = store.labelled('vibration', 'train', 1000);
    const heldOut = store.labelled('vibration', 'held-out', 1000);
    expect([...train, ...heldOut].map((s) => s.id).sort()).toEqual([...labelled].sort());
    // The split is the datasets' split hash of the id: a held-out sample never trains.
    for (const s of train) expect(splitOf(s.id)).toBe('train');
    for (const s of heldOut) expect(splitOf(s.id)).not.toBe('train');
    expect(store.count('vibration', 'train')).toBe(train.length);
    const first = [...train, ...heldOut].find((s) => s.id === 'req-2')!;
    expect(first.label).toBe(2);
    expect(Array.from(new Float32Array(new Uint8Array(first.inputs[0]!.data).buffer))).toEqual([2, 0, 0, 0, 0, 0, 0, 0]);
    expect(store.stats()).toMatchObject({ rows: 40, labelled: 20, evicted: 0 });
    store.close();
  });

  it('keeps its budget of rows and bytes oldest first, across a restart, and refuses oversized samples', () => {
    let store = SqliteLearnerStore.open(options(dir, { maxSamples: 10 }));
    for (let i = 0; i < 25; i++) store.add(sample(`a-${i}`));
    for (let i = 0; i < 25; i++) store.label(`a-${i}`, 'vibration', 1);
    const kept = [...store.labelled('vibration', 'train', 100), ...store.labelled('vibration', 'held-out', 100)].map((s) => s.id);
    expect(kept.sort()).toEqual(Array.from({ length: 10 }, (_, i) => `a-${15 + i}`).sort());
    expect(store.stats()).toMatchObject({ rows: 10, evicted: 15 });
    const perSample = store.stats().bytes / 10;
    store.close();

    // Reopened with a byte budget of four samples: the next add pushes out all but the newest four.
    store = SqliteLearnerStore.open(options(dir, { maxSamples: 10, maxBytes: Math.floor(perSample * 4.5) }));
    expect(store.stats().rows).toBe(10);
    store.add(sample('b-0'));
    store.flush();
    expect(store.stats()).toMatchObject({ rows: 4 });
    expect(store.stats().bytes).toBeLessThanOrEqual(perSample * 4.5);
    expect(store.add(sample('huge', new Array(2000).fill(1)))).toBe(false);
    store.close();
  });

  it('is its own file with a schema version, apart from the telemetry buffer', () => {
    SqliteLearnerStore.open(options(dir)).close();
    const db = new Database(join(dir, 'learner.db'), { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(1);
      const tables = (
        db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'learner_%' ORDER BY name").all() as Array<{ name: string }>
      ).map((t) => t.name);
      expect(tables).toEqual(['learner_embeddings', 'learner_reports', 'learner_samples']);
    } finally {
      db.close();
    }
  });

  it('caches embeddings by (model sha256, sample id) within its bound, and drops those of evicted samples', () => {
    const store = SqliteLearnerStore.open(options(dir, { maxSamples: 3, embeddingCacheRows: 2 }));
    store.put('sha-a', 's1', Float32Array.of(1, 2));
    store.put('sha-b', 's1', Float32Array.of(3, 4));
    expect(Array.from(store.get('sha-a', 's1')!)).toEqual([1, 2]);
    expect(Array.from(store.get('sha-b', 's1')!)).toEqual([3, 4]);
    store.put('sha-a', 's2', Float32Array.of(5, 6));
    // The oldest of three went: the bound holds.
    expect(store.get('sha-a', 's1')).toBeUndefined();
    expect(store.get('sha-a', 's2')).toBeDefined();
    for (const id of ['s2', 'x1', 'x2', 'x3']) store.add(sample(id));
    store.flush();
    // s2 was the oldest sample and left the store: its embedding went with it.
    expect(store.get('sha-a', 's2')).toBeUndefined();
    store.close();
  });
});

describe('learner - embeddings through onnxruntime', () => {
  let models: ModelFolder;
  beforeEach(async () => {
    models = await modelFolder();
  });
  afterEach(() => models.remove());

  it("computes the frozen backbone's output (the head's input, exposed as an extra graph output) for a kept sample", async () => {
    const bytes = demoModelBytes(3);
    const file = await models.write('demo.onnx', bytes);
    const source = new OnnxBackboneSource((name, version) => (name === 'vibration' && version === 1 ? file : undefined));
    const backbone = await source.open('vibration', 1, 1);
    try {
      expect(backbone.modelSha256).toBe(sha256Hex(bytes));
      // The whole MLP as the reference: its first layer is the backbone, ReLU after it.
      const full = findClassifierHead(bytes, { maxLayers: 2 });
      const first = full.layers[0]!;
      expect(backbone.head.map((l) => [l.inputs, l.outputs])).toEqual([[first.outputs, full.layers[1]!.outputs]]);
      expect(backbone.features).toBe(first.outputs);
      const x = [4.1, 12, 2.9, 3.2, 2.5, 0.9, 0.4, 41];
      const embedding = await backbone.embed(featuresInput(x));
      const expected = Array.from({ length: first.outputs }, (_, o) => {
        let s = first.bias[o]!;
        for (let i = 0; i < first.inputs; i++) s += first.weights[o * first.inputs + i]! * x[i]!;
        return Math.max(0, s);
      });
      expect(embedding.length).toBe(expected.length);
      embedding.forEach((v, i) => expect(v).toBeCloseTo(expected[i]!, 3));
    } finally {
      await backbone.close();
    }
    // A head of both layers starts at the graph input: the embedding is the row itself.
    const whole = await source.open('vibration', 1, 2);
    expect(Array.from(await whole.embed(featuresInput([1, 2, 3, 4, 5, 6, 7, 8])))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    await whole.close();
  });

  it('refuses a version the device does not serve, and a model without a dense head, with LEARNER_NO_HEAD', async () => {
    const file = await models.write('demo.onnx', demoModelBytes(3));
    const source = new OnnxBackboneSource((name, version) => (version === 1 ? file : undefined));
    await expect(source.open('vibration', 2, 1)).rejects.toMatchObject({ code: 'LEARNER_NO_HEAD' });
    const { echoModelBytes } = await import('./fixtures/models.js');
    const echo = await models.write('echo.onnx', echoModelBytes());
    await expect(new OnnxBackboneSource(() => echo).open('echo', 1, 1)).rejects.toMatchObject({ code: 'LEARNER_NO_HEAD' });
  });
});
