import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ATTEMPTS_DIR, LOCK_FILE, processAlive } from '../worker/attempt-files.js';
import { builtInTrainerCommand, findTorchPython } from '../worker/built-in-trainers.js';
import type { WorkerEvent } from '../worker/training-worker.js';
import type { WorkerApi } from '../worker/worker-api.js';
import { inProcessWorkerApi } from './helpers/in-process-worker-api.js';
import { waitFor } from './helpers/processes.js';
import { OPERATOR, workerRig, type WorkerRig } from './helpers/worker-rig.js';

const alive = processAlive;
// CI installs Debian's python3-torch and python3-onnx (.ci/run): there the PyTorch case never skips.
const python = await findTorchPython().catch(() => undefined);
const ended = (events: WorkerEvent[]) => events.filter((e): e is Extract<WorkerEvent, { type: 'attempt-ended' }> => e.type === 'attempt-ended');
const started = (events: WorkerEvent[]) => events.filter((e): e is Extract<WorkerEvent, { type: 'trainer-started' }> => e.type === 'trainer-started');

describe('training worker - the loop against the in-process engine, the real TypeScript trainer and a real snapshot', () => {
  let w: WorkerRig;
  beforeEach(async () => {
    w = await workerRig();
  });
  afterEach(() => w.close());

  it('leases a job, trains on the downloaded snapshot, uploads the candidate: the job succeeds with exactly one new version', async () => {
    const job = await w.start();
    const { events } = await w.worker();
    const done = await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => j.state === 'succeeded' || j.state === 'failed' || j.state === 'rejected',
      { timeoutMs: 90_000, what: 'the job to end' },
    );
    await w.rig.engine.settled();
    const final = await w.rig.engine.get(job.id);
    expect(done.state, final.reason).toBe('succeeded');
    expect(final).toMatchObject({ attempt: 1, resultVersion: 2, candidate: { attempt: 1 } });
    expect(final.candidate!.metrics.validation_accuracy).toBeGreaterThan(0);
    expect((await w.rig.registry.get('vibration')).versions.map((v) => v.version)).toEqual([1, 2]);
    expect(ended(events)).toEqual([expect.objectContaining({ jobId: job.id, outcome: 'completed' })]);
    // Progress reached the job, and the trainer's lines its log.
    expect(final.progress?.epoch).toBeGreaterThan(0);
    const logs = await w.rig.engine.logs(job.id);
    expect(logs.some((l) => /^epoch \d+\/8 loss /.test(l.text))).toBe(true);
    // The attempt's folder (downloads, dataset, output) is gone.
    expect(readdirSync(join(w.workDir, ATTEMPTS_DIR))).toEqual([]);
  }, 120_000);

  it.skipIf(!python)(
    'runs the PyTorch trainer (skipped only where no python3 can import torch and onnx): the job succeeds, its string metrics stay on the worker',
    async () => {
      const job = await w.start({ trainer: 'pytorch' });
      await w.worker({ trainers: { pytorch: () => builtInTrainerCommand('pytorch') } });
      const done = await waitFor(
        () => w.rig.engine.get(job.id),
        (j) => ['succeeded', 'failed', 'rejected'].includes(j.state),
        { timeoutMs: 150_000, what: 'the job to end' },
      );
      await w.rig.engine.settled();
      expect(done.state, done.reason).toBe('succeeded');
      const final = await w.rig.engine.get(job.id);
      expect(final.resultVersion).toBe(2);
      // metrics.json says "device": "cpu"; the wire's metrics are numbers only.
      expect(final.candidate!.metrics).not.toHaveProperty('device');
      expect(final.candidate!.metrics.validation_accuracy).toBeGreaterThan(0);
    },
    180_000,
  );

  it('stops the trainer when the job is cancelled, and calls nothing more for it', async () => {
    const job = await w.start({ hyperparametersJson: JSON.stringify({ epochs: 10_000, patience: 10_000 }) });
    const { events } = await w.worker();
    await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => (j.progress?.epoch ?? 0) >= 1,
      { timeoutMs: 60_000, what: 'the trainer to report an epoch' },
    );
    const [{ pid }] = started(events);
    await w.rig.engine.cancel(job.id, OPERATOR, 'wrong dataset');
    await waitFor(
      () => ended(events),
      (e) => e.length === 1,
      { timeoutMs: 30_000, what: 'the attempt to end' },
    );
    expect(ended(events)[0]).toMatchObject({ outcome: 'cancelled' });
    expect(alive(pid!)).toBe(false);
    expect(await w.rig.engine.get(job.id)).toMatchObject({ state: 'cancelled', cancelReason: 'wrong dataset', resultVersion: 0 });
    expect((await w.rig.registry.get('vibration')).versions).toHaveLength(1);
  }, 120_000);

  it('stops the trainer when its lease is lost (the sweep gave the attempt away) and uploads nothing', async () => {
    const job = await w.start({ hyperparametersJson: JSON.stringify({ epochs: 10_000, patience: 10_000 }) });
    const { events } = await w.worker();
    const running = await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => (j.progress?.epoch ?? 0) >= 1,
      { timeoutMs: 60_000, what: 'the trainer to report an epoch' },
    );
    const [{ pid }] = started(events);
    // The control plane's clock moves past the lease (as if the heartbeats had not arrived): the sweep re-queues the job.
    w.rig.clock.advance(running.lease!.expiresAtMs + 1 - w.rig.clock.now());
    await w.rig.engine.sweep();
    await waitFor(
      () => ended(events),
      (e) => e.length >= 1,
      { timeoutMs: 30_000, what: 'the attempt to end' },
    );
    expect(ended(events)[0]).toMatchObject({ attempt: 1, outcome: 'lease-lost', errorCode: 'TRAINING_LEASE_LOST' });
    expect(alive(pid!)).toBe(false);
    const audit = await w.rig.engine.audit(job.id);
    expect(audit.filter((a) => a.attempt === 1).map((a) => a.action)).not.toContain('complete');
  }, 120_000);

  it('fails a crashed trainer with TRAINER_CRASHED: the job is queued again, then fails once its attempts are spent', async () => {
    // An unknown hyperparameter makes the TypeScript trainer exit non-zero.
    const job = await w.start({ hyperparametersJson: JSON.stringify({ epoch: 3 }), maxAttempts: 2 });
    const { events } = await w.worker();
    const final = await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => j.state === 'failed',
      { timeoutMs: 90_000, what: 'the job to fail' },
    );
    expect(ended(events).map((e) => [e.attempt, e.outcome, e.errorCode])).toEqual([
      [1, 'failed', 'TRAINER_CRASHED'],
      [2, 'failed', 'TRAINER_CRASHED'],
    ]);
    expect(final).toMatchObject({ attempt: 2, errorCode: 'TRAINING_ATTEMPTS_EXHAUSTED' });
    expect(final.reason).toContain('TRAINER_CRASHED');
    const audit = await w.rig.engine.audit(job.id);
    expect(audit.filter((a) => a.action === 'attempt-failed').map((a) => [a.attempt, a.toState])).toEqual([
      [1, 'queued'],
      [2, 'failed'],
    ]);
    // Its stderr tail reached the job's log before the failure.
    expect((await w.rig.engine.logs(job.id)).some((l) => l.text.includes('HYPERPARAMETERS_INVALID'))).toBe(true);
    expect((await w.rig.registry.get('vibration')).versions).toHaveLength(1);
  }, 120_000);

  it('refuses a download that is not the bytes its lease names with TRAINING_ARTIFACT_MISMATCH, before any trainer runs', async () => {
    const job = await w.start({ maxAttempts: 1 });
    const real = inProcessWorkerApi(w.rig.engine, { heartbeatIntervalMs: 200, pollIntervalMs: 100 });
    const tampering: WorkerApi = {
      ...real,
      async *download(leaseId, sha256) {
        for await (const chunk of real.download(leaseId, sha256)) {
          const copy = Buffer.from(chunk);
          if (sha256 === (await w.rig.datasets.describe(w.datasetId))!.sha256) copy[copy.length - 1] ^= 0xff;
          yield copy;
        }
      },
    };
    const { events } = await w.worker({ api: tampering });
    const final = await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => j.state === 'failed',
      { timeoutMs: 30_000, what: 'the job to fail' },
    );
    expect(ended(events)).toEqual([expect.objectContaining({ outcome: 'failed', errorCode: 'TRAINING_ARTIFACT_MISMATCH' })]);
    expect(started(events)).toEqual([]);
    expect(final.reason).toContain('TRAINING_ARTIFACT_MISMATCH');
  }, 60_000);

  it("fails a candidate over the control plane's size cap with TRAINER_OUTPUT_TOO_LARGE before uploading it", async () => {
    await w.close();
    w = await workerRig({ limits: { maxCandidateBytes: 1000 } });
    const job = await w.start({ maxAttempts: 1 });
    const { events } = await w.worker();
    const final = await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => j.state === 'failed',
      { timeoutMs: 60_000, what: 'the job to fail' },
    );
    expect(ended(events)).toEqual([expect.objectContaining({ outcome: 'failed', errorCode: 'TRAINER_OUTPUT_TOO_LARGE' })]);
    expect(final.candidate).toBeNull();
  }, 90_000);

  it('fails an attempt with WORKER_DISK_FULL before downloading when the work directory has no room for it', async () => {
    const job = await w.start({ maxAttempts: 1 });
    const { events } = await w.worker({ freeBytes: async () => 1000 });
    const final = await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => j.state === 'failed',
      { timeoutMs: 30_000, what: 'the job to fail' },
    );
    expect(ended(events)).toEqual([expect.objectContaining({ outcome: 'failed', errorCode: 'WORKER_DISK_FULL' })]);
    expect(started(events)).toEqual([]);
    expect(final.reason).toContain('--work-dir');
  }, 60_000);

  it('on shutdown takes no new lease, stops a trainer past the grace and fails its attempt with WORKER_SHUTDOWN (the job is queued again)', async () => {
    const job = await w.start({ hyperparametersJson: JSON.stringify({ epochs: 10_000, patience: 10_000 }) });
    const { worker, events } = await w.worker();
    await waitFor(
      () => w.rig.engine.get(job.id),
      (j) => (j.progress?.epoch ?? 0) >= 1,
      { timeoutMs: 60_000, what: 'the trainer to report an epoch' },
    );
    const [{ pid }] = started(events);
    await worker.shutdown(100);
    expect(worker.state).toBe('stopped');
    expect(ended(events)).toEqual([expect.objectContaining({ outcome: 'shutdown', errorCode: 'WORKER_SHUTDOWN' })]);
    expect(alive(pid!)).toBe(false);
    expect(await w.rig.engine.get(job.id)).toMatchObject({ state: 'queued', attempt: 2, errorCode: 'WORKER_SHUTDOWN' });
    expect(existsSync(join(w.workDir, LOCK_FILE))).toBe(false);
  }, 120_000);

  it('refuses a second worker on the same work directory with WORKER_DIR_IN_USE', async () => {
    await w.worker();
    await expect(w.worker()).rejects.toMatchObject({ code: 'WORKER_DIR_IN_USE' });
  });
});
