/**
 * The built-in TypeScript trainer, a program obeying the trainer contract
 * (common/learning/trainer-contract.ts):
 *
 *   node --import tsx trainers/typescript/main.ts --dataset DIR --base-model FILE.onnx --hyperparameters FILE.json --output DIR
 *   node dist/js/driftline-trainer.js ...       (the same, built by `npm run build`)
 *
 * It fine-tunes the dense head of an ONNX classifier (its final Gemm / MatMul+Add layers, with
 * ReLU between them; every layer for the classifiers the project builds, which are all dense)
 * with the rest frozen: onnxruntime-node computes the frozen body's embeddings once, the head
 * trains on them in Float32 (common/learning/dense-head.ts), and the trained weights are
 * written back into the base model's initializers, so the candidate keeps its signature.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { readSnapshotFolder, type SplitName } from '../../common/datasets/snapshot-layout.js';
import { asDriftlineError, DriftlineError } from '../../common/errors.js';
import { evaluateHead, labelledRows, trainHead, type LabelledRows, type LossAndAccuracy } from '../../common/learning/dense-head.js';
import { TRAINER_OUTPUT_METRICS, TRAINER_OUTPUT_MODEL, type TrainerLine, type TrainerMetrics } from '../../common/learning/trainer-contract.js';
import { findClassifierHead, writeClassifierHead } from '../../common/onnx/classifier-head.js';
import { readModelSignature } from '../../common/onnx/signature.js';
import { parseHyperparameters } from './hyperparameters.js';
import { headEmbeddings } from './onnxruntime-embeddings.js';

const say = (line: TrainerLine): void => void process.stdout.write(`${JSON.stringify(line)}\n`);
/** The contract caps a log line's message at 4096 characters. */
const log = (message: string): void => say({ type: 'log', message: message.length > 4000 ? `${message.slice(0, 4000)}…` : message });

const USAGE = 'usage: main.ts --dataset DIR --base-model FILE.onnx --hyperparameters FILE.json --output DIR';

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { dataset: { type: 'string' }, 'base-model': { type: 'string' }, hyperparameters: { type: 'string' }, output: { type: 'string' } },
    strict: true,
  });
  const { dataset, hyperparameters: hyperparametersFile, output } = values;
  const baseModelFile = values['base-model'];
  if (!dataset || !baseModelFile || !hyperparametersFile || !output) throw new DriftlineError('REQUEST_INVALID', USAGE);

  const hp = parseHyperparameters(readFileSync(hyperparametersFile, 'utf8'), hyperparametersFile);
  const { manifest, splits } = readSnapshotFolder(dataset);
  const base = new Uint8Array(readFileSync(baseModelFile));
  const head = findClassifierHead(base, hp.head_layers === undefined ? {} : { maxLayers: hp.head_layers });
  const classes = head.layers[head.layers.length - 1]!.outputs;
  if (classes !== manifest.classes)
    throw new DriftlineError('DATASET_INVALID', `the dataset has ${manifest.classes} classes; the model's head gives ${classes}`);
  const inputs = readModelSignature(base).inputs;
  if (inputs.length !== 1) throw new DriftlineError('MODEL_HEAD_UNSUPPORTED', `the model takes ${inputs.length} inputs; the TypeScript trainer feeds one`);
  log(
    `training ${head.layers.length} dense layer(s) ${[head.layers[0]!.inputs, ...head.layers.map((l) => l.outputs)].join(' → ')}` +
      (head.inputIsGraphInput ? ' on the model input' : ` on the frozen body's ${head.input}`),
  );

  const rowElements = manifest.input.shape.reduce((a, b) => a * b, 1);
  const features = head.layers[0]!.inputs;
  const rows = {} as Record<SplitName, LabelledRows>;
  for (const split of ['train', 'validation', 'test'] as const) {
    // Unlabelled rows teach nothing: drop them before paying for their embeddings.
    const labelled = labelledRows(splits[split].x, splits[split].y, rowElements);
    const x = await headEmbeddings(base, head, { name: inputs[0]!.name, rowShape: manifest.input.shape }, labelled.x, labelled.rows, hp.embedding_batch);
    rows[split] = { x, y: labelled.y, rows: labelled.rows, features };
  }
  if (rows.train.rows === 0) throw new DriftlineError('DATASET_INVALID', 'the dataset has no labelled training rows');
  log(`embeddings ready: ${rows.train.rows} training, ${rows.validation.rows} validation, ${rows.test.rows} test rows`);

  const before = { validation: evaluateHead(head.layers, rows.validation), test: evaluateHead(head.layers, rows.test) };
  const validation = rows.validation.rows > 0 ? rows.validation : undefined;
  const started = performance.now();
  const result = trainHead(
    head.layers,
    rows.train,
    validation,
    {
      epochs: hp.epochs,
      batchSize: hp.batch_size,
      learningRate: hp.learning_rate,
      optimizer: hp.optimizer,
      momentum: hp.momentum,
      l2: hp.l2,
      seed: hp.seed,
      patience: hp.patience,
      reinitialize: hp.reinitialize,
    },
    (epoch) =>
      say({
        type: 'progress',
        epoch: epoch.epoch,
        epochs: epoch.epochs,
        loss: epoch.train.loss,
        metrics: {
          train_accuracy: epoch.train.accuracy,
          ...(epoch.validation ? { validation_loss: epoch.validation.loss, validation_accuracy: epoch.validation.accuracy } : {}),
        },
      }),
  );
  const seconds = (performance.now() - started) / 1000;

  writeFileSync(join(output, TRAINER_OUTPUT_MODEL), writeClassifierHead(base, head, result.layers));
  const after = (split: SplitName): LossAndAccuracy => evaluateHead(result.layers, rows[split]);
  const train = after('train');
  // Without validation rows the contract's validation figures are the training ones (validation_rows says so).
  const judged = validation ? after('validation') : train;
  const test = after('test');
  const metrics: TrainerMetrics = {
    train_loss: train.loss,
    train_accuracy: train.accuracy,
    validation_loss: judged.loss,
    validation_accuracy: judged.accuracy,
    test_loss: test.loss,
    test_accuracy: test.accuracy,
    base_validation_loss: before.validation.loss,
    base_validation_accuracy: before.validation.accuracy,
    base_test_accuracy: before.test.accuracy,
    train_rows: rows.train.rows,
    validation_rows: rows.validation.rows,
    test_rows: rows.test.rows,
    epochs_run: result.epochsRun,
    best_epoch: result.bestEpoch,
    trained_layers: head.layers.length,
    samples_per_s: seconds > 0 ? result.samplesSeen / seconds : 0,
    trainer: 'driftline-typescript',
    device: 'cpu',
  };
  writeFileSync(join(output, TRAINER_OUTPUT_METRICS), `${JSON.stringify(metrics, null, 2)}\n`);
  log(`done: validation accuracy ${before.validation.accuracy.toFixed(4)} → ${judged.accuracy.toFixed(4)} after ${result.epochsRun} epoch(s)`);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err: unknown) => {
    const error = asDriftlineError(err);
    log(`${error.code}: ${error.message}`);
    process.stderr.write(`${error.code}: ${error.message}\n`);
    process.exit(error.code === 'REQUEST_INVALID' ? 2 : 1);
  },
);
