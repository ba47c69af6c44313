import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { buildModel } from '../../common/onnx/builder.js';
import { sha256Hex } from '../../common/hashing.js';
import { mlpAccuracy, trainMlp, type MlpWeights } from './train.js';
import { generateVibrationData, type VibrationData } from './vibration-data.js';

export interface DemoModelOptions {
  /** Seeds the training data and the weights; the held-out set uses a seed derived from it. */
  seed?: number;
}

export interface DemoModel {
  bytes: Uint8Array;
  /** Accuracy on held-out rows drawn with a different seed. */
  accuracy: number;
  featureNames: string[];
  classNames: string[];
  weights: MlpWeights;
}

const TRAIN_ROWS = 4000;
const HOLDOUT_ROWS = 2000;

/** The rows the demo model is trained on; also what its drift reference is computed from. */
export const demoTrainingData = (seed = 1): VibrationData => generateVibrationData({ rows: TRAIN_ROWS, seed });

/** The vibration-fault classifier every demo and integration test ships to devices. */
export function buildDemoModel(options: DemoModelOptions = {}): DemoModel {
  const seed = options.seed ?? 1;
  const train = demoTrainingData(seed);
  const holdout = generateVibrationData({ rows: HOLDOUT_ROWS, seed: seed + 0x10000 });
  const weights = trainMlp(train, { seed });
  const { featureNames, classNames } = train;
  const bytes = buildModel({
    name: 'vibration-fault-mlp',
    inputs: [{ name: 'features', type: 'float32', shape: ['batch', weights.inputs] }],
    outputs: [
      { name: 'probabilities', type: 'float32', shape: ['batch', weights.outputs] },
      { name: 'label', type: 'int64', shape: ['batch'] },
    ],
    nodes: [
      { op: 'Gemm', inputs: ['features', 'w1', 'b1'], outputs: ['hidden_linear'], attributes: { transB: { int: 1 } } },
      { op: 'Relu', inputs: ['hidden_linear'], outputs: ['hidden'] },
      { op: 'Gemm', inputs: ['hidden', 'w2', 'b2'], outputs: ['logits'], attributes: { transB: { int: 1 } } },
      { op: 'Softmax', inputs: ['logits'], outputs: ['probabilities'], attributes: { axis: { int: 1 } } },
      { op: 'ArgMax', inputs: ['probabilities'], outputs: ['label'], attributes: { axis: { int: 1 }, keepdims: { int: 0 } } },
    ],
    initializers: [
      { name: 'w1', type: 'float32', dims: [weights.hidden, weights.inputs], values: weights.w1 },
      { name: 'b1', type: 'float32', dims: [weights.hidden], values: weights.b1 },
      { name: 'w2', type: 'float32', dims: [weights.outputs, weights.hidden], values: weights.w2 },
      { name: 'b2', type: 'float32', dims: [weights.outputs], values: weights.b2 },
    ],
    metadata: {
      'driftline.task': 'classification',
      'driftline.classes': classNames.join(','),
      'driftline.features': featureNames.join(','),
      'driftline.probabilities_output': 'probabilities',
    },
  });
  return { bytes, accuracy: mlpAccuracy(weights, holdout), featureNames, classNames, weights };
}

export async function writeDemoModel(path: string, options: DemoModelOptions = {}): Promise<{ path: string; sha256: string; accuracy: number }> {
  const model = buildDemoModel(options);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, model.bytes);
  return { path, sha256: sha256Hex(model.bytes), accuracy: model.accuracy };
}
