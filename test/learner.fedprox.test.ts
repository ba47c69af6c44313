import { describe, expect, it } from 'vitest';
import { flattenHead } from '../common/federated/head-vector.js';
import { headLossAndGradient, trainHead, type DenseLayer, type LabelledRows } from '../common/learning/dense-head.js';
import { seededRandom } from '../common/seeded-random.js';

function randomLayers(sizes: number[], seed: number, sd = 0.7): DenseLayer[] {
  const rng = seededRandom(seed);
  return sizes.slice(1).map((outputs, l) => {
    const inputs = sizes[l]!;
    return {
      inputs,
      outputs,
      weights: Float32Array.from({ length: inputs * outputs }, () => rng.normal(0, sd)),
      bias: Float32Array.from({ length: outputs }, () => rng.normal(0, 0.3)),
    };
  });
}

function rowsOf(rows: number, features: number, classes: number, seed: number): LabelledRows {
  const rng = seededRandom(seed);
  return {
    x: Float32Array.from({ length: rows * features }, () => rng.normal(0, 1)),
    y: Int32Array.from({ length: rows }, () => rng.int(classes)),
    rows,
    features,
  };
}

const distance = (a: readonly DenseLayer[], b: readonly DenseLayer[]): number => {
  const x = flattenHead(a);
  const y = flattenHead(b);
  return Math.sqrt(x.reduce((s, v, i) => s + (v - y[i]!) ** 2, 0));
};

describe('learner - FedProx proximal term', () => {
  it('adds mu times (w - w_global) to the gradient, matching central finite differences of mu/2 |w - w_global|^2', () => {
    const layers = randomLayers([5, 6, 3], 11);
    const center = randomLayers([5, 6, 3], 12);
    const data = rowsOf(10, 5, 3, 13);
    const mu = 0.8;
    const plain = headLossAndGradient(layers, data, 0.01);
    const prox = headLossAndGradient(layers, data, 0.01, { mu, center });
    // The loss grows by exactly mu/2 · ‖w − c‖².
    expect(prox.loss - plain.loss).toBeCloseTo((mu / 2) * distance(layers, center) ** 2, 3);
    const eps = 1e-2;
    let checked = 0;
    for (let l = 0; l < layers.length; l++) {
      for (const part of ['weights', 'bias'] as const) {
        const values = layers[l]![part];
        for (let i = 0; i < values.length; i += 3) {
          const original = values[i]!;
          values[i] = original + eps;
          const up = headLossAndGradient(layers, data, 0.01, { mu, center }).loss;
          values[i] = original - eps;
          const down = headLossAndGradient(layers, data, 0.01, { mu, center }).loss;
          values[i] = original;
          expect(prox.gradient[l]![part][i]!, `layer ${l} ${part}[${i}]`).toBeCloseTo((up - down) / (2 * eps), 2);
          // And it is the plain gradient plus mu · (w − c), to float precision.
          expect(prox.gradient[l]![part][i]! - plain.gradient[l]![part][i]!).toBeCloseTo(mu * (values[i]! - center[l]![part][i]!), 4);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(15);
  });

  it('keeps local training closer to the global head as mu grows, and mu 0 trains exactly as without the option', () => {
    const global = randomLayers([6, 3], 21, 0.1);
    const data = rowsOf(64, 6, 3, 22);
    const options = { epochs: 10, batchSize: 8, learningRate: 0.2, optimizer: 'sgd' as const, momentum: 0, l2: 0, seed: 5, patience: 0, reinitialize: false };
    const drift = (mu: number) => distance(trainHead(global, data, undefined, { ...options, proximalMu: mu }).layers, global);
    const none = drift(0);
    const some = drift(0.5);
    const strong = drift(5);
    expect(some).toBeLessThan(none);
    expect(strong).toBeLessThan(some);
    expect(flattenHead(trainHead(global, data, undefined, options).layers)).toEqual(
      flattenHead(trainHead(global, data, undefined, { ...options, proximalMu: 0 }).layers),
    );
  });

  it('refuses a negative mu and a center of another shape with HYPERPARAMETERS_INVALID', () => {
    const global = randomLayers([4, 2], 1);
    const data = rowsOf(8, 4, 2, 2);
    const options = { epochs: 1, batchSize: 4, learningRate: 0.1, optimizer: 'sgd' as const, momentum: 0, l2: 0, seed: 1, patience: 0, reinitialize: false };
    expect(() => trainHead(global, data, undefined, { ...options, proximalMu: -1 })).toThrow(expect.objectContaining({ code: 'HYPERPARAMETERS_INVALID' }));
    expect(() => trainHead(global, data, undefined, { ...options, proximalMu: 1, proximalCenter: randomLayers([4, 3], 1) })).toThrow(
      expect.objectContaining({ code: 'HYPERPARAMETERS_INVALID' }),
    );
  });
});
