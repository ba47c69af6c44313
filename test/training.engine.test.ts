import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import type { StartTrainingJobInput, TrainingActor } from '../control-plane/training/engine.js';
import { TrainingSweeper } from '../control-plane/training/sweeper.js';
import { silentLogger } from '../common/logger.js';
import { BAD_MODEL, GOOD_MODEL, LIMITS, PARENT_MODEL, chunksOf, gridSplit, sha256, trainingRig, type TrainingRig } from './helpers/training.js';

const operator: TrainingActor = { actor: 'tok_operator', clientRequestId: '' };
const WORKER_TOKEN = 'tok_worker';
const worker = (name: string, over: Partial<{ gpus: Array<{ name: string; memoryBytes: number }>; trainers: string[] }> = {}) => ({
  name,
  gpus: over.gpus ?? [{ name: 'NVIDIA H200', memoryBytes: 140e9 }],
  cpu: 16,
  memoryBytes: 128e9,
  trainers: over.trainers ?? ['head', 'pytorch'],
  version: 'test',
});

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (err) {
    return err instanceof DriftlineError ? err.code : `not a DriftlineError: ${String(err)}`;
  }
  return undefined;
}

describe('training engine', () => {
  let rig: TrainingRig;
  let datasetId: string;
  let start: (over?: Partial<StartTrainingJobInput>, by?: TrainingActor) => ReturnType<TrainingRig['engine']['start']>;

  beforeEach(async () => {
    rig = await trainingRig();
    for (const model of ['vibration', 'acoustic']) {
      await rig.registry.upload(
        { name: model, sizeBytes: PARENT_MODEL.length, sha256: sha256(PARENT_MODEL), description: '', metadata: {} },
        chunksOf(PARENT_MODEL),
      );
    }
    datasetId = await rig.datasets.add('vibration', { test: gridSplit(0.2), regression: gridSplit(0.25, 0.05) });
    start = (over = {}, by = operator) =>
      rig.engine.start({ model: 'vibration', baseVersion: 1, datasetId, trainer: 'head', hyperparametersJson: '{"epochs": 3}', ...over }, by);
  });
  afterEach(() => rig.close());

  /** Uploads `bytes` under the lease and completes the attempt with it. */
  async function finish(leaseId: string, bytes: Uint8Array) {
    const candidate = await rig.engine.uploadCandidate({ leaseId, sizeBytes: bytes.length, sha256: sha256(bytes) }, chunksOf(bytes), WORKER_TOKEN);
    const job = await rig.engine.complete(leaseId, candidate.id, { loss: 0.1 }, WORKER_TOKEN);
    await rig.engine.settled();
    return { job, candidate };
  }

  it('queues a job with its defaults, canonical hyperparameters and gates', async () => {
    const job = await start();
    expect(job).toMatchObject({ state: 'queued', attempt: 1 });
    expect(job.spec).toMatchObject({ hyperparametersJson: '{"epochs":3}', maxAttempts: LIMITS.defaultMaxAttempts, maxDurationMs: LIMITS.defaultMaxDurationMs });
    expect(job.spec.gates).toEqual(['accuracy-delta>=0', 'regression-accuracy-delta>=-0.005', 'class-recall-drop<=0.05']);
    expect(await codeOf(start({ baseVersion: 9 }))).toBe('MODEL_NOT_FOUND');
    expect(await codeOf(start({ datasetId: 'f'.repeat(64) }))).toBe('DATASET_NOT_FOUND');
    expect(await codeOf(start({ hyperparametersJson: '[1]' }))).toBe('REQUEST_INVALID');
    expect(await codeOf(start({ gates: ['p95-latency-ratio<=2'] }))).toBe('REQUEST_INVALID');
  });

  it('answers a replayed start with the same job and refuses the id reused for another request with REQUEST_ID_REUSED', async () => {
    const by = { actor: 'tok_operator', clientRequestId: 'req-1' };
    const [first, second] = await Promise.all([start({}, by), start({}, by)]);
    expect(second.id).toBe(first.id);
    expect((await rig.engine.list({})).jobs).toHaveLength(1);
    expect(await codeOf(start({ trainer: 'pytorch' }, by))).toBe('REQUEST_ID_REUSED');
  });

  it('never gives two workers the same attempt, and runs one job per model at a time', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const b = await rig.engine.registerWorker(worker('b'), WORKER_TOKEN);
    await start();
    await start({ hyperparametersJson: '{"epochs": 5}' });
    const grants = await Promise.all([rig.engine.lease(a.id, WORKER_TOKEN), rig.engine.lease(b.id, WORKER_TOKEN), rig.engine.lease(a.id, WORKER_TOKEN)]);
    const given = grants.filter((g) => g !== undefined);
    // Two jobs of one model: only one may run.
    expect(given).toHaveLength(1);
    expect(given[0]).toMatchObject({ attempt: 1, baseModel: { sha256: sha256(PARENT_MODEL) }, maxCandidateBytes: LIMITS.maxCandidateBytes });
    const acousticData = await rig.datasets.add('acoustic', { test: gridSplit(0.2) });
    await start({ model: 'acoustic', datasetId: acousticData });
    const more = await Promise.all([rig.engine.lease(a.id, WORKER_TOKEN), rig.engine.lease(b.id, WORKER_TOKEN)]);
    expect(more.filter((g) => g !== undefined).map((g) => g!.spec.model)).toEqual(['acoustic']);
  });

  it('leases only jobs whose trainer and resources the worker offers', async () => {
    const cpuOnly = await rig.engine.registerWorker(worker('cpu', { gpus: [] }), WORKER_TOKEN);
    const small = await rig.engine.registerWorker(worker('small', { gpus: [{ name: 'T4', memoryBytes: 16e9 }], trainers: ['pytorch'] }), WORKER_TOKEN);
    const big = await rig.engine.registerWorker(worker('big'), WORKER_TOKEN);
    await start({ trainer: 'pytorch', resources: { gpus: 1, gpuMemoryBytes: 40e9 } });
    expect(await rig.engine.lease(cpuOnly.id, WORKER_TOKEN)).toBeUndefined();
    expect(await rig.engine.lease(small.id, WORKER_TOKEN)).toBeUndefined();
    expect(await rig.engine.lease(big.id, WORKER_TOKEN)).toMatchObject({ spec: { trainer: 'pytorch' } });
    expect(await codeOf(rig.engine.lease(big.id, 'tok_someone_else'))).toBe('TRAINING_WORKER_NOT_FOUND');
  });

  it('re-queues a lost lease, refuses the old worker with TRAINING_LEASE_LOST, and accepts exactly one candidate from the next', async () => {
    const sweeper = TrainingSweeper.create({ engine: rig.engine, intervalMs: 5_000, clock: rig.clock, logger: silentLogger() });
    sweeper.run();
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const b = await rig.engine.registerWorker(worker('b'), WORKER_TOKEN);
    const job = await start();
    const first = (await rig.engine.lease(a.id, WORKER_TOKEN))!;
    await rig.engine.heartbeat(first.leaseId, { progress: { epoch: 1, loss: 0.7, metrics: {} }, logLines: ['epoch 1 loss 0.7'] }, WORKER_TOKEN);
    // Worker a dies: no heartbeat for longer than the lease ttl.
    await rig.clock.advanceAsync(LIMITS.leaseTtlMs + 5_000);
    await sweeper.sweepNow();
    expect(await rig.engine.get(job.id)).toMatchObject({ state: 'queued', attempt: 2, errorCode: 'TRAINING_LEASE_LOST', lease: null });
    expect(await codeOf(rig.engine.heartbeat(first.leaseId, { progress: null, logLines: [] }, WORKER_TOKEN))).toBe('TRAINING_LEASE_LOST');

    const second = (await rig.engine.lease(b.id, WORKER_TOKEN))!;
    expect(second).toMatchObject({ jobId: job.id, attempt: 2 });
    // The old worker wakes up and tries to hand in its candidate: refused before and after the upload.
    expect(
      await codeOf(
        rig.engine.uploadCandidate({ leaseId: first.leaseId, sizeBytes: BAD_MODEL.length, sha256: sha256(BAD_MODEL) }, chunksOf(BAD_MODEL), WORKER_TOKEN),
      ),
    ).toBe('TRAINING_LEASE_LOST');
    await rig.engine.heartbeat(second.leaseId, { progress: { epoch: 3, loss: 0.1, metrics: { accuracy: 1 } }, logLines: ['done'] }, WORKER_TOKEN);
    const { candidate } = await finish(second.leaseId, GOOD_MODEL);
    expect(await codeOf(rig.engine.complete(first.leaseId, candidate.id, {}, WORKER_TOKEN))).toBe('TRAINING_LEASE_LOST');

    const done = await rig.engine.get(job.id);
    expect(done).toMatchObject({ state: 'succeeded', attempt: 2, candidate: { sha256: sha256(GOOD_MODEL), attempt: 2 }, resultVersion: 2 });
    expect(done.evaluation!.verdict).toBe('pass');
    const versions = (await rig.registry.get('vibration')).versions;
    expect(versions.map((v) => v.version)).toEqual([1, 2]);
    expect(versions[1]!.metadata).toMatchObject({
      'lineage.parent_version': '1',
      'lineage.job_id': job.id,
      'lineage.dataset_id': datasetId,
      'lineage.attempt': '2',
    });
    expect((await rig.engine.audit(job.id)).map((e) => e.action)).toEqual([
      'create',
      'lease',
      'start',
      'lease-expired',
      'lease',
      'start',
      'complete',
      'accept',
      'register',
    ]);
    expect((await rig.engine.logs(job.id)).map((l) => [l.attempt, l.text])).toEqual([
      [1, 'epoch 1 loss 0.7'],
      [2, 'done'],
    ]);
    await sweeper.shutdown();
    expect(rig.clock.pendingTimers()).toBe(0);
  });

  it('fails the job with TRAINING_ATTEMPTS_EXHAUSTED when every attempt fails', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const job = await start({ maxAttempts: 2 });
    for (const code of ['TRAINER_CRASHED', 'TRAINER_TIMEOUT']) {
      const lease = (await rig.engine.lease(a.id, WORKER_TOKEN))!;
      await rig.engine.fail(lease.leaseId, code, 'it broke', WORKER_TOKEN);
    }
    const failed = await rig.engine.get(job.id);
    expect(failed).toMatchObject({ state: 'failed', attempt: 2, errorCode: 'TRAINING_ATTEMPTS_EXHAUSTED' });
    expect(failed.reason).toContain('TRAINER_TIMEOUT');
    expect(await rig.engine.lease(a.id, WORKER_TOKEN)).toBeUndefined();
    expect(await codeOf(rig.engine.fail('tl_nope', 'TRAINER_CRASHED', '', WORKER_TOKEN))).toBe('TRAINING_LEASE_LOST');
  });

  it('rejects a candidate worse than its parent, keeping the report and reason, and registers nothing', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const job = await start();
    const lease = (await rig.engine.lease(a.id, WORKER_TOKEN))!;
    await finish(lease.leaseId, BAD_MODEL);
    const rejected = await rig.engine.get(job.id);
    expect(rejected.state).toBe('rejected');
    expect(rejected.reason).toMatch(/^accuracy-delta>=0: test accuracy 0\.00%/);
    const test = rejected.evaluation!.splits.find((s) => s.split === 'test')!;
    expect(test.candidate.accuracy).toBe(0);
    expect(test.parent.accuracy).toBeGreaterThan(0.3);
    expect(rejected.evaluation!.gates.map((g) => g.verdict)).toEqual(['fail', 'fail', 'fail']);
    expect((await rig.registry.get('vibration')).versions).toHaveLength(1);
  });

  it('is inconclusive, and rejects, when a split is below the minimum size', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const tiny = await rig.datasets.add('vibration', { test: gridSplit(1) });
    const job = await start({ datasetId: tiny, gates: ['accuracy-delta>=0'] });
    await finish((await rig.engine.lease(a.id, WORKER_TOKEN))!.leaseId, GOOD_MODEL);
    expect(await rig.engine.get(job.id)).toMatchObject({ state: 'rejected', reason: expect.stringMatching(/^inconclusive: accuracy-delta>=0: only \d+ rows/) });
  });

  it('fails the job with TRAINING_EVALUATION_FAILED when the evaluator throws (a candidate that is no ONNX model)', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const job = await start();
    const garbage = Buffer.from('not an onnx model');
    await finish((await rig.engine.lease(a.id, WORKER_TOKEN))!.leaseId, garbage);
    const failed = await rig.engine.get(job.id);
    expect(failed).toMatchObject({ state: 'failed', errorCode: 'TRAINING_EVALUATION_FAILED' });
    expect(failed.reason).toMatch(/^MODEL_INVALID/);
    expect((await rig.registry.get('vibration')).versions).toHaveLength(1);
  });

  it('refuses a candidate over the size cap or whose bytes do not match its sha256', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    await start();
    const { leaseId } = (await rig.engine.lease(a.id, WORKER_TOKEN))!;
    expect(
      await codeOf(
        rig.engine.uploadCandidate({ leaseId, sizeBytes: LIMITS.maxCandidateBytes + 1, sha256: 'a'.repeat(64) }, chunksOf(GOOD_MODEL), WORKER_TOKEN),
      ),
    ).toBe('PAYLOAD_TOO_LARGE');
    expect(
      await codeOf(rig.engine.uploadCandidate({ leaseId, sizeBytes: GOOD_MODEL.length, sha256: 'a'.repeat(64) }, chunksOf(GOOD_MODEL), WORKER_TOKEN)),
    ).toBe('MODEL_CHECKSUM_MISMATCH');
    expect(
      await codeOf(rig.engine.uploadCandidate({ leaseId, sizeBytes: GOOD_MODEL.length + 5, sha256: sha256(GOOD_MODEL) }, chunksOf(GOOD_MODEL), WORKER_TOKEN)),
    ).toBe('UPLOAD_INCOMPLETE');
    expect(await codeOf(rig.engine.complete(leaseId, 'tc_missing', {}, WORKER_TOKEN))).toBe('TRAINING_CANDIDATE_NOT_FOUND');
    expect(await codeOf(rig.engine.complete(leaseId, 'tc_missing', { loss: Number.NaN }, WORKER_TOKEN))).toBe('REQUEST_INVALID');
  });

  it('cancels a running job, and its worker hears cancel at the next heartbeat', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const job = await start();
    const { leaseId } = (await rig.engine.lease(a.id, WORKER_TOKEN))!;
    expect((await rig.engine.heartbeat(leaseId, { progress: null, logLines: [] }, WORKER_TOKEN)).cancel).toBe(false);
    expect(await rig.engine.cancel(job.id, operator, 'wrong dataset')).toMatchObject({ state: 'cancelled', cancelReason: 'wrong dataset' });
    expect((await rig.engine.heartbeat(leaseId, { progress: null, logLines: [] }, WORKER_TOKEN)).cancel).toBe(true);
    // The worker stops and reports it: the job stays cancelled.
    expect(await rig.engine.fail(leaseId, 'TRAINER_CANCELLED', 'stopped', WORKER_TOKEN)).toMatchObject({ state: 'cancelled' });
    expect(await codeOf(rig.engine.cancel(job.id, operator))).toBe('TRAINING_STATE_INVALID');
  });

  it('streams a watched job until it ends, with the log lines added since each update', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const job = await start();
    const seen: Array<[string, string[]]> = [];
    const watching = (async () => {
      for await (const update of rig.engine.watch(job.id)) seen.push([update.job.state, update.logLines.map((l) => l.text)]);
    })();
    const until = async (n: number) => {
      while (seen.length < n) await new Promise((resolve) => setImmediate(resolve));
    };
    await until(1);
    const { leaseId } = (await rig.engine.lease(a.id, WORKER_TOKEN))!;
    await until(2);
    await rig.engine.heartbeat(leaseId, { progress: { epoch: 1, loss: 0.5, metrics: {} }, logLines: ['epoch 1'] }, WORKER_TOKEN);
    await until(3);
    await finish(leaseId, GOOD_MODEL);
    await watching;
    expect(seen[0]).toEqual(['queued', []]);
    expect(seen).toContainEqual(['running', ['epoch 1']]);
    expect(seen.at(-1)![0]).toBe('succeeded');
  });

  it('keeps jobs, attempts and the audit log across reopening the database file', async () => {
    const a = await rig.engine.registerWorker(worker('a'), WORKER_TOKEN);
    const job = await start({}, { actor: 'tok_operator', clientRequestId: 'req-keep' });
    const { leaseId } = (await rig.engine.lease(a.id, WORKER_TOKEN))!;
    const engine = rig.reopen();
    expect(await engine.get(job.id)).toMatchObject({ state: 'leased', lease: { id: leaseId } });
    expect(
      (
        await engine.start(
          { model: 'vibration', baseVersion: 1, datasetId, trainer: 'head', hyperparametersJson: '{"epochs": 3}' },
          { actor: 'x', clientRequestId: 'req-keep' },
        )
      ).id,
    ).toBe(job.id);
    // The restarted control plane's worker carries on with its lease.
    await engine.heartbeat(leaseId, { progress: null, logLines: [] }, WORKER_TOKEN);
    expect((await engine.audit(job.id)).map((e) => e.action)).toEqual(['create', 'lease', 'start']);
  });

  it('pages through jobs newest first and filters by model and state', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push((await start({ hyperparametersJson: `{"i": ${i}}` })).id);
      rig.clock.advance(1000);
    }
    const first = await rig.engine.list({ pageSize: 2 });
    const second = await rig.engine.list({ pageSize: 2, pageToken: first.nextPageToken });
    const third = await rig.engine.list({ pageSize: 2, pageToken: second.nextPageToken });
    expect([...first.jobs, ...second.jobs, ...third.jobs].map((j) => j.id)).toEqual([...ids].reverse());
    expect(third.nextPageToken).toBe('');
    expect((await rig.engine.list({ model: 'acoustic' })).jobs).toEqual([]);
    expect((await rig.engine.list({ state: 'queued' })).jobs).toHaveLength(5);
    expect(await codeOf(rig.engine.list({ state: 'sleeping' }))).toBe('REQUEST_INVALID');
    expect(await codeOf(rig.engine.list({ pageToken: 'garbage' }))).toBe('REQUEST_INVALID');
  });
});
