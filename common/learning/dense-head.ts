/**
 * A classifier's dense head and its training: softmax over the last of a few dense layers
 * (ReLU between them), cross-entropy with L2 on the weights, mini-batch SGD (with momentum) or
 * Adam, early stopping on a validation split. Pure arithmetic on Float32Array, no I/O: the
 * TypeScript trainer runs it on embeddings from onnxruntime, the federated learner on devices
 * runs it on local samples.
 *
 * Speed matters (bench/training/trainer.ts holds it to a plain loop doing the same
 * arithmetic): every buffer is allocated once per training run, parameters live in one flat
 * vector so an optimizer step is a single loop, and nothing is allocated per sample or batch.
 */
import { DriftlineError } from '../errors.js';
import { seededRandom } from '../seeded-random.js';

/** One dense layer: outputs = weights · inputs + bias, weights row-major [outputs][inputs] (Gemm with transB=1). */
export interface DenseLayer {
  inputs: number;
  outputs: number;
  weights: Float32Array;
  bias: Float32Array;
}

/** Rows of features with a class index each. */
export interface LabelledRows {
  /** rows × features, row-major. */
  x: Float32Array;
  /** Class index per row, 0..classes-1. */
  y: Int32Array;
  rows: number;
  features: number;
}

export interface HeadTrainingOptions {
  epochs: number;
  batchSize: number;
  learningRate: number;
  optimizer: 'sgd' | 'adam';
  /** SGD only: 0 is plain SGD. */
  momentum: number;
  /** L2 penalty on the weights (not the biases): loss + l2/2 · Σw². */
  l2: number;
  /** Seeds the shuffling (and the initial weights when reinitialize is set). */
  seed: number;
  /** Stop after this many epochs without a better validation loss, and keep the best epoch's weights. 0 never stops early. */
  patience: number;
  /** Start from fresh He-initialized weights instead of the given ones. */
  reinitialize: boolean;
  /**
   * FedProx's proximal term: loss + μ/2 · ‖w − w_center‖² over every weight and bias, which keeps
   * a device's local training near the global head it started from (Li et al. 2020). 0 (the
   * default): no term.
   */
  proximalMu?: number;
  /** The proximal term's center, laid out like the layers; the initial layers when absent. */
  proximalCenter?: readonly DenseLayer[];
}

export const DEFAULT_HEAD_TRAINING: HeadTrainingOptions = {
  epochs: 20,
  batchSize: 32,
  learningRate: 0.005,
  optimizer: 'adam',
  momentum: 0.9,
  l2: 1e-4,
  seed: 1,
  patience: 5,
  reinitialize: false,
};

export interface LossAndAccuracy {
  /** Mean cross-entropy (without the L2 term). */
  loss: number;
  accuracy: number;
}

export interface EpochReport {
  /** 1-based. */
  epoch: number;
  epochs: number;
  /** Mean over the epoch's batches, as they were trained (before each update). */
  train: LossAndAccuracy;
  /** After the epoch; absent without validation rows. */
  validation?: LossAndAccuracy;
}

export interface HeadTrainingResult {
  layers: DenseLayer[];
  /** Epochs run (fewer than asked when early stopping stopped it). */
  epochsRun: number;
  /** The epoch whose weights were kept. */
  bestEpoch: number;
  samplesSeen: number;
  history: EpochReport[];
}

/** The flat parameter vector of a stack of layers: layer l's weights then its bias, layer after layer. */
interface Packed {
  sizes: number[];
  values: Float32Array;
  weightAt: number[];
  biasAt: number[];
}

function pack(layers: readonly DenseLayer[]): Packed {
  checkLayers(layers);
  const sizes = [layers[0]!.inputs, ...layers.map((l) => l.outputs)];
  const weightAt: number[] = [];
  const biasAt: number[] = [];
  let at = 0;
  for (const layer of layers) {
    weightAt.push(at);
    at += layer.inputs * layer.outputs;
    biasAt.push(at);
    at += layer.outputs;
  }
  const values = new Float32Array(at);
  layers.forEach((layer, l) => {
    values.set(layer.weights, weightAt[l]);
    values.set(layer.bias, biasAt[l]);
  });
  return { sizes, values, weightAt, biasAt };
}

function unpack(packed: Packed): DenseLayer[] {
  return packed.weightAt.map((w, l) => {
    const inputs = packed.sizes[l]!;
    const outputs = packed.sizes[l + 1]!;
    return {
      inputs,
      outputs,
      weights: packed.values.slice(w, w + inputs * outputs),
      bias: packed.values.slice(packed.biasAt[l], packed.biasAt[l]! + outputs),
    };
  });
}

function checkLayers(layers: readonly DenseLayer[]): void {
  if (layers.length === 0) throw new DriftlineError('MODEL_HEAD_UNSUPPORTED', 'a dense head needs at least one layer');
  layers.forEach((layer, l) => {
    if (layer.weights.length !== layer.inputs * layer.outputs || layer.bias.length !== layer.outputs) {
      throw new DriftlineError(
        'MODEL_HEAD_UNSUPPORTED',
        `dense layer ${l} holds ${layer.weights.length} weights and ${layer.bias.length} biases for ${layer.inputs} → ${layer.outputs}`,
      );
    }
    if (l > 0 && layer.inputs !== layers[l - 1]!.outputs) {
      throw new DriftlineError('MODEL_HEAD_UNSUPPORTED', `dense layer ${l} takes ${layer.inputs} inputs but layer ${l - 1} gives ${layers[l - 1]!.outputs}`);
    }
  });
}

function checkRows(rows: LabelledRows, features: number, classes: number, what: string): void {
  if (rows.features !== features) throw new DriftlineError('DATASET_INVALID', `${what} rows have ${rows.features} features; the head takes ${features}`);
  if (rows.x.length !== rows.rows * rows.features || rows.y.length !== rows.rows) {
    throw new DriftlineError('DATASET_INVALID', `${what} holds ${rows.x.length} values and ${rows.y.length} labels for ${rows.rows} rows of ${rows.features}`);
  }
  for (let r = 0; r < rows.rows; r++) {
    const label = rows.y[r]!;
    if (!(label >= 0 && label < classes)) throw new DriftlineError('DATASET_INVALID', `${what} row ${r} has label ${label}; the head has ${classes} classes`);
  }
}

/**
 * The per-run working memory: activations, deltas, the gradient. One per training run (or
 * evaluation), so the loops below allocate nothing.
 */
class Workspace {
  /** Pre-activation of each layer. */
  readonly z: Float32Array[];
  /** ReLU of each hidden layer (the input of the next). */
  readonly a: Float32Array[];
  /** dLoss/dz of each layer. */
  readonly delta: Float32Array[];
  readonly gradient: Float32Array;

  constructor(readonly packed: Packed) {
    const layers = packed.weightAt.length;
    this.z = Array.from({ length: layers }, (_, l) => new Float32Array(packed.sizes[l + 1]!));
    this.a = Array.from({ length: layers }, (_, l) => new Float32Array(packed.sizes[l + 1]!));
    this.delta = Array.from({ length: layers }, (_, l) => new Float32Array(packed.sizes[l + 1]!));
    this.gradient = new Float32Array(packed.values.length);
  }

  /** Forward pass of one row; z of the last layer becomes the class probabilities. Returns the predicted class. */
  forward(x: Float32Array, xAt: number): number {
    const { values, sizes, weightAt, biasAt } = this.packed;
    const layers = weightAt.length;
    let input = x;
    let inputAt = xAt;
    for (let l = 0; l < layers; l++) {
      const z = this.z[l]!;
      denseForward(values, weightAt[l]!, biasAt[l]!, input, inputAt, sizes[l]!, z, sizes[l + 1]!);
      if (l < layers - 1) {
        const a = this.a[l]!;
        for (let i = 0; i < a.length; i++) a[i] = z[i]! > 0 ? z[i]! : 0;
        input = a;
        inputAt = 0;
      }
    }
    return softmaxInPlace(this.z[layers - 1]!);
  }

  /**
   * Adds one row's gradient of cross-entropy to this.gradient (after forward() on the same
   * row). Returns the row's loss.
   */
  backward(x: Float32Array, xAt: number, label: number): number {
    const { values, sizes, weightAt, biasAt } = this.packed;
    const g = this.gradient;
    const last = weightAt.length - 1;
    const p = this.z[last]!;
    const loss = -Math.log(Math.max(p[label]!, 1e-12));
    const top = this.delta[last]!;
    for (let c = 0; c < top.length; c++) top[c] = p[c]!;
    top[label]! -= 1;
    for (let l = last; l >= 0; l--) {
      const nIn = sizes[l]!;
      const nOut = sizes[l + 1]!;
      const delta = this.delta[l]!;
      const input = l === 0 ? x : this.a[l - 1]!;
      const inputAt = l === 0 ? xAt : 0;
      const wAt = weightAt[l]!;
      const bAt = biasAt[l]!;
      if (l === 0) {
        for (let o = 0; o < nOut; o++) {
          const d = delta[o]!;
          if (d === 0) continue;
          g[bAt + o]! += d;
          const row = wAt + o * nIn;
          for (let i = 0; i < nIn; i++) g[row + i]! += d * input[inputAt + i]!;
        }
      } else {
        const below = this.delta[l - 1]!;
        below.fill(0);
        for (let o = 0; o < nOut; o++) {
          const d = delta[o]!;
          if (d === 0) continue;
          g[bAt + o]! += d;
          const row = wAt + o * nIn;
          for (let i = 0; i < nIn; i++) {
            g[row + i]! += d * input[i]!;
            below[i]! += values[row + i]! * d;
          }
        }
        // ReLU: no gradient where the unit was off.
        const zBelow = this.z[l - 1]!;
        for (let i = 0; i < nIn; i++) if (zBelow[i]! <= 0) below[i] = 0;
      }
    }
    return loss;
  }
}

function denseForward(
  values: Float32Array,
  wAt: number,
  bAt: number,
  input: Float32Array,
  inputAt: number,
  nIn: number,
  out: Float32Array,
  nOut: number,
): void {
  for (let o = 0; o < nOut; o++) {
    let s = values[bAt + o]!;
    const row = wAt + o * nIn;
    for (let i = 0; i < nIn; i++) s += values[row + i]! * input[inputAt + i]!;
    out[o] = s;
  }
}

/** Softmax over v in place; returns the index of the largest entry. */
function softmaxInPlace(v: Float32Array): number {
  let best = 0;
  let max = v[0]!;
  for (let c = 1; c < v.length; c++) {
    if (v[c]! > max) {
      max = v[c]!;
      best = c;
    }
  }
  let sum = 0;
  for (let c = 0; c < v.length; c++) {
    const e = Math.exp(v[c]! - max);
    v[c] = e;
    sum += e;
  }
  for (let c = 0; c < v.length; c++) v[c]! /= sum;
  return best;
}

/** Class probabilities for rows of features: rows × classes, row-major. The same arithmetic as the ONNX head. */
export function headProbabilities(layers: readonly DenseLayer[], x: Float32Array, rows: number): Float32Array {
  const work = new Workspace(pack(layers));
  const d = layers[0]!.inputs;
  const k = layers[layers.length - 1]!.outputs;
  if (x.length !== rows * d) throw new DriftlineError('DATASET_INVALID', `${x.length} values are not ${rows} rows of ${d} features`);
  const out = new Float32Array(rows * k);
  const p = work.z[layers.length - 1]!;
  for (let r = 0; r < rows; r++) {
    work.forward(x, r * d);
    out.set(p, r * k);
  }
  return out;
}

/** Mean cross-entropy and accuracy of the head on labelled rows (0 and 0 for no rows). */
export function evaluateHead(layers: readonly DenseLayer[], data: LabelledRows): LossAndAccuracy {
  return evaluatePacked(new Workspace(pack(layers)), data);
}

function evaluatePacked(work: Workspace, data: LabelledRows): LossAndAccuracy {
  const p = work.z[work.z.length - 1]!;
  let loss = 0;
  let correct = 0;
  for (let r = 0; r < data.rows; r++) {
    const label = data.y[r]!;
    if (work.forward(data.x, r * data.features) === label) correct++;
    loss -= Math.log(Math.max(p[label]!, 1e-12));
  }
  return data.rows === 0 ? { loss: 0, accuracy: 0 } : { loss: loss / data.rows, accuracy: correct / data.rows };
}

/**
 * The training objective on a set of rows (mean cross-entropy + l2/2 · Σw²) and its gradient
 * with respect to every weight and bias, laid out like the layers. For gradient checks and
 * for the federated learner's update.
 */
export function headLossAndGradient(
  layers: readonly DenseLayer[],
  data: LabelledRows,
  l2: number,
  /** FedProx's term μ/2 · ‖w − center‖², added to the loss and (as μ · (w − center)) to the gradient. */
  proximal?: { mu: number; center: readonly DenseLayer[] },
): { loss: number; gradient: DenseLayer[] } {
  const packed = pack(layers);
  const center = proximal && proximal.mu > 0 ? proximalCenterOf(packed, proximal.center) : undefined;
  const mu = center ? proximal!.mu : 0;
  checkRows(data, packed.sizes[0]!, packed.sizes[packed.sizes.length - 1]!, 'the');
  const work = new Workspace(packed);
  let loss = 0;
  for (let r = 0; r < data.rows; r++) {
    work.forward(data.x, r * data.features);
    loss += work.backward(data.x, r * data.features, data.y[r]!);
  }
  const scale = data.rows === 0 ? 0 : 1 / data.rows;
  const decay = decayMask(packed, l2);
  const g = work.gradient;
  let penalty = 0;
  for (let i = 0; i < g.length; i++) {
    g[i] = g[i]! * scale + decay[i]! * packed.values[i]!;
    penalty += decay[i]! * packed.values[i]! * packed.values[i]!;
  }
  if (center) {
    for (let i = 0; i < g.length; i++) {
      const d = packed.values[i]! - center[i]!;
      g[i]! += mu * d;
      penalty += mu * d * d;
    }
  }
  return { loss: loss * scale + penalty / 2, gradient: unpack({ ...packed, values: g }) };
}

/** The proximal center as a flat vector laid out like `packed`; its layers must have the same shapes. */
function proximalCenterOf(packed: Packed, center: readonly DenseLayer[]): Float32Array {
  const flat = pack(center);
  if (flat.values.length !== packed.values.length || flat.sizes.some((size, i) => size !== packed.sizes[i])) {
    throw new DriftlineError(
      'HYPERPARAMETERS_INVALID',
      `the proximal center's layers (${flat.sizes.join(' → ')}) are not the head's (${packed.sizes.join(' → ')})`,
    );
  }
  return flat.values;
}

/** l2 where the parameter is a weight, 0 where it is a bias. */
function decayMask(packed: Packed, l2: number): Float32Array {
  const mask = new Float32Array(packed.values.length);
  packed.weightAt.forEach((w, l) => mask.fill(l2, w, packed.biasAt[l]));
  return mask;
}

const ADAM = { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };

/**
 * Trains the head on the training rows, from the given weights (fine-tuning) or fresh ones.
 * Deterministic: the same layers, rows and options give the same weights on every machine.
 * onEpoch sees each epoch as it ends (the trainer prints it as a progress line).
 */
export function trainHead(
  initial: readonly DenseLayer[],
  train: LabelledRows,
  validation: LabelledRows | undefined,
  options: HeadTrainingOptions,
  onEpoch?: (report: EpochReport) => void,
): HeadTrainingResult {
  const packed = pack(initial);
  const features = packed.sizes[0]!;
  const classes = packed.sizes[packed.sizes.length - 1]!;
  checkRows(train, features, classes, 'training');
  if (validation) checkRows(validation, features, classes, 'validation');
  if (!(options.batchSize >= 1) || !(options.epochs >= 1) || !(options.learningRate > 0)) {
    throw new DriftlineError('HYPERPARAMETERS_INVALID', 'epochs and batch size must be at least 1 and the learning rate above 0');
  }
  const mu = options.proximalMu ?? 0;
  if (!(mu >= 0) || !Number.isFinite(mu)) throw new DriftlineError('HYPERPARAMETERS_INVALID', `the proximal term's μ must be finite and at least 0, not ${mu}`);
  // Taken before a reinitialization: the center is the head the run was given (the global head).
  const center = mu > 0 ? proximalCenterOf(packed, options.proximalCenter ?? initial) : undefined;
  const rng = seededRandom(options.seed);
  if (options.reinitialize) {
    packed.weightAt.forEach((w, l) => {
      const fanIn = packed.sizes[l]!;
      for (let i = w; i < packed.biasAt[l]!; i++) packed.values[i] = rng.normal(0, Math.sqrt(2 / fanIn));
      packed.values.fill(0, packed.biasAt[l], packed.biasAt[l]! + packed.sizes[l + 1]!);
    });
  }

  const work = new Workspace(packed);
  const params = packed.values;
  const g = work.gradient;
  const n = params.length;
  const decay = decayMask(packed, options.l2);
  const first = new Float32Array(n); // SGD velocity, or Adam's first moment
  const second = options.optimizer === 'adam' ? new Float32Array(n) : undefined;
  const best = params.slice();
  const order = Int32Array.from({ length: train.rows }, (_, i) => i);
  const { x, y } = train;
  const batchSize = Math.floor(options.batchSize);
  const lr = options.learningRate;
  const momentum = options.momentum;
  const history: EpochReport[] = [];
  let bestLoss = Infinity;
  let bestEpoch = 0;
  let step = 0;
  let samplesSeen = 0;
  let epoch = 0;

  while (epoch < options.epochs) {
    epoch++;
    for (let i = order.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    let epochLoss = 0;
    let correct = 0;
    for (let start = 0; start < train.rows; start += batchSize) {
      const end = Math.min(train.rows, start + batchSize);
      g.fill(0);
      for (let b = start; b < end; b++) {
        const row = order[b]!;
        const at = row * features;
        const label = y[row]!;
        if (work.forward(x, at) === label) correct++;
        epochLoss += work.backward(x, at, label);
      }
      let scale = 1 / (end - start);
      if (center) {
        // A separate pass, so a run without the term keeps the optimizer loops as they are (bench/training/trainer.ts).
        for (let i = 0; i < n; i++) g[i] = g[i]! * scale + mu * (params[i]! - center[i]!);
        scale = 1;
      }
      step++;
      if (second) {
        const stepSize = (lr * Math.sqrt(1 - ADAM.beta2 ** step)) / (1 - ADAM.beta1 ** step);
        for (let i = 0; i < n; i++) {
          const grad = g[i]! * scale + decay[i]! * params[i]!;
          const m = ADAM.beta1 * first[i]! + (1 - ADAM.beta1) * grad;
          const v = ADAM.beta2 * second[i]! + (1 - ADAM.beta2) * grad * grad;
          first[i] = m;
          second[i] = v;
          params[i]! -= (stepSize * m) / (Math.sqrt(v) + ADAM.epsilon);
        }
      } else {
        for (let i = 0; i < n; i++) {
          const v = momentum * first[i]! + g[i]! * scale + decay[i]! * params[i]!;
          first[i] = v;
          params[i]! -= lr * v;
        }
      }
    }
    samplesSeen += train.rows;
    const report: EpochReport = {
      epoch,
      epochs: options.epochs,
      train: { loss: train.rows ? epochLoss / train.rows : 0, accuracy: train.rows ? correct / train.rows : 0 },
    };
    const judged = validation && validation.rows > 0 ? evaluatePacked(work, validation) : undefined;
    if (judged) report.validation = judged;
    history.push(report);
    if (!Number.isFinite(report.train.loss) || (judged && !Number.isFinite(judged.loss))) {
      throw new DriftlineError('HYPERPARAMETERS_INVALID', `training diverged at epoch ${epoch} (the loss is not finite): lower the learning rate`);
    }
    onEpoch?.(report);
    const loss = judged ? judged.loss : report.train.loss;
    if (loss < bestLoss) {
      bestLoss = loss;
      bestEpoch = epoch;
      best.set(params);
    } else if (judged && options.patience > 0 && epoch - bestEpoch >= options.patience) {
      break;
    }
  }
  params.set(best);
  return { layers: unpack(packed), epochsRun: epoch, bestEpoch, samplesSeen, history };
}

/** Labelled rows of a split, dropping the unlabelled ones (label -1). */
export function labelledRows(x: Float32Array, labels: ArrayLike<bigint | number>, features: number): LabelledRows {
  const total = labels.length;
  let kept = 0;
  for (let r = 0; r < total; r++) if (Number(labels[r]) >= 0) kept++;
  if (kept === total) return { x, y: Int32Array.from(labels as ArrayLike<number>, Number), rows: total, features };
  const outX = new Float32Array(kept * features);
  const outY = new Int32Array(kept);
  let at = 0;
  for (let r = 0; r < total; r++) {
    const label = Number(labels[r]);
    if (label < 0) continue;
    outX.set(x.subarray(r * features, (r + 1) * features), at * features);
    outY[at++] = label;
  }
  return { x: outX, y: outY, rows: kept, features };
}
