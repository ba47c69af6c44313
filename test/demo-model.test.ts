import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../common/hashing.js';
import { readModelSignature } from '../common/onnx/signature.js';
import { buildDemoModel, writeDemoModel, type DemoModel } from '../demo/model/demo-model.js';
import { mlpForward } from '../demo/model/train.js';
import { fromCsv, generateVibrationData, toCsv, vibrationRowSampler, VIBRATION_FEATURES, type VibrationData } from '../demo/model/vibration-data.js';

const F = VIBRATION_FEATURES.length;

function column(data: VibrationData, j: number): number[] {
  return Array.from({ length: data.y.length }, (_, r) => data.x[r * F + j]!);
}

/** Population stability index on 10 quantile bins of the reference. */
function psi(reference: number[], current: number[]): number {
  const sorted = [...reference].sort((a, b) => a - b);
  const edges = Array.from({ length: 9 }, (_, i) => sorted[Math.floor(((i + 1) * sorted.length) / 10)]!);
  const share = (values: number[]) => {
    const counts = new Array<number>(10).fill(0);
    for (const v of values) counts[edges.filter((e) => v >= e).length]!++;
    return counts.map((c) => Math.max(c / values.length, 1e-4));
  };
  const p = share(reference);
  const q = share(current);
  return p.reduce((sum, pi, i) => sum + (q[i]! - pi) * Math.log(q[i]! / pi), 0);
}

describe('demo model', () => {
  let model: DemoModel;
  let session: ort.InferenceSession;
  const holdout = generateVibrationData({ rows: 3000, seed: 424242 });

  beforeAll(async () => {
    model = buildDemoModel({ seed: 7 });
    session = await ort.InferenceSession.create(Buffer.from(model.bytes));
  });
  afterAll(() => session.release());

  const run = async (data: VibrationData) => {
    const out = await session.run({ features: new ort.Tensor('float32', data.x, [data.y.length, F]) });
    return { probabilities: out.probabilities!.data as Float32Array, label: out.label!.data as BigInt64Array };
  };

  it('classifies held-out machines through onnxruntime with accuracy of at least 0.85 but not perfectly', async () => {
    const { label } = await run(holdout);
    const correct = Array.from(label).filter((l, r) => Number(l) === holdout.y[r]).length;
    const accuracy = correct / holdout.y.length;
    expect(accuracy).toBeGreaterThanOrEqual(0.85);
    expect(accuracy).toBeLessThan(0.99);
    expect(model.accuracy).toBeGreaterThanOrEqual(0.85);
  });

  it('gives the same probabilities in onnxruntime as the TypeScript forward pass', async () => {
    const { probabilities } = await run(holdout);
    const expected = mlpForward(model.weights, holdout.x);
    let worst = 0;
    for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(expected[i]! - probabilities[i]!));
    expect(worst).toBeLessThan(1e-4);
  });

  it('declares raw features in, probabilities and labels out, and its classes in metadata', () => {
    const sig = readModelSignature(model.bytes);
    expect(sig.inputs).toEqual([{ name: 'features', type: 'float32', shape: [-1, 8] }]);
    expect(sig.outputs).toEqual([
      { name: 'probabilities', type: 'float32', shape: [-1, 4] },
      { name: 'label', type: 'int64', shape: [-1] },
    ]);
    expect(sig.metadata).toEqual({
      'driftline.task': 'classification',
      'driftline.classes': 'normal,imbalance,misalignment,bearing_fault',
      'driftline.features': VIBRATION_FEATURES.join(','),
      'driftline.probabilities_output': 'probabilities',
    });
  });

  it('builds identical bytes from the same seed and different bytes from another', () => {
    expect(sha256Hex(buildDemoModel({ seed: 7 }).bytes)).toBe(sha256Hex(model.bytes));
    expect(sha256Hex(buildDemoModel({ seed: 8 }).bytes)).not.toBe(sha256Hex(model.bytes));
  });

  it('writes the model file with the sha256 of its bytes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'driftline-demo-model-'));
    try {
      const written = await writeDemoModel(join(dir, 'nested', 'demo.onnx'), { seed: 7 });
      expect(sha256Hex(await readFile(written.path))).toBe(written.sha256);
      expect(written.sha256).toBe(sha256Hex(model.bytes));
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});

describe('vibration data', () => {
  const reference = generateVibrationData({ rows: 5000, seed: 11 });

  it('shifts several feature distributions under drift while a fresh undrifted sample stays put', () => {
    const drifted = generateVibrationData({ rows: 5000, seed: 12, drift: true });
    const fresh = generateVibrationData({ rows: 5000, seed: 13 });
    const drift = VIBRATION_FEATURES.map((_, j) => psi(column(reference, j), column(drifted, j)));
    const stable = VIBRATION_FEATURES.map((_, j) => psi(column(reference, j), column(fresh, j)));
    expect(drift.filter((v) => v > 0.2).length).toBeGreaterThanOrEqual(3);
    for (const v of stable) expect(v).toBeLessThan(0.1);
  });

  it('draws the same machines and labels under drift; only the sensor readings change', () => {
    const drifted = generateVibrationData({ rows: 5000, seed: 11, drift: { severity: 2 } });
    expect(drifted.y).toEqual(reference.y);
  });

  it('reproduces the same rows from the same seed, and the row sampler continues them', () => {
    expect(generateVibrationData({ rows: 5000, seed: 11 }).x).toEqual(reference.x);
    const next = vibrationRowSampler(11);
    for (let r = 0; r < 3; r++) {
      const row = next();
      expect(row.features).toEqual(Array.from(reference.x.subarray(r * F, (r + 1) * F)));
      expect(row.label).toBe(reference.y[r]);
    }
  });

  it('round-trips through CSV exactly', () => {
    const data = generateVibrationData({ rows: 200, seed: 5, drift: true });
    const csv = toCsv(data);
    expect(csv.split('\n')[0]).toBe([...VIBRATION_FEATURES, 'label'].join(','));
    const back = fromCsv(csv);
    expect(back.x).toEqual(data.x);
    expect(back.y).toEqual(data.y);
  });

  it('rejects CSV with a wrong header, an unknown class or a missing value as PAYLOAD_MALFORMED', () => {
    const header = [...VIBRATION_FEATURES, 'label'].join(',');
    const row = '1,2,3,4,5,6,7,8';
    for (const text of ['a,b,label\n1,2,normal', `${header}\n${row},broken_rotor`, `${header}\n1,2,3,,5,6,7,8,normal`, `${header}\n${row}`]) {
      expect(() => fromCsv(text)).toThrow(expect.objectContaining({ code: 'PAYLOAD_MALFORMED' }));
    }
  });

  it('refuses a negative drift severity', () => {
    expect(() => generateVibrationData({ rows: 1, seed: 1, drift: { severity: -1 } })).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
  });
});
