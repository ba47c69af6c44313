/**
 * bench:training — the learning loop's costs, each against its bare baseline in the same run:
 * - trainer_vs_loop: the TypeScript head trainer's samples/s against a plain Float32Array loop
 *   doing the same arithmetic (bench/training/trainer.ts; target ≥ 0.8);
 * - snapshot_vs_raw: dataset snapshot rows/s through DatasetService.create against a raw
 *   better-sqlite3 scan of the same rows (bench/training/snapshot.ts; target ≥ 0.5);
 * - lease_ms: the median latency of TrainingEngine.lease (one store transaction: read the queue,
 *   check the worker's fit and one job per model, take the job) over a real SQLite file with
 *   LEASE_JOBS jobs queued for as many models, and its p95.
 * Prints one JSON line last. No CUDA device here: the PyTorch trainer's GPU figure is left out.
 */
import { performance } from 'node:perf_hooks';
import { measureSnapshot } from './training/snapshot.js';
import { measureTrainer } from './training/trainer.js';
import { PARENT_MODEL, chunksOf, gridSplit, sha256, trainingRig } from '../test/helpers/training.js';

const LEASE_JOBS = Number(process.env.BENCH_LEASE_JOBS ?? 200);
const log = (line: string): void => void process.stderr.write(`${line}\n`);
const percentile = (values: number[], p: number): number => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(values.length * p))]!;

async function measureLease(): Promise<{ lease_ms: number; lease_p95_ms: number; lease_jobs: number }> {
  const rig = await trainingRig();
  try {
    const by = { actor: 'tok_operator', clientRequestId: '' };
    for (let i = 0; i < LEASE_JOBS; i++) {
      const model = `model-${i}`;
      await rig.registry.upload(
        { name: model, sizeBytes: PARENT_MODEL.length, sha256: sha256(PARENT_MODEL), description: '', metadata: {} },
        chunksOf(PARENT_MODEL),
      );
      const datasetId = await rig.datasets.add(model, { test: gridSplit(0.5) });
      await rig.engine.start({ model, baseVersion: 1, datasetId, trainer: 'head', hyperparametersJson: '{}' }, by);
    }
    const worker = await rig.engine.registerWorker(
      { name: 'bench', gpus: [{ name: 'NVIDIA H200', memoryBytes: 140e9 }], cpu: 16, memoryBytes: 128e9, trainers: ['head'], version: 'bench' },
      'tok_worker',
    );
    const latencies: number[] = [];
    for (let i = 0; i < LEASE_JOBS; i++) {
      const t = performance.now();
      const grant = await rig.engine.lease(worker.id, 'tok_worker');
      latencies.push(performance.now() - t);
      if (!grant) throw new Error(`lease ${i} found no job although ${LEASE_JOBS - i} were queued`);
    }
    return { lease_ms: Number(percentile(latencies, 0.5).toFixed(3)), lease_p95_ms: Number(percentile(latencies, 0.95).toFixed(3)), lease_jobs: LEASE_JOBS };
  } finally {
    rig.close();
  }
}

log('trainer: TypeScript head trainer against a plain Float32Array loop ...');
const trainer = await measureTrainer();
log(`  ${JSON.stringify(trainer)}`);
log('snapshot: DatasetService.create against a raw better-sqlite3 scan ...');
const snapshot = await measureSnapshot();
log(`  ${JSON.stringify(snapshot)}`);
log(`lease: TrainingEngine.lease over ${LEASE_JOBS} queued jobs ...`);
const lease = await measureLease();
log(`  ${JSON.stringify(lease)}`);
console.log(JSON.stringify({ ...trainer, ...snapshot, ...lease, cuda: false }));
