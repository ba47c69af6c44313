/**
 * Training over the real gRPC API: an operator starts a job on a real dataset snapshot of
 * captured samples; a worker token leases it, downloads the base model and the snapshot by
 * content hash (verified), heartbeats its progress, trains a candidate with the built-in
 * TypeScript trainer, uploads and completes it; the control plane judges it with onnxruntime
 * and registers the next version with its lineage. Real SQLite, artifact store, onnxruntime.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelServiceService } from '../common/proto/driftline/v1/models.js';
import { DatasetServiceService } from '../common/proto/driftline/v1/datasets.js';
import { TrainingServiceService, WorkerServiceService, type TrainingJobUpdate, type TrainingLease } from '../common/proto/driftline/v1/learning.js';
import { builtInTrainerCommand } from '../worker/built-in-trainers.js';
import { runTrainer } from '../worker/trainer-process.js';
import {
  BASE_MODEL,
  chunksOf,
  download,
  drifted,
  sha256,
  startTrainingApi,
  unpackSnapshot,
  workerRegistration,
  type TrainingApiRig,
} from './helpers/training-api.js';

describe('training API - a job from start to a registered version', () => {
  let dir: string;
  let rig: TrainingApiRig;
  let dataset: { id: string; sha256: string };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-training-api-'));
    rig = await startTrainingApi(dir, { training: { minSplitRows: 20, leaseTtl: '60s' } });
    dataset = await drifted(rig, { rows: 600 });
  });

  afterAll(async () => {
    await rig?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a worker token leases, downloads (sha256 verified), heartbeats, uploads and completes: the job succeeds and v2 carries dataset_id and its lineage', async () => {
    const training = rig.operator.service(TrainingServiceService);
    const worker = rig.worker.service(WorkerServiceService);
    const started = await training.startTrainingJob({
      model: 'vibration',
      baseVersion: 1,
      clientRequestId: 'api-test-1',
      datasetId: dataset.id,
      trainer: 'typescript',
      hyperparametersJson: '{"epochs": 12, "learning_rate": 0.005, "seed": 3}',
      resources: undefined,
      maxDurationSeconds: 0,
      maxAttempts: 0,
      gates: ['accuracy-delta>=0.01'],
    });
    expect(started).toMatchObject({
      state: 'queued',
      attempt: 1,
      maxAttempts: 3,
      datasetId: dataset.id,
      hyperparametersJson: '{"epochs":12,"learning_rate":0.005,"seed":3}',
    });

    // A viewer watches it from the start; the stream ends by itself when the job does.
    const updates: TrainingJobUpdate[] = [];
    let first!: () => void;
    const firstSeen = new Promise<void>((resolve) => (first = resolve));
    const watching = (async () => {
      for await (const update of rig.viewer.service(TrainingServiceService).watchTrainingJob({ id: started.id })) {
        updates.push(update);
        first();
      }
    })();
    await firstSeen;

    const registered = await worker.registerWorker(workerRegistration('cpu-box-1'));
    expect(registered.heartbeatIntervalMs).toBe(20_000);
    expect(registered.pollIntervalMs).toBeGreaterThan(0);
    const { lease } = await worker.leaseTrainingJob({ workerId: registered.workerId });
    expect(lease).toMatchObject({ jobId: started.id, attempt: 1, model: 'vibration', baseVersion: 1, datasetId: dataset.id, trainer: 'typescript' });
    expect(lease!.baseModel).toEqual({ sha256: sha256(BASE_MODEL), sizeBytes: BASE_MODEL.length });
    expect(lease!.dataset).toMatchObject({ sha256: dataset.sha256 });
    // Nothing else queued: the next lease call gets none.
    expect((await worker.leaseTrainingJob({ workerId: registered.workerId })).lease).toBeUndefined();

    const base = await download(rig.worker, lease!.leaseId, lease!.baseModel!.sha256);
    const snapshot = await download(rig.worker, lease!.leaseId, lease!.dataset!.sha256);
    expect(sha256(base.bytes)).toBe(lease!.baseModel!.sha256);
    expect(sha256(snapshot.bytes)).toBe(lease!.dataset!.sha256);
    expect(snapshot.bytes.length).toBe(lease!.dataset!.sizeBytes);

    const job = join(dir, 'job');
    const files = {
      dataset: unpackSnapshot(snapshot.bytes, join(job, 'dataset')),
      baseModel: join(job, 'base.onnx'),
      hyperparameters: join(job, 'hyperparameters.json'),
      output: join(job, 'output'),
    };
    writeFileSync(files.baseModel, base.bytes);
    writeFileSync(files.hyperparameters, lease!.hyperparametersJson);
    const lines: string[] = [];
    const outcome = await runTrainer({
      trainer: await builtInTrainerCommand('typescript'),
      files,
      onEvent: (event) => lines.push(JSON.stringify(event)),
    });
    const beat = await worker.heartbeatTrainingJob({
      leaseId: lease!.leaseId,
      progress: { epoch: 12, loss: 0.31, hasLoss: true, metrics: { validation_accuracy: 0.9 } },
      logLines: lines,
    });
    expect(beat).toMatchObject({ cancel: false, leaseTtlMs: 60_000 });

    const candidate = readFileSync(outcome.modelPath);
    const uploaded = await rig.worker.uploadCandidate({ leaseId: lease!.leaseId, sizeBytes: candidate.length, sha256: sha256(candidate) }, chunksOf(candidate));
    expect(uploaded).toMatchObject({ sha256: sha256(candidate), sizeBytes: candidate.length });
    const metrics = Object.fromEntries(Object.entries(outcome.metrics).filter((e): e is [string, number] => typeof e[1] === 'number'));
    const completed = await worker.completeTrainingAttempt({ leaseId: lease!.leaseId, candidateId: uploaded.candidateId, metrics });
    expect(completed.job).toMatchObject({ state: 'evaluating', candidate: { id: uploaded.candidateId, sha256: sha256(candidate) } });

    await rig.cp.training.settled();
    const done = await rig.viewer.service(TrainingServiceService).getTrainingJob({ id: started.id });
    expect(done.evaluation?.verdict, done.evaluation?.reason).toBe('pass');
    expect(done).toMatchObject({ state: 'succeeded', resultVersion: 2, workerId: '' });
    const test = done.evaluation!.splits.find((s) => s.split === 'test')!;
    expect(test.candidate!.accuracy).toBeGreaterThan(test.parent!.accuracy + 0.01);

    const model = await rig.viewer.service(ModelServiceService).getModel({ name: 'vibration' });
    const v2 = model.versions.find((v) => v.version === 2)!;
    expect(v2.sha256).toBe(sha256(candidate));
    expect(v2.metadata).toMatchObject({
      dataset_id: dataset.id,
      'lineage.parent_version': '1',
      'lineage.dataset_sha256': dataset.sha256,
      'lineage.job_id': started.id,
      'lineage.trainer': 'typescript',
      'lineage.hyperparameters': '{"epochs":12,"learning_rate":0.005,"seed":3}',
      'evaluation.verdict': 'pass',
    });
    expect(JSON.parse(v2.metadata['lineage.metrics']!)).toMatchObject({ test_accuracy: metrics.test_accuracy });
    expect(JSON.parse(v2.metadata['evaluation.splits']!)).toEqual([expect.objectContaining({ split: 'test' })]);

    await watching;
    const states = updates.map((u) => u.job!.state);
    expect(states[0]).toBe('queued');
    expect(states.at(-1)).toBe('succeeded');
    expect(states).toEqual(expect.arrayContaining(['leased', 'running', 'evaluating']));
    expect(updates.flatMap((u) => u.logLines).length).toBeGreaterThan(0);

    const logs = await rig.viewer.service(TrainingServiceService).getTrainingJobLogs({ id: started.id, attempt: 1, tail: 0 });
    expect(logs.lines.map((l) => l.text)).toEqual(lines.slice(-200).map((l) => l.slice(0, 1000)));
    const listed = await rig.viewer.service(TrainingServiceService).listTrainingJobs({ model: 'vibration', state: 'succeeded', pageSize: 0, pageToken: '' });
    expect(listed.jobs.map((j) => j.id)).toEqual([started.id]);
    // A replay of the start answers with the job as it is now.
    const replay = await training.startTrainingJob({
      model: 'vibration',
      baseVersion: 1,
      clientRequestId: 'api-test-1',
      datasetId: dataset.id,
      trainer: 'typescript',
      hyperparametersJson: '{"epochs": 12, "learning_rate": 0.005, "seed": 3}',
      resources: undefined,
      maxDurationSeconds: 0,
      maxAttempts: 0,
      gates: ['accuracy-delta>=0.01'],
    });
    expect(replay).toMatchObject({ id: started.id, state: 'succeeded' });
  }, 120_000);

  it("a second job from v2, on a snapshot that replays v2's training data (found by its dataset_id), is judged on the new test rows and on v2's own test rows; a worse candidate is rejected with its report", async () => {
    await rig.clock.advanceAsync(60_000);
    const second = await drifted(rig, { rows: 400, seed: 92, severity: 2.5, device: 'edge-drifted-2', sinceMsAgo: 30_000, replayParent: true });
    const parentSnapshot = await rig.viewer.service(DatasetServiceService).getDataset({ id: second.id });
    expect(JSON.parse(parentSnapshot.manifestJson)).toMatchObject({ parent: { id: dataset.id } });

    const started = await rig.operator.service(TrainingServiceService).startTrainingJob({
      model: 'vibration',
      baseVersion: 2,
      clientRequestId: 'api-test-2',
      datasetId: second.id,
      trainer: 'typescript',
      hyperparametersJson: '{"epochs": 12, "seed": 4}',
      resources: undefined,
      maxDurationSeconds: 0,
      maxAttempts: 0,
      // The defaults: better on the new rows, no worse on the regression rows, no class left behind.
      gates: [],
    });
    const worker = rig.worker.service(WorkerServiceService);
    const { workerId } = await worker.registerWorker(workerRegistration('cpu-box-1'));
    const { lease } = await worker.leaseTrainingJob({ workerId });
    expect(lease).toMatchObject({ jobId: started.id, baseVersion: 2, dataset: { sha256: second.sha256 } });
    const { candidate, metrics } = await trainUnder(lease!, join(dir, 'job-2'));
    const uploaded = await rig.worker.uploadCandidate({ leaseId: lease!.leaseId, sizeBytes: candidate.length, sha256: sha256(candidate) }, chunksOf(candidate));
    await worker.completeTrainingAttempt({ leaseId: lease!.leaseId, candidateId: uploaded.candidateId, metrics });
    await rig.cp.training.settled();

    const done = await rig.viewer.service(TrainingServiceService).getTrainingJob({ id: started.id });
    const splits = Object.fromEntries(done.evaluation!.splits.map((s) => [s.split, s]));
    expect(Object.keys(splits).sort()).toEqual(['regression', 'test']);
    // The regression rows are v2's own test rows: the first snapshot's labelled test split.
    const first = JSON.parse((await rig.viewer.service(DatasetServiceService).getDataset({ id: dataset.id })).manifestJson) as {
      splits: { test: { labelled: number } };
    };
    expect(splits.regression!.parent!.rows).toBe(first.splits.test.labelled);
    expect(splits.test!.parent!.rows).toBeGreaterThanOrEqual(20);
    expect(done.evaluation!.gates.map((g) => g.verdict)).not.toContain('inconclusive');
    // On this data the candidate is worse on the new rows than v2 (seeded trainer, seeded data): rejected, its report kept, nothing registered.
    expect(done).toMatchObject({ state: 'rejected', resultVersion: 0, evaluation: { verdict: 'fail' } });
    expect(done.reason).toMatch(/accuracy-delta>=0/);
    expect((await rig.viewer.service(ModelServiceService).getModel({ name: 'vibration' })).versions.map((v) => v.version)).toEqual([1, 2]);
  }, 120_000);

  /** What a worker does under a lease: download both artifacts (verified), unpack the snapshot, run the TypeScript trainer. */
  async function trainUnder(lease: TrainingLease, jobDir: string): Promise<{ candidate: Buffer; metrics: Record<string, number> }> {
    const base = await download(rig.worker, lease.leaseId, lease.baseModel!.sha256);
    const snapshot = await download(rig.worker, lease.leaseId, lease.dataset!.sha256);
    expect([sha256(base.bytes), sha256(snapshot.bytes)]).toEqual([lease.baseModel!.sha256, lease.dataset!.sha256]);
    const files = {
      dataset: unpackSnapshot(snapshot.bytes, join(jobDir, 'dataset')),
      baseModel: join(jobDir, 'base.onnx'),
      hyperparameters: join(jobDir, 'hyperparameters.json'),
      output: join(jobDir, 'output'),
    };
    writeFileSync(files.baseModel, base.bytes);
    writeFileSync(files.hyperparameters, lease.hyperparametersJson);
    const outcome = await runTrainer({ trainer: await builtInTrainerCommand('typescript'), files });
    const metrics = Object.fromEntries(Object.entries(outcome.metrics).filter((e): e is [string, number] => typeof e[1] === 'number'));
    return { candidate: readFileSync(outcome.modelPath), metrics };
  }
});
