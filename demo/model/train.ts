import { seededRandom } from './seeded-random.js';

export interface LabelledData {
  /** rows * features values, row-major. */
  x: Float32Array;
  y: Int32Array;
  featureNames: string[];
  classNames: string[];
}

/**
 * A one-hidden-layer ReLU network. Weight matrices are [out][in], row-major, and already
 * include the training set's standardization, so they take raw features.
 */
export interface MlpWeights {
  inputs: number;
  hidden: number;
  outputs: number;
  w1: Float32Array;
  b1: Float32Array;
  w2: Float32Array;
  b2: Float32Array;
}

export interface TrainOptions {
  seed: number;
  hidden?: number;
  epochs?: number;
  batchSize?: number;
  learningRate?: number;
}

const ADAM = { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };

/** Mini-batch Adam on softmax cross-entropy; deterministic for a given seed and data. */
export function trainMlp(data: LabelledData, options: TrainOptions): MlpWeights {
  const { seed, hidden: h = 16, epochs = 30, batchSize = 32, learningRate = 0.01 } = options;
  const d = data.featureNames.length;
  const k = data.classNames.length;
  const n = data.y.length;
  const rng = seededRandom(seed);
  const { mean, std } = columnStats(data.x, n, d);
  const xs = Float64Array.from(data.x, (v, i) => (v - mean[i % d]!) / std[i % d]!);

  // One flat parameter vector keeps the Adam update a single loop.
  const o = { w1: 0, b1: h * d, w2: h * d + h, b2: h * d + h + k * h, end: h * d + h + k * h + k };
  const p = new Float64Array(o.end);
  for (let i = o.w1; i < o.b1; i++) p[i] = rng.normal(0, Math.sqrt(2 / d));
  for (let i = o.w2; i < o.b2; i++) p[i] = rng.normal(0, Math.sqrt(1 / h));
  const g = new Float64Array(o.end);
  const m = new Float64Array(o.end);
  const v = new Float64Array(o.end);
  const z1 = new Float64Array(h);
  const a1 = new Float64Array(h);
  const dz2 = new Float64Array(k);
  const order = Int32Array.from({ length: n }, (_, i) => i);
  let step = 0;

  for (let epoch = 0; epoch < epochs; epoch++) {
    shuffle(order, rng.int);
    for (let start = 0; start < n; start += batchSize) {
      const end = Math.min(n, start + batchSize);
      g.fill(0);
      for (let b = start; b < end; b++) {
        const row = order[b]! * d;
        for (let i = 0; i < h; i++) {
          let s = p[o.b1 + i]!;
          for (let j = 0; j < d; j++) s += p[o.w1 + i * d + j]! * xs[row + j]!;
          z1[i] = s;
          a1[i] = s > 0 ? s : 0;
        }
        softmaxInto(dz2, (c) => {
          let s = p[o.b2 + c]!;
          for (let i = 0; i < h; i++) s += p[o.w2 + c * h + i]! * a1[i]!;
          return s;
        });
        dz2[data.y[order[b]!]!]! -= 1;
        for (let c = 0; c < k; c++) {
          g[o.b2 + c]! += dz2[c]!;
          for (let i = 0; i < h; i++) g[o.w2 + c * h + i]! += dz2[c]! * a1[i]!;
        }
        for (let i = 0; i < h; i++) {
          if (z1[i]! <= 0) continue;
          let da = 0;
          for (let c = 0; c < k; c++) da += p[o.w2 + c * h + i]! * dz2[c]!;
          g[o.b1 + i]! += da;
          for (let j = 0; j < d; j++) g[o.w1 + i * d + j]! += da * xs[row + j]!;
        }
      }
      step++;
      const scale = 1 / (end - start);
      const lr = (learningRate * Math.sqrt(1 - ADAM.beta2 ** step)) / (1 - ADAM.beta1 ** step);
      for (let i = 0; i < o.end; i++) {
        const grad = g[i]! * scale;
        m[i] = ADAM.beta1 * m[i]! + (1 - ADAM.beta1) * grad;
        v[i] = ADAM.beta2 * v[i]! + (1 - ADAM.beta2) * grad * grad;
        p[i]! -= (lr * m[i]!) / (Math.sqrt(v[i]!) + ADAM.epsilon);
      }
    }
  }

  // Fold (x - mean) / std into the first layer so the exported model takes raw features.
  const w1 = new Float32Array(h * d);
  const b1 = new Float32Array(h);
  for (let i = 0; i < h; i++) {
    let bias = p[o.b1 + i]!;
    for (let j = 0; j < d; j++) {
      const w = p[o.w1 + i * d + j]! / std[j]!;
      w1[i * d + j] = w;
      bias -= w * mean[j]!;
    }
    b1[i] = bias;
  }
  return { inputs: d, hidden: h, outputs: k, w1, b1, w2: Float32Array.from(p.subarray(o.w2, o.b2)), b2: Float32Array.from(p.subarray(o.b2, o.end)) };
}

/** Class probabilities, rows * outputs, row-major: the same arithmetic the ONNX graph does. */
export function mlpForward(weights: MlpWeights, x: Float32Array): Float32Array {
  const { inputs: d, hidden: h, outputs: k, w1, b1, w2, b2 } = weights;
  const rows = x.length / d;
  const out = new Float32Array(rows * k);
  const a1 = new Float64Array(h);
  const probs = new Float64Array(k);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < h; i++) {
      let s = b1[i]!;
      for (let j = 0; j < d; j++) s += w1[i * d + j]! * x[r * d + j]!;
      a1[i] = s > 0 ? s : 0;
    }
    softmaxInto(probs, (c) => {
      let s = b2[c]!;
      for (let i = 0; i < h; i++) s += w2[c * h + i]! * a1[i]!;
      return s;
    });
    out.set(probs, r * k);
  }
  return out;
}

/** Share of rows whose most probable class is the label. */
export function mlpAccuracy(weights: MlpWeights, data: LabelledData): number {
  const probs = mlpForward(weights, data.x);
  const k = weights.outputs;
  let correct = 0;
  for (let r = 0; r < data.y.length; r++) {
    let best = 0;
    for (let c = 1; c < k; c++) if (probs[r * k + c]! > probs[r * k + best]!) best = c;
    if (best === data.y[r]) correct++;
  }
  return correct / data.y.length;
}

function softmaxInto(out: Float64Array, logit: (c: number) => number): void {
  let max = -Infinity;
  for (let c = 0; c < out.length; c++) {
    out[c] = logit(c);
    if (out[c]! > max) max = out[c]!;
  }
  let sum = 0;
  for (let c = 0; c < out.length; c++) {
    out[c] = Math.exp(out[c]! - max);
    sum += out[c]!;
  }
  for (let c = 0; c < out.length; c++) out[c]! /= sum;
}

function columnStats(x: Float32Array, rows: number, cols: number): { mean: Float64Array; std: Float64Array } {
  const mean = new Float64Array(cols);
  const std = new Float64Array(cols);
  for (let i = 0; i < x.length; i++) mean[i % cols]! += x[i]! / rows;
  for (let i = 0; i < x.length; i++) std[i % cols]! += (x[i]! - mean[i % cols]!) ** 2 / rows;
  // A constant column would divide by zero; it carries no signal, so any scale works.
  for (let j = 0; j < cols; j++) std[j] = Math.sqrt(std[j]!) || 1;
  return { mean, std };
}

function shuffle(order: Int32Array, randomInt: (n: number) => number): void {
  for (let i = order.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
}
