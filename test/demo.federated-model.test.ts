import ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import { findClassifierHead, withHeadInputAsOutput } from '../common/onnx/classifier-head.js';
import { seededRandom } from '../common/seeded-random.js';
import { buildFederatedBaseModel, dirichletClassWeights, EMBEDDING_SIZE, EMBEDDING_TENSOR, embedRows } from '../demo/model/federated-model.js';
import { generateVibrationData, vibrationRowSampler } from '../demo/model/vibration-data.js';

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return err instanceof DriftlineError ? err.code : 'not a DriftlineError';
  }
  return undefined;
};

describe('the federated demo model', () => {
  const model = buildFederatedBaseModel();

  it('federated model - its trainable head is the final dense layer only: the normalized embedding ends the frozen backbone', () => {
    const head = findClassifierHead(model.bytes);
    expect(head.input).toBe(EMBEDDING_TENSOR);
    expect(head.inputIsGraphInput).toBe(false);
    expect(head.layers).toHaveLength(1);
    expect(head.layers[0]).toMatchObject({ inputs: EMBEDDING_SIZE, outputs: 4 });
    expect(Array.from(head.layers[0]!.weights)).toEqual(Array.from(model.head.weights));
  });

  it('federated model - onnxruntime computes the same embedding as the demo does offline', async () => {
    const head = findClassifierHead(model.bytes);
    const session = await ort.InferenceSession.create(withHeadInputAsOutput(model.bytes, head));
    try {
      const rows = generateVibrationData({ rows: 64, seed: 5 });
      const out = await session.run({ features: new ort.Tensor('float32', rows.x, [64, 8]) });
      const fromOnnx = out[EMBEDDING_TENSOR]!.data as Float32Array;
      const offline = embedRows(model.backbone, rows.x);
      for (let i = 0; i < offline.length; i++) expect(fromOnnx[i]).toBeCloseTo(offline[i]!, 5);
    } finally {
      await session.release();
    }
  });

  it('federated model - the base head is weak where a centrally trained head on the same backbone is good, so federated rounds have something to learn', () => {
    expect(model.accuracy).toBeLessThan(0.7);
    expect(model.centralizedAccuracy).toBeGreaterThan(0.9);
  });
});

describe('non-IID devices', () => {
  it('dirichlet - every draw is a distribution, and a small α concentrates it on few classes', () => {
    const rng = seededRandom(3);
    const largest = (alpha: number): number => {
      let sum = 0;
      for (let i = 0; i < 200; i++) {
        const w = dirichletClassWeights(alpha, 4, rng);
        expect(w.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
        for (const v of w) expect(v).toBeGreaterThanOrEqual(0);
        sum += Math.max(...w);
      }
      return sum / 200;
    };
    // E[max] for Dirichlet(α·1₄): about 0.40 at α = 10, about 0.70 at α = 0.5, above 0.9 at α = 0.05.
    const [iid, half, tiny] = [largest(10), largest(0.5), largest(0.05)];
    expect(iid).toBeLessThan(0.5);
    expect(half).toBeGreaterThan(iid + 0.15);
    expect(tiny).toBeGreaterThan(0.85);
  });

  it('dirichlet - a bad α is refused with REQUEST_INVALID', () => {
    for (const alpha of [0, -1, Number.NaN, Number.POSITIVE_INFINITY])
      expect(codeOf(() => dirichletClassWeights(alpha, 4, seededRandom(1)))).toBe('REQUEST_INVALID');
  });

  it('row sampler - class weights set how often each class comes up', () => {
    const next = vibrationRowSampler(9, { classWeights: [0, 0.75, 0, 0.25] });
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[next().label]!++;
    expect(counts[0]).toBe(0);
    expect(counts[2]).toBe(0);
    expect(counts[1]! / 4000).toBeCloseTo(0.75, 1);
  });

  it('row sampler - class weights of the wrong length, negative or all zero are refused with REQUEST_INVALID', () => {
    for (const classWeights of [
      [1, 1],
      [1, -1, 1, 1],
      [0, 0, 0, 0],
      [1, Number.NaN, 1, 1],
    ]) {
      expect(codeOf(() => vibrationRowSampler(1, { classWeights }))).toBe('REQUEST_INVALID');
    }
  });
});
