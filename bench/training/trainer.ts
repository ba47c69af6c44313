/**
 * trainer_vs_loop: the TypeScript trainer's head training (common/learning/dense-head.ts)
 * against a plain Float32Array loop doing the same arithmetic (forward, softmax, gradient,
 * mini-batch SGD update with L2), on the same rows, in the same run. Target ≥ 0.8.
 * Runnable alone: `tsx bench/training/trainer.ts` prints a final JSON line.
 */
import { pathToFileURL } from 'node:url';
import { trainHead, DEFAULT_HEAD_TRAINING, type DenseLayer, type LabelledRows } from '../../common/learning/dense-head.js';
import { seededRandom } from '../../common/seeded-random.js';

const ROWS = 20_000;
const FEATURES = 64;
const CLASSES = 10;
const EPOCHS = 4;
const BATCH = 32;
const LEARNING_RATE = 0.01;
const L2 = 1e-4;
const ROUNDS = 3;

function dataset(): LabelledRows {
  const rng = seededRandom(42);
  const centers = Array.from({ length: CLASSES }, () => Array.from({ length: FEATURES }, () => rng.normal(0, 1)));
  const x = new Float32Array(ROWS * FEATURES);
  const y = new Int32Array(ROWS);
  for (let r = 0; r < ROWS; r++) {
    const c = rng.int(CLASSES);
    y[r] = c;
    for (let j = 0; j < FEATURES; j++) x[r * FEATURES + j] = centers[c]![j]! + rng.normal(0, 1.5);
  }
  return { x, y, rows: ROWS, features: FEATURES };
}

const zeroLayer = (): DenseLayer => ({ inputs: FEATURES, outputs: CLASSES, weights: new Float32Array(FEATURES * CLASSES), bias: new Float32Array(CLASSES) });

/** The same model and steps, written as one flat loop: the baseline. */
function plainLoop(data: LabelledRows): number {
  const { x, y } = data;
  const w = new Float32Array(FEATURES * CLASSES);
  const b = new Float32Array(CLASSES);
  const gw = new Float32Array(FEATURES * CLASSES);
  const gb = new Float32Array(CLASSES);
  const p = new Float32Array(CLASSES);
  const order = Int32Array.from({ length: ROWS }, (_, i) => i);
  const rng = seededRandom(1);
  let loss = 0;
  for (let epoch = 0; epoch < EPOCHS; epoch++) {
    for (let i = ROWS - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    for (let start = 0; start < ROWS; start += BATCH) {
      const end = Math.min(ROWS, start + BATCH);
      gw.fill(0);
      gb.fill(0);
      for (let n = start; n < end; n++) {
        const row = order[n]!;
        const at = row * FEATURES;
        let max = -Infinity;
        for (let c = 0; c < CLASSES; c++) {
          let s = b[c]!;
          for (let j = 0; j < FEATURES; j++) s += w[c * FEATURES + j]! * x[at + j]!;
          p[c] = s;
          if (s > max) max = s;
        }
        let sum = 0;
        for (let c = 0; c < CLASSES; c++) {
          const e = Math.exp(p[c]! - max);
          p[c] = e;
          sum += e;
        }
        for (let c = 0; c < CLASSES; c++) p[c]! /= sum;
        loss -= Math.log(Math.max(p[y[row]!]!, 1e-12));
        p[y[row]!]! -= 1;
        for (let c = 0; c < CLASSES; c++) {
          const d = p[c]!;
          gb[c]! += d;
          for (let j = 0; j < FEATURES; j++) gw[c * FEATURES + j]! += d * x[at + j]!;
        }
      }
      const scale = 1 / (end - start);
      for (let i = 0; i < w.length; i++) w[i]! -= LEARNING_RATE * (gw[i]! * scale + L2 * w[i]!);
      for (let c = 0; c < CLASSES; c++) b[c]! -= LEARNING_RATE * gb[c]! * scale;
    }
  }
  return loss;
}

export async function measureTrainer(): Promise<{ trainer_vs_loop: number; trainer_samples_per_s: number; loop_samples_per_s: number }> {
  const data = dataset();
  const samples = ROWS * EPOCHS;
  const options = {
    ...DEFAULT_HEAD_TRAINING,
    optimizer: 'sgd' as const,
    momentum: 0,
    learningRate: LEARNING_RATE,
    l2: L2,
    batchSize: BATCH,
    epochs: EPOCHS,
    patience: 0,
  };
  // Warm both up (JIT), then take the best of a few alternating rounds: these machines are noisy.
  trainHead([zeroLayer()], { ...data, rows: 2000, x: data.x.subarray(0, 2000 * FEATURES), y: data.y.subarray(0, 2000) }, undefined, { ...options, epochs: 1 });
  plainLoop(data);
  let trainerBest = Infinity;
  let loopBest = Infinity;
  let sink = 0;
  for (let round = 0; round < ROUNDS; round++) {
    let t = performance.now();
    sink += trainHead([zeroLayer()], data, undefined, options).layers[0]!.bias[0]!;
    trainerBest = Math.min(trainerBest, performance.now() - t);
    t = performance.now();
    sink += plainLoop(data);
    loopBest = Math.min(loopBest, performance.now() - t);
  }
  if (!Number.isFinite(sink)) throw new Error('the benchmark diverged');
  const trainer = samples / (trainerBest / 1000);
  const loop = samples / (loopBest / 1000);
  return { trainer_vs_loop: Number((trainer / loop).toFixed(3)), trainer_samples_per_s: Math.round(trainer), loop_samples_per_s: Math.round(loop) };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(JSON.stringify(await measureTrainer()));
}
