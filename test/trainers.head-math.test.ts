import { describe, expect, it } from 'vitest';
import {
  DEFAULT_HEAD_TRAINING,
  evaluateHead,
  headLossAndGradient,
  headProbabilities,
  labelledRows,
  trainHead,
  type DenseLayer,
  type LabelledRows,
} from '../common/learning/dense-head.js';
import { seededRandom } from '../common/seeded-random.js';

function randomLayers(sizes: number[], seed: number): DenseLayer[] {
  const rng = seededRandom(seed);
  return sizes.slice(1).map((outputs, l) => {
    const inputs = sizes[l]!;
    return {
      inputs,
      outputs,
      weights: Float32Array.from({ length: inputs * outputs }, () => rng.normal(0, 0.7)),
      bias: Float32Array.from({ length: outputs }, () => rng.normal(0, 0.3)),
    };
  });
}

/** Gaussian blobs, one per class, far enough apart to be separable. */
function blobs(rows: number, features: number, classes: number, seed: number, spread = 0.6): LabelledRows {
  const rng = seededRandom(seed);
  const centers = Array.from({ length: classes }, () => Array.from({ length: features }, () => rng.normal(0, 2)));
  const x = new Float32Array(rows * features);
  const y = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const c = rng.int(classes);
    y[r] = c;
    for (let j = 0; j < features; j++) x[r * features + j] = centers[c]![j]! + rng.normal(0, spread);
  }
  return { x, y, rows, features };
}

describe('trainers - dense head math', () => {
  it('the analytic gradient of cross-entropy plus L2 matches central finite differences, for a two-layer head', () => {
    const layers = randomLayers([5, 7, 3], 3);
    const data = blobs(12, 5, 3, 4);
    const l2 = 0.05;
    const { gradient } = headLossAndGradient(layers, data, l2);
    const eps = 1e-2;
    let checked = 0;
    for (let l = 0; l < layers.length; l++) {
      for (const part of ['weights', 'bias'] as const) {
        const values = layers[l]![part];
        for (let i = 0; i < values.length; i += 2) {
          const original = values[i]!;
          values[i] = original + eps;
          const up = headLossAndGradient(layers, data, l2).loss;
          values[i] = original - eps;
          const down = headLossAndGradient(layers, data, l2).loss;
          values[i] = original;
          const numeric = (up - down) / (2 * eps);
          expect(gradient[l]![part][i]!, `layer ${l} ${part}[${i}]`).toBeCloseTo(numeric, 2);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(20);
  });

  it('probabilities are a softmax over W·h + b: rows sum to one and the argmax follows the logits', () => {
    const layers = randomLayers([4, 3], 9);
    const data = blobs(10, 4, 3, 10);
    const p = headProbabilities(layers, data.x, data.rows);
    for (let r = 0; r < data.rows; r++) {
      const row = p.subarray(r * 3, r * 3 + 3);
      expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      const logits = [0, 1, 2].map((c) => layers[0]!.bias[c]! + [0, 1, 2, 3].reduce((s, j) => s + layers[0]!.weights[c * 4 + j]! * data.x[r * 4 + j]!, 0));
      expect(row.indexOf(Math.max(...row))).toBe(logits.indexOf(Math.max(...logits)));
    }
  });

  it('training from random weights on a separable dataset reaches high accuracy on held-out rows, with Adam and with SGD', () => {
    // One draw split three ways, so held-out rows come from the same class centers.
    const all = blobs(1800, 6, 4, 21);
    const split = (from: number, to: number): LabelledRows => ({ x: all.x.slice(from * 6, to * 6), y: all.y.slice(from, to), rows: to - from, features: 6 });
    for (const optimizer of ['adam', 'sgd'] as const) {
      const result = trainHead(randomLayers([6, 16, 4], 5), split(0, 1200), split(1200, 1500), {
        ...DEFAULT_HEAD_TRAINING,
        optimizer,
        learningRate: optimizer === 'adam' ? 0.01 : 0.05,
        epochs: 15,
      });
      expect(evaluateHead(result.layers, split(1500, 1800)).accuracy, optimizer).toBeGreaterThan(0.95);
      expect(result.history.length).toBe(result.epochsRun);
    }
  });

  it('the same seed gives the same weights, bit for bit; another seed gives other weights', () => {
    const data = blobs(400, 5, 3, 31);
    const options = { ...DEFAULT_HEAD_TRAINING, epochs: 3, seed: 7, patience: 0 };
    const a = trainHead(randomLayers([5, 8, 3], 1), data, undefined, options);
    const b = trainHead(randomLayers([5, 8, 3], 1), data, undefined, options);
    const c = trainHead(randomLayers([5, 8, 3], 1), data, undefined, { ...options, seed: 8 });
    expect(Buffer.from(a.layers[0]!.weights.buffer).equals(Buffer.from(b.layers[0]!.weights.buffer))).toBe(true);
    expect(Buffer.from(a.layers[1]!.bias.buffer).equals(Buffer.from(b.layers[1]!.bias.buffer))).toBe(true);
    expect(Buffer.from(a.layers[0]!.weights.buffer).equals(Buffer.from(c.layers[0]!.weights.buffer))).toBe(false);
  });

  it('early stopping keeps the best validation epoch and stops after the patience runs out', () => {
    // Labels that are noise: the validation loss stops improving quickly.
    const rng = seededRandom(3);
    const rows = 300;
    const noise: LabelledRows = {
      x: Float32Array.from({ length: rows * 4 }, () => rng.normal()),
      y: Int32Array.from({ length: rows }, () => rng.int(2)),
      rows,
      features: 4,
    };
    const half = (from: number, to: number): LabelledRows => ({ x: noise.x.slice(from * 4, to * 4), y: noise.y.slice(from, to), rows: to - from, features: 4 });
    const result = trainHead(randomLayers([4, 32, 2], 2), half(0, 200), half(200, 300), {
      ...DEFAULT_HEAD_TRAINING,
      learningRate: 0.05,
      epochs: 200,
      patience: 3,
    });
    expect(result.epochsRun).toBeLessThan(200);
    expect(result.epochsRun - result.bestEpoch).toBe(3);
    const bestLoss = Math.min(...result.history.map((h) => h.validation!.loss));
    expect(evaluateHead(result.layers, half(200, 300)).loss).toBeCloseTo(bestLoss, 4);
  });

  it('unlabelled rows (label -1) are left out of training', () => {
    const rows = labelledRows(Float32Array.of(1, 2, 3, 4, 5, 6), BigInt64Array.of(1n, -1n, 0n), 2);
    expect(rows.rows).toBe(2);
    expect([...rows.x]).toEqual([1, 2, 5, 6]);
    expect([...rows.y]).toEqual([1, 0]);
  });

  it('a learning rate that makes the loss diverge fails with HYPERPARAMETERS_INVALID instead of writing NaN weights', () => {
    const data = blobs(200, 4, 3, 5, 0.5);
    const huge = { ...data, x: data.x.map((v) => v * 1e6) };
    expect(() =>
      trainHead(randomLayers([4, 3], 1), huge, undefined, { ...DEFAULT_HEAD_TRAINING, optimizer: 'sgd', momentum: 0, learningRate: 1e6, epochs: 5 }),
    ).toThrow(expect.objectContaining({ code: 'HYPERPARAMETERS_INVALID' }));
  });
});
