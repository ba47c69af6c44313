import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DriftlineError } from '../../common/errors.js';
import { sha256Hex } from '../../common/hashing.js';
import { DEFAULT_HEAD_TRAINING, evaluateHead, trainHead, type DenseLayer, type LabelledRows } from '../../common/learning/dense-head.js';
import { buildModel } from '../../common/onnx/builder.js';
import { seededRandom, type SeededRandom } from '../../common/seeded-random.js';
import { trainMlp, type MlpWeights } from './train.js';
import { generateVibrationData, VIBRATION_CLASSES, VIBRATION_FEATURES, type VibrationData } from './vibration-data.js';

/**
 * The federated demo's classifier: a frozen backbone (a dense ReLU layer trained on a large
 * generic vibration corpus, then L2-normalized: the embedding) and a dense head on it. The
 * normalization is what ends the trainable part: a head finder walks back from the Softmax
 * through dense layers and ReLUs only, so the head is the final Gemm and nothing else.
 *
 * The version shipped first has a deliberately weak head: it was fitted in the lab on healthy
 * and unbalanced machines only (two of the four classes), so it has never seen a misalignment
 * or a bearing fault. The devices in the field have seen them, each its own mix; the federated
 * rounds teach the head what the fleet knows without a raw sample leaving a device.
 */

export const EMBEDDING_SIZE = 16;
/** The tensor the head takes: the backbone's normalized output. */
export const EMBEDDING_TENSOR = 'embedding';
/** Rows the backbone was trained on (every class, the fleet's mix). */
const BACKBONE_ROWS = 4000;
/** The lab's set the base head was fitted on: healthy and unbalanced machines only. */
const LAB_ROWS = 200;
const LAB_CLASSES = 2;
const HOLDOUT_ROWS = 2000;

export interface FederatedBaseModel {
  bytes: Uint8Array;
  sha256: string;
  /** The backbone's dense layer (frozen), raw features in. */
  backbone: { inputs: number; outputs: number; weights: Float32Array; bias: Float32Array };
  /** The weak head the base version ships with. */
  head: DenseLayer;
  /** The base version's accuracy on held-out rows of the fleet's class mix. */
  accuracy: number;
  /** What a head trained centrally on every class reaches on the same rows: the ceiling a federated head can approach. */
  centralizedAccuracy: number;
}

/** The frozen body's output for raw feature rows: ReLU(W·x + b), L2-normalized (the ONNX graph's LpNormalization). */
export function embedRows(backbone: FederatedBaseModel['backbone'], x: Float32Array): Float32Array {
  const { inputs: d, outputs: h, weights, bias } = backbone;
  const rows = x.length / d;
  const out = new Float32Array(rows * h);
  for (let r = 0; r < rows; r++) {
    let norm = 0;
    for (let i = 0; i < h; i++) {
      let s = bias[i]!;
      for (let j = 0; j < d; j++) s += weights[i * d + j]! * x[r * d + j]!;
      const a = s > 0 ? s : 0;
      out[r * h + i] = a;
      norm += a * a;
    }
    // ONNX's LpNormalization divides by the norm as it is; an all-zero embedding stays zero there too.
    const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
    for (let i = 0; i < h; i++) out[r * h + i]! *= scale;
  }
  return out;
}

export function buildFederatedBaseModel(options: { seed?: number } = {}): FederatedBaseModel {
  const seed = options.seed ?? 1;
  const mlp: MlpWeights = trainMlp(generateVibrationData({ rows: BACKBONE_ROWS, seed }), { seed, hidden: EMBEDDING_SIZE });
  const backbone = { inputs: mlp.inputs, outputs: mlp.hidden, weights: mlp.w1, bias: mlp.b1 };
  const rng = seededRandom(seed + 17);
  const initial: DenseLayer = {
    inputs: EMBEDDING_SIZE,
    outputs: VIBRATION_CLASSES.length,
    weights: Float32Array.from({ length: EMBEDDING_SIZE * VIBRATION_CLASSES.length }, () => rng.normal(0, 0.25)),
    bias: new Float32Array(VIBRATION_CLASSES.length),
  };
  const lab = firstClassesOnly(generateVibrationData({ rows: LAB_ROWS * 4, seed: seed + 0x200 }), LAB_CLASSES, LAB_ROWS);
  const training = { ...DEFAULT_HEAD_TRAINING, epochs: 5, patience: 0, seed };
  const [head] = trainHead([initial], embedded(backbone, lab), undefined, training).layers as [DenseLayer];
  const holdout = embedded(backbone, generateVibrationData({ rows: HOLDOUT_ROWS, seed: seed + 0x10000 }));
  const central = trainHead([initial], embedded(backbone, generateVibrationData({ rows: BACKBONE_ROWS, seed: seed + 0x300 })), undefined, {
    ...training,
    epochs: 30,
  }).layers;
  const bytes = federatedModelBytes(backbone, head);
  return {
    bytes,
    sha256: sha256Hex(bytes),
    backbone,
    head,
    accuracy: evaluateHead([head], holdout).accuracy,
    centralizedAccuracy: evaluateHead(central, holdout).accuracy,
  };
}

export async function writeFederatedBaseModel(path: string, options: { seed?: number } = {}): Promise<FederatedBaseModel> {
  const model = buildFederatedBaseModel(options);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, model.bytes);
  return model;
}

function federatedModelBytes(backbone: FederatedBaseModel['backbone'], head: DenseLayer): Uint8Array {
  const classes = head.outputs;
  return buildModel({
    name: 'vibration-fault-federated',
    inputs: [{ name: 'features', type: 'float32', shape: ['batch', backbone.inputs] }],
    outputs: [
      { name: 'probabilities', type: 'float32', shape: ['batch', classes] },
      { name: 'label', type: 'int64', shape: ['batch'] },
    ],
    nodes: [
      { op: 'Gemm', inputs: ['features', 'backbone_w', 'backbone_b'], outputs: ['backbone_linear'], attributes: { transB: { int: 1 } } },
      { op: 'Relu', inputs: ['backbone_linear'], outputs: ['backbone_relu'] },
      { op: 'LpNormalization', inputs: ['backbone_relu'], outputs: [EMBEDDING_TENSOR], attributes: { axis: { int: 1 }, p: { int: 2 } } },
      { op: 'Gemm', inputs: [EMBEDDING_TENSOR, 'head_w', 'head_b'], outputs: ['logits'], attributes: { transB: { int: 1 } } },
      { op: 'Softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: { int: 1 } } },
      { op: 'ArgMax', inputs: ['probabilities'], outputs: ['label'], attributes: { axis: { int: 1 }, keepdims: { int: 0 } } },
    ],
    initializers: [
      { name: 'backbone_w', type: 'float32', dims: [backbone.outputs, backbone.inputs], values: backbone.weights },
      { name: 'backbone_b', type: 'float32', dims: [backbone.outputs], values: backbone.bias },
      { name: 'head_w', type: 'float32', dims: [classes, head.inputs], values: head.weights },
      { name: 'head_b', type: 'float32', dims: [classes], values: head.bias },
    ],
    metadata: {
      'driftline.task': 'classification',
      'driftline.classes': VIBRATION_CLASSES.join(','),
      'driftline.features': VIBRATION_FEATURES.join(','),
      'driftline.probabilities_output': 'probabilities',
    },
  });
}

function embedded(backbone: FederatedBaseModel['backbone'], data: VibrationData): LabelledRows {
  return { x: embedRows(backbone, data.x), y: data.y, rows: data.y.length, features: backbone.outputs };
}

/** The first `count` rows whose class is below `classes`. */
function firstClassesOnly(data: VibrationData, classes: number, count: number): VibrationData {
  const d = data.featureNames.length;
  const keep: number[] = [];
  for (let r = 0; r < data.y.length && keep.length < count; r++) if (data.y[r]! < classes) keep.push(r);
  const x = new Float32Array(keep.length * d);
  keep.forEach((r, i) => x.set(data.x.subarray(r * d, (r + 1) * d), i * d));
  return { ...data, x, y: Int32Array.from(keep, (r) => data.y[r]!) };
}

/**
 * One device's label mix: a draw from Dirichlet(α, …, α). Small α gives devices that see
 * mostly one or two classes (Flower's niid_bench uses α = 0.5).
 */
export function dirichletClassWeights(alpha: number, classes: number, rng: SeededRandom): number[] {
  if (!(alpha > 0) || !Number.isFinite(alpha)) throw new DriftlineError('REQUEST_INVALID', `the Dirichlet α must be a finite number > 0, got ${alpha}`);
  for (;;) {
    const draws = Array.from({ length: classes }, () => gamma(alpha, rng));
    const sum = draws.reduce((a, b) => a + b, 0);
    // Every draw can underflow to 0 with a tiny α; draw again rather than divide by zero.
    if (sum > 0) return draws.map((v) => v / sum);
  }
}

/** Marsaglia and Tsang's Gamma(shape, 1) sampler; shape < 1 through the boost Gamma(a+1) · U^(1/a). */
function gamma(shape: number, rng: SeededRandom): number {
  if (shape < 1) return gamma(shape + 1, rng) * Math.pow(rng.next(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = rng.normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = rng.next();
    if (u < 1 - 0.0331 * x ** 4 || Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}
