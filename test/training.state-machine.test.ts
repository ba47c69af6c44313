import { describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import type { EvaluationReport } from '../control-plane/training/evaluation.js';
import {
  cancel,
  completeAttempt,
  createJob,
  evaluationFailed,
  expireLease,
  failAttempt,
  heartbeat,
  judge,
  leaseJob,
  recordResultVersion,
  registrationFailed,
  type TrainingJob,
  type TrainingJobSpec,
} from '../control-plane/training/job-state-machine.js';

const T0 = 1_700_000_000_000;
const TTL = 30_000;
const spec = (over: Partial<TrainingJobSpec> = {}): TrainingJobSpec => ({
  model: 'vibration',
  baseVersion: 1,
  datasetId: 'a'.repeat(64),
  trainer: 'head',
  hyperparametersJson: '{}',
  resources: { gpus: 0, gpuMemoryBytes: 0, cpu: 1, memoryBytes: 0 },
  maxDurationMs: 3_600_000,
  maxAttempts: 2,
  gates: ['accuracy-delta>=0'],
  ...over,
});
const candidate = { id: 'cand_1', sha256: 'b'.repeat(64), sizeBytes: 10, attempt: 1, metrics: { loss: 0.1 } };
const report = (verdict: EvaluationReport['verdict']): EvaluationReport => ({
  verdict,
  reason: verdict === 'pass' ? '' : 'accuracy-delta>=0: worse',
  gates: [],
  splits: [],
  evaluatedAtMs: T0,
});

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof DriftlineError ? err.code : `not a DriftlineError: ${String(err)}`;
  }
  return undefined;
}

const queued = (over: Partial<TrainingJobSpec> = {}): TrainingJob => createJob({ id: 'tj_1', spec: spec(over), nowMs: T0 }).job;
const leased = (job = queued(), id = 'lease-1', at = T0): TrainingJob => leaseJob(job, { id, workerId: 'w1', ttlMs: TTL }, at).job;

describe('training job state machine', () => {
  it('creates a job queued at attempt 1 with a create audit entry', () => {
    const { job, audit } = createJob({ id: 'tj_1', spec: spec(), nowMs: T0 });
    expect(job).toMatchObject({ state: 'queued', attempt: 1, lease: null, createdAtMs: T0 });
    expect(audit).toEqual([expect.objectContaining({ action: 'create', fromState: 'queued', toState: 'queued', attempt: 1 })]);
  });

  it('goes queued → leased → running → evaluating → succeeded, recording each step', () => {
    const l = leaseJob(queued(), { id: 'lease-1', workerId: 'w1', ttlMs: TTL }, T0 + 1);
    expect(l.job).toMatchObject({ state: 'leased', lease: { id: 'lease-1', workerId: 'w1', attempt: 1, expiresAtMs: T0 + 1 + TTL } });
    const h = heartbeat(l.job, 'lease-1', { epoch: 1, loss: 0.5, metrics: { acc: 0.8 } }, TTL, T0 + 10_000);
    expect(h.cancel).toBe(false);
    expect(h.job).toMatchObject({ state: 'running', progress: { epoch: 1, loss: 0.5 }, lease: { expiresAtMs: T0 + 10_000 + TTL } });
    expect(h.audit.map((a) => a.action)).toEqual(['start']);
    // Later heartbeats extend the lease without flooding the audit log.
    const h2 = heartbeat(h.job, 'lease-1', null, TTL, T0 + 20_000);
    expect(h2.audit).toEqual([]);
    expect(h2.job.lease!.expiresAtMs).toBe(T0 + 20_000 + TTL);
    expect(h2.job.progress!.epoch).toBe(1);
    const c = completeAttempt(h2.job, 'lease-1', candidate, T0 + 25_000);
    expect(c.job).toMatchObject({ state: 'evaluating', candidate: { id: 'cand_1' } });
    const j = judge(c.job, report('pass'), T0 + 26_000);
    expect(j.job).toMatchObject({ state: 'succeeded', evaluation: { verdict: 'pass' } });
    expect(j.audit).toEqual([expect.objectContaining({ action: 'accept', fromState: 'evaluating', toState: 'succeeded' })]);
    expect(recordResultVersion(j.job, 2, T0 + 27_000).job.resultVersion).toBe(2);
  });

  it('fails a succeeded job whose candidate the sink could not register (TRAINING_REGISTRATION_FAILED), never one with a version', () => {
    const succeeded = judge(completeAttempt(leased(), 'lease-1', candidate, T0 + 1).job, report('pass'), T0 + 2).job;
    const f = registrationFailed(succeeded, 'STORE_FAILED', 'STORE_FAILED: disk full', T0 + 3);
    expect(f.job).toMatchObject({ state: 'failed', errorCode: 'TRAINING_REGISTRATION_FAILED', resultVersion: 0, evaluation: { verdict: 'pass' } });
    expect(f.job.reason).toBe('the candidate passed the gate but could not be registered as a version: STORE_FAILED: disk full');
    expect(f.audit).toEqual([
      expect.objectContaining({
        action: 'register-failed',
        fromState: 'succeeded',
        toState: 'failed',
        details: { errorCode: 'TRAINING_REGISTRATION_FAILED', cause: 'STORE_FAILED' },
      }),
    ]);
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return (err as DriftlineError).code;
      }
      return undefined;
    };
    expect(code(() => registrationFailed(recordResultVersion(succeeded, 2, T0 + 3).job, 'X_FAILED', 'late', T0 + 4))).toBe('TRAINING_STATE_INVALID');
    expect(code(() => registrationFailed(f.job, 'X_FAILED', 'again', T0 + 4))).toBe('TRAINING_STATE_INVALID');
  });

  it('rejects a candidate that fails its gates or is inconclusive, keeping the report and reason', () => {
    const evaluating = completeAttempt(leased(), 'lease-1', candidate, T0 + 1).job;
    const failed = judge(evaluating, report('fail'), T0 + 2).job;
    expect(failed).toMatchObject({ state: 'rejected', reason: 'accuracy-delta>=0: worse', evaluation: { verdict: 'fail' } });
    const unsure = judge(evaluating, { ...report('inconclusive'), reason: 'only 3 rows' }, T0 + 2).job;
    expect(unsure).toMatchObject({ state: 'rejected', reason: 'inconclusive: only 3 rows' });
  });

  it('fails a job whose evaluation could not run with the code given', () => {
    const evaluating = completeAttempt(leased(), 'lease-1', candidate, T0 + 1).job;
    expect(evaluationFailed(evaluating, 'TRAINING_EVALUATION_FAILED', 'onnxruntime refused it', T0 + 2).job).toMatchObject({
      state: 'failed',
      errorCode: 'TRAINING_EVALUATION_FAILED',
    });
  });

  it('re-queues an expired lease with the next attempt, and fails with TRAINING_ATTEMPTS_EXHAUSTED after the last', () => {
    const first = leased();
    expect(expireLease(first, T0 + TTL - 1).job).toBe(first);
    const requeued = expireLease(first, T0 + TTL);
    expect(requeued.job).toMatchObject({ state: 'queued', attempt: 2, lease: null, errorCode: 'TRAINING_LEASE_LOST' });
    expect(requeued.audit).toEqual([expect.objectContaining({ action: 'lease-expired', attempt: 1, details: expect.objectContaining({ requeuedAs: 2 }) })]);
    const second = leased(requeued.job, 'lease-2', T0 + TTL);
    const exhausted = failAttempt(second, 'lease-2', 'TRAINER_CRASHED', 'exit 137', T0 + TTL + 1).job;
    expect(exhausted).toMatchObject({ state: 'failed', attempt: 2, errorCode: 'TRAINING_ATTEMPTS_EXHAUSTED' });
    expect(exhausted.reason).toContain('TRAINER_CRASHED');
  });

  it('re-queues a failed attempt while attempts are left', () => {
    expect(failAttempt(leased(), 'lease-1', 'TRAINER_CRASHED', 'segfault', T0 + 5).job).toMatchObject({
      state: 'queued',
      attempt: 2,
      errorCode: 'TRAINER_CRASHED',
    });
  });

  it('refuses with TRAINING_LEASE_LOST a heartbeat, completion or failure on a lease that expired or was replaced', () => {
    const first = leased();
    // Expired, even before any sweep moved the job.
    expect(codeOf(() => heartbeat(first, 'lease-1', null, TTL, T0 + TTL))).toBe('TRAINING_LEASE_LOST');
    const second = leased(expireLease(first, T0 + TTL).job, 'lease-2', T0 + TTL);
    expect(codeOf(() => heartbeat(second, 'lease-1', null, TTL, T0 + TTL + 1))).toBe('TRAINING_LEASE_LOST');
    expect(codeOf(() => completeAttempt(second, 'lease-1', candidate, T0 + TTL + 1))).toBe('TRAINING_LEASE_LOST');
    expect(codeOf(() => failAttempt(second, 'lease-1', 'TRAINER_CRASHED', '', T0 + TTL + 1))).toBe('TRAINING_LEASE_LOST');
    expect(codeOf(() => heartbeat(second, 'lease-2', null, TTL, T0 + TTL + 1))).toBeUndefined();
  });

  it('cancels a running job at once and tells its worker to stop at the next heartbeat', () => {
    const running = heartbeat(leased(), 'lease-1', null, TTL, T0 + 1).job;
    const cancelled = cancel(running, 'wrong dataset', T0 + 2);
    expect(cancelled.job).toMatchObject({ state: 'cancelled', cancelReason: 'wrong dataset' });
    expect(cancelled.audit[0]).toMatchObject({ action: 'cancel', fromState: 'running', toState: 'cancelled', details: { leaseId: 'lease-1' } });
    expect(heartbeat(cancelled.job, 'lease-1', null, TTL, T0 + 3).cancel).toBe(true);
    expect(codeOf(() => heartbeat(cancelled.job, 'lease-other', null, TTL, T0 + 3))).toBe('TRAINING_LEASE_LOST');
    expect(codeOf(() => completeAttempt(cancelled.job, 'lease-1', candidate, T0 + 3))).toBe('TRAINING_LEASE_LOST');
    expect(expireLease(cancelled.job, T0 + 10 * TTL).job.state).toBe('cancelled');
  });

  it('refuses transitions that make no sense with TRAINING_STATE_INVALID', () => {
    const job = queued();
    expect(codeOf(() => judge(job, report('pass'), T0))).toBe('TRAINING_STATE_INVALID');
    expect(codeOf(() => leaseJob(leased(), { id: 'x', workerId: 'w2', ttlMs: TTL }, T0))).toBe('TRAINING_STATE_INVALID');
    expect(codeOf(() => recordResultVersion(job, 2, T0))).toBe('TRAINING_STATE_INVALID');
    const cancelled = cancel(job, '', T0).job;
    expect(cancelled.reason).toBe('cancelled by operator');
    expect(codeOf(() => cancel(cancelled, '', T0))).toBe('TRAINING_STATE_INVALID');
    expect(codeOf(() => evaluationFailed(job, 'X', '', T0))).toBe('TRAINING_STATE_INVALID');
  });
});
