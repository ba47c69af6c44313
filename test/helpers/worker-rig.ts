import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSnapshotFolder, UNLABELLED, type SplitData } from '../../common/datasets/snapshot-layout.js';
import { snapshotTar } from '../../common/datasets/snapshot-tar.js';
import { silentLogger } from '../../common/logger.js';
import type { StartTrainingJobInput } from '../../control-plane/training/engine.js';
import type { LabelledSplit } from '../../control-plane/training/onnxruntime/onnx-evaluator.js';
import { buildDemoModel } from '../../demo/model/demo-model.js';
import { builtInTrainerCommand } from '../../worker/built-in-trainers.js';
import { TrainingWorker, type TrainingWorkerOptions, type WorkerEvent } from '../../worker/training-worker.js';
import type { WorkerApi } from '../../worker/worker-api.js';
import { inProcessWorkerApi } from './in-process-worker-api.js';
import { driftedVibrationJob } from './trainer-datasets.js';
import { chunksOf, sha256, trainingRig, type TrainingRig } from './training.js';
import type { TrainingLimits } from '../../control-plane/training/engine.js';

export const OPERATOR = { actor: 'tok_operator', clientRequestId: '' };

function labelled(split: SplitData, features: number): LabelledSplit {
  const rows: number[] = [];
  split.y.forEach((label, r) => label !== UNLABELLED && rows.push(r));
  const x = new Float32Array(rows.length * features);
  rows.forEach((r, i) => x.set(split.x.subarray(r * features, (r + 1) * features), i * features));
  return { x, rowShape: [features], labels: rows.map((r) => Number(split.y[r])) };
}

export interface WorkerRig {
  rig: TrainingRig;
  datasetId: string;
  /** The snapshot tar the dataset's artifact holds. */
  tar: Buffer;
  workDir: string;
  start(over?: Partial<StartTrainingJobInput>): ReturnType<TrainingRig['engine']['start']>;
  /** A worker over the in-process engine, run; its events are collected. */
  worker(over?: Partial<TrainingWorkerOptions> & { api?: WorkerApi }): Promise<{ worker: TrainingWorker; events: WorkerEvent[] }>;
  close(): Promise<void>;
}

/**
 * A training rig (real SQLite file, artifact store, onnxruntime gate) holding the demo vibration
 * classifier as version 1 and a real driftline-dataset/1 snapshot tar of drifted rows it is poor
 * on, with the gate judging on that snapshot's test split (and its validation split as the
 * regression split).
 */
export async function workerRig(options: { rows?: number; severity?: number; limits?: Partial<TrainingLimits> } = {}): Promise<WorkerRig> {
  const rig = await trainingRig({ limits: options.limits });
  const base = buildDemoModel().bytes;
  await rig.registry.upload({ name: 'vibration', sizeBytes: base.length, sha256: sha256(base), description: '', metadata: {} }, chunksOf(base));
  const job = driftedVibrationJob({ rows: options.rows ?? 1200, severity: options.severity ?? 2, hyperparameters: {} });
  const { manifest, splits } = readSnapshotFolder(job.dataset);
  const files = new Map(Object.keys(manifest.files).map((path) => [path, readFileSync(join(job.dataset, path))]));
  const tar = snapshotTar(manifest, files);
  rmSync(job.dir, { recursive: true, force: true });
  const features = manifest.input.shape[0]!;
  const datasetId = await rig.datasets.addArtifact(
    'vibration',
    tar,
    { test: labelled(splits.test, features), regression: labelled(splits.validation, features) },
    manifest.classes,
  );
  const workDir = mkdtempSync(join(tmpdir(), 'driftline-worker-'));
  const workers: TrainingWorker[] = [];
  let named = 0;
  return {
    rig,
    datasetId,
    tar,
    workDir,
    start: (over = {}) =>
      rig.engine.start(
        {
          model: 'vibration',
          baseVersion: 1,
          datasetId,
          trainer: 'typescript',
          hyperparametersJson: JSON.stringify({ epochs: 8, learning_rate: 0.005, seed: 3 }),
          gates: ['accuracy-delta>=0.01'],
          ...over,
        },
        OPERATOR,
      ),
    async worker(over = {}) {
      const events: WorkerEvent[] = [];
      const worker = TrainingWorker.create({
        api: over.api ?? inProcessWorkerApi(rig.engine, { heartbeatIntervalMs: 200, pollIntervalMs: 100 }),
        name: `worker-${++named}`,
        workDir,
        trainers: { typescript: () => builtInTrainerCommand('typescript') },
        resources: { gpus: [], cpu: 2, memoryBytes: 4e9 },
        version: 'test',
        logger: silentLogger(),
        retry: { initialMs: 50, maxMs: 200 },
        ...over,
        onEvent: (event) => {
          events.push(event);
          over.onEvent?.(event);
        },
      });
      workers.push(worker);
      await worker.run();
      return { worker, events };
    },
    async close() {
      await Promise.all(workers.map((w) => w.shutdown(0)));
      await rig.engine.settled();
      rig.close();
      rmSync(workDir, { recursive: true, force: true });
    },
  };
}
