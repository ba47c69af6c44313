import { DriftlineError } from '../../common/errors.js';
import type { EvaluationReport } from './evaluation.js';

/**
 * A training job as a pure state machine, like the rollout one: every function takes the job
 * and the time and returns the next job with the audit entries to record. No timers, no I/O:
 * the engine persists each transition, its sweep asks expireLease() on the injected clock.
 *
 *   queued ──lease──► leased ──heartbeat──► running ──complete──► evaluating ──pass──► succeeded ──version registered (stays succeeded)
 *     ▲                 │                     │                        │  │                    └──sink failed──► failed (TRAINING_REGISTRATION_FAILED)
 *     │                 │                     │                        │  └──fail/inconclusive──► rejected
 *     └─ attempts left ─┴── lease expired / ──┘                        └──evaluator failed──► failed
 *                            attempt failed    no attempts left ──► failed (TRAINING_ATTEMPTS_EXHAUSTED)
 *   any state before the end ──cancel──► cancelled (a worker holding the lease hears it at its next heartbeat)
 */
export const TRAINING_JOB_STATES = ['queued', 'leased', 'running', 'evaluating', 'succeeded', 'rejected', 'failed', 'cancelled'] as const;
export type TrainingJobState = (typeof TRAINING_JOB_STATES)[number];
export const TERMINAL_STATES: readonly TrainingJobState[] = ['succeeded', 'rejected', 'failed', 'cancelled'];
export const isTerminal = (state: TrainingJobState): boolean => TERMINAL_STATES.includes(state);
/** States in which a worker holds the job's lease. */
export const LEASED_STATES: readonly TrainingJobState[] = ['leased', 'running'];

export interface TrainingResources {
  gpus: number;
  /** Per GPU. */
  gpuMemoryBytes: number;
  cpu: number;
  memoryBytes: number;
}

/** What was asked: fixed when the job is created. */
export interface TrainingJobSpec {
  model: string;
  baseVersion: number;
  datasetId: string;
  trainer: string;
  /** A JSON object, kept as the canonical text the trainer gets. */
  hyperparametersJson: string;
  resources: TrainingResources;
  maxDurationMs: number;
  maxAttempts: number;
  /** Gate rules as text ("accuracy-delta>=0.01"), already parsed once. */
  gates: string[];
  /** Why the job exists when a retraining trigger started it (its lineage); absent for an operator's job. */
  trigger?: TrainingTrigger | undefined;
}

/** The retraining trigger decision a job answers: what fired, for which cohort, and the dataset it chose. */
export interface TrainingTrigger {
  kind: 'drift' | 'schedule' | 'labelled';
  /** The trigger's name within its model (`drift-42`): its decision is the one recorded under this key. */
  key: string;
  /** The id the decision asked the engine with (`retrain/<model>/<key>`). */
  clientRequestId: string;
  policyVersion: number;
  /** The drift event that fired it; 0 for another trigger. */
  driftEventId: number;
  /** The cohort whose drift fired it ("" for the whole fleet or another trigger). */
  cohort: string;
  /** That cohort's devices as a label selector (`cohort=north`; "" every device): the canary's audience. */
  cohortSelector: string;
  /** The dataset query's device selector (the policy's, narrowed to the cohort). */
  datasetSelector: string;
  /** The parent's training snapshot replayed into the dataset; "" when none was (none asked, or the parent names none). */
  replayedDatasetId: string;
}

/** Where the release path after the gate stands: signed canary, staged rollout, its outcome (control-plane/training/release-canary.ts). */
export const TRAINING_RELEASE_STATES = ['awaiting-signature', 'rolling-out', 'succeeded', 'aborted', 'failed', 'skipped'] as const;
export type TrainingReleaseState = (typeof TRAINING_RELEASE_STATES)[number];
/** A release in one of these is settled: nothing more is done for the job. */
export const SETTLED_RELEASE_STATES: readonly TrainingReleaseState[] = ['succeeded', 'aborted', 'failed', 'skipped'];

export interface TrainingRelease {
  state: TrainingReleaseState;
  /** The version released (the job's result version). */
  version: number;
  /** The canary's devices as a label selector. */
  audience: string;
  /** The canary rollout; "" before it started. */
  rolloutId: string;
  /** Why it is in this state (a rollout's abort reason, the error that stopped it, why it was skipped). */
  reason: string;
  /** A stable code when failed. */
  errorCode: string;
  updatedAtMs: number;
}

export interface TrainingLease {
  id: string;
  workerId: string;
  attempt: number;
  leasedAtMs: number;
  expiresAtMs: number;
}

export interface TrainingProgress {
  epoch: number;
  loss: number | null;
  metrics: Record<string, number>;
}

export interface TrainingCandidate {
  id: string;
  sha256: string;
  sizeBytes: number;
  attempt: number;
  /** What the trainer reported about itself. */
  metrics: Record<string, number>;
}

export interface TrainingJob {
  id: string;
  spec: TrainingJobSpec;
  state: TrainingJobState;
  /** The current (or last) attempt, 1-based. */
  attempt: number;
  createdAtMs: number;
  updatedAtMs: number;
  /** The lease of the current attempt; kept (not cleared) once cancelled so its worker can be told to stop. */
  lease: TrainingLease | null;
  /** A stable code once failed; the last attempt's code while queued again. */
  errorCode: string;
  reason: string;
  cancelReason: string;
  progress: TrainingProgress | null;
  candidate: TrainingCandidate | null;
  evaluation: EvaluationReport | null;
  /** The model version a passing candidate became; 0 until the candidate sink registered one. */
  resultVersion: number;
  /** The release of that version by the retraining loop (canary signature, rollout, outcome); absent until it began. */
  release?: TrainingRelease | null | undefined;
}

export interface TrainingAuditEntry {
  action: string;
  fromState: TrainingJobState;
  toState: TrainingJobState;
  attempt: number;
  reason: string;
  details: Record<string, unknown>;
}

export interface TrainingTransition {
  job: TrainingJob;
  audit: TrainingAuditEntry[];
}

export function createJob(input: { id: string; spec: TrainingJobSpec; nowMs: number }): TrainingTransition {
  const job: TrainingJob = {
    id: input.id,
    spec: input.spec,
    state: 'queued',
    attempt: 1,
    createdAtMs: input.nowMs,
    updatedAtMs: input.nowMs,
    lease: null,
    errorCode: '',
    reason: '',
    cancelReason: '',
    progress: null,
    candidate: null,
    evaluation: null,
    resultVersion: 0,
  };
  return { job, audit: [entry(job, 'queued', 'create', '', { spec: input.spec })] };
}

/** A worker takes the queued job's current attempt. */
export function leaseJob(job: TrainingJob, lease: { id: string; workerId: string; ttlMs: number }, nowMs: number): TrainingTransition {
  requireState(job, ['queued'], 'lease');
  const next: TrainingJob = {
    ...job,
    state: 'leased',
    lease: { id: lease.id, workerId: lease.workerId, attempt: job.attempt, leasedAtMs: nowMs, expiresAtMs: nowMs + lease.ttlMs },
    progress: null,
    updatedAtMs: nowMs,
  };
  return { job: next, audit: [entry(next, job.state, 'lease', '', { leaseId: lease.id, workerId: lease.workerId, expiresAtMs: next.lease!.expiresAtMs })] };
}

export interface HeartbeatOutcome extends TrainingTransition {
  /** The job was cancelled: the worker must stop its trainer. */
  cancel: boolean;
}

/**
 * The worker is alive: the lease is extended by ttl and its progress kept. A heartbeat for a
 * lease that is not the job's current one, or that expired (even before a sweep noticed), is
 * TRAINING_LEASE_LOST; for the lease of a job cancelled meanwhile it answers cancel.
 */
export function heartbeat(job: TrainingJob, leaseId: string, progress: TrainingProgress | null, ttlMs: number, nowMs: number): HeartbeatOutcome {
  if (job.state === 'cancelled' && job.lease?.id === leaseId) return { job, audit: [], cancel: true };
  assertLeaseHeld(job, leaseId, nowMs);
  const next: TrainingJob = {
    ...job,
    state: 'running',
    lease: { ...job.lease!, expiresAtMs: nowMs + ttlMs },
    progress: progress ?? job.progress,
    updatedAtMs: nowMs,
  };
  // Only the first heartbeat is a state change worth an audit entry; the rest would flood the log.
  const audit = job.state === 'leased' ? [entry(next, job.state, 'start', '', { leaseId, workerId: job.lease!.workerId })] : [];
  return { job: next, audit, cancel: false };
}

/** The sweep: a lease past its expiry is lost, and its attempt with it. */
export function expireLease(job: TrainingJob, nowMs: number): TrainingTransition {
  if (!LEASED_STATES.includes(job.state) || !job.lease || job.lease.expiresAtMs > nowMs) return { job, audit: [] };
  return endAttempt(job, nowMs, 'lease-expired', 'TRAINING_LEASE_LOST', `the lease of worker ${job.lease.workerId} expired (no heartbeat)`);
}

/** The worker says its attempt failed (a trainer that crashed, hung, wrote garbage). */
export function failAttempt(job: TrainingJob, leaseId: string, errorCode: string, message: string, nowMs: number): TrainingTransition {
  assertLeaseHeld(job, leaseId, nowMs);
  return endAttempt(job, nowMs, 'attempt-failed', errorCode, message);
}

/** The worker's attempt produced a candidate: the lease is done, the evaluation gate is next. */
export function completeAttempt(job: TrainingJob, leaseId: string, candidate: TrainingCandidate, nowMs: number): TrainingTransition {
  assertLeaseHeld(job, leaseId, nowMs);
  const next: TrainingJob = { ...job, state: 'evaluating', candidate, updatedAtMs: nowMs };
  return {
    job: next,
    audit: [entry(next, job.state, 'complete', '', { leaseId, candidate: candidate.id, sha256: candidate.sha256, sizeBytes: candidate.sizeBytes })],
  };
}

/** The gate's verdict: pass → succeeded; fail or inconclusive → rejected, the report kept with its reason. */
export function judge(job: TrainingJob, report: EvaluationReport, nowMs: number): TrainingTransition {
  requireState(job, ['evaluating'], 'judge');
  const passed = report.verdict === 'pass';
  const reason = passed ? '' : report.verdict === 'inconclusive' ? `inconclusive: ${report.reason}` : report.reason;
  const next: TrainingJob = { ...job, state: passed ? 'succeeded' : 'rejected', evaluation: report, reason, updatedAtMs: nowMs };
  return { job: next, audit: [entry(next, job.state, passed ? 'accept' : 'reject', reason, { verdict: report.verdict, gates: report.gates })] };
}

/** The evaluation could not run (the evaluator threw): failed with its code, nothing accepted. */
export function evaluationFailed(job: TrainingJob, errorCode: string, message: string, nowMs: number): TrainingTransition {
  requireState(job, ['evaluating'], 'fail the evaluation of');
  const next: TrainingJob = { ...job, state: 'failed', errorCode, reason: message, updatedAtMs: nowMs };
  return { job: next, audit: [entry(next, job.state, 'evaluation-failed', message, { errorCode })] };
}

/** The candidate sink registered the passing candidate as a model version. */
export function recordResultVersion(job: TrainingJob, version: number, nowMs: number): TrainingTransition {
  requireState(job, ['succeeded'], 'record the version of');
  const next: TrainingJob = { ...job, resultVersion: version, updatedAtMs: nowMs };
  return { job: next, audit: [entry(next, job.state, 'register', '', { version })] };
}

/**
 * The candidate sink could not register the passing candidate: the job did not produce a version,
 * so it is failed (its evaluation report kept) rather than a succeeded job with version 0.
 */
export function registrationFailed(job: TrainingJob, errorCode: string, message: string, nowMs: number): TrainingTransition {
  requireState(job, ['succeeded'], 'fail the registration of');
  if (job.resultVersion !== 0) refuse(job, `fail the registration of v${job.resultVersion} of`);
  const reason = `the candidate passed the gate but could not be registered as a version: ${message}`;
  const next: TrainingJob = { ...job, state: 'failed', errorCode: 'TRAINING_REGISTRATION_FAILED', reason, updatedAtMs: nowMs };
  return { job: next, audit: [entry(next, job.state, 'register-failed', reason, { errorCode: 'TRAINING_REGISTRATION_FAILED', cause: errorCode })] };
}

/**
 * The release path moved: the signature is awaited, the canary rollout started or ended. Only a
 * succeeded job with a registered version is released; a settled release does not move again.
 */
export function recordRelease(job: TrainingJob, release: TrainingRelease, nowMs: number): TrainingTransition {
  requireState(job, ['succeeded'], 'record the release of');
  if (job.resultVersion === 0 || release.version !== job.resultVersion) {
    throw new DriftlineError('TRAINING_STATE_INVALID', `training job ${job.id} registered no version ${release.version} to release`, {
      details: { id: job.id, resultVersion: job.resultVersion, version: release.version },
    });
  }
  if (job.release && SETTLED_RELEASE_STATES.includes(job.release.state)) refuse(job, `move the ${job.release.state} release of`);
  const next: TrainingJob = { ...job, release: { ...release, updatedAtMs: nowMs }, updatedAtMs: nowMs };
  return {
    job: next,
    audit: [
      entry(next, job.state, `release-${release.state}`, release.reason, {
        version: release.version,
        audience: release.audience,
        rolloutId: release.rolloutId,
        ...(release.errorCode ? { errorCode: release.errorCode } : {}),
      }),
    ],
  };
}

export function cancel(job: TrainingJob, reason: string, nowMs: number): TrainingTransition {
  if (isTerminal(job.state)) refuse(job, 'cancel');
  const why = reason || 'cancelled by operator';
  const next: TrainingJob = { ...job, state: 'cancelled', cancelReason: why, reason: why, updatedAtMs: nowMs };
  return { job: next, audit: [entry(next, job.state, 'cancel', why, job.lease && LEASED_STATES.includes(job.state) ? { leaseId: job.lease.id } : {})] };
}

/** TRAINING_LEASE_LOST unless leaseId is the job's live lease at nowMs. */
export function assertLeaseHeld(job: TrainingJob, leaseId: string, nowMs: number): void {
  const current = job.lease;
  if (!LEASED_STATES.includes(job.state) || !current || current.id !== leaseId) {
    throw new DriftlineError('TRAINING_LEASE_LOST', `lease ${leaseId} no longer holds training job ${job.id} (it is ${job.state}, attempt ${job.attempt})`, {
      details: { jobId: job.id, leaseId, state: job.state, attempt: job.attempt },
    });
  }
  if (current.expiresAtMs <= nowMs) {
    throw new DriftlineError('TRAINING_LEASE_LOST', `lease ${leaseId} of training job ${job.id} expired`, {
      details: { jobId: job.id, leaseId, expiresAtMs: current.expiresAtMs, state: job.state, attempt: job.attempt },
    });
  }
}

/** An attempt ended without a candidate: queued again with the next attempt, or failed when none is left. */
function endAttempt(job: TrainingJob, nowMs: number, action: string, errorCode: string, message: string): TrainingTransition {
  const details = { errorCode, leaseId: job.lease?.id, workerId: job.lease?.workerId };
  if (job.attempt < job.spec.maxAttempts) {
    const next: TrainingJob = { ...job, state: 'queued', attempt: job.attempt + 1, lease: null, errorCode, reason: message, updatedAtMs: nowMs };
    return { job: next, audit: [entry({ ...next, attempt: job.attempt }, job.state, action, message, { ...details, requeuedAs: next.attempt })] };
  }
  const reason = `all ${job.spec.maxAttempts} attempts failed; the last: ${errorCode}: ${message}`;
  const next: TrainingJob = { ...job, state: 'failed', lease: null, errorCode: 'TRAINING_ATTEMPTS_EXHAUSTED', reason, updatedAtMs: nowMs };
  return { job: next, audit: [entry(next, job.state, action, reason, { ...details, lastErrorCode: errorCode })] };
}

function requireState(job: TrainingJob, allowed: readonly TrainingJobState[], what: string): void {
  if (!allowed.includes(job.state)) refuse(job, what);
}

function refuse(job: TrainingJob, what: string): never {
  throw new DriftlineError('TRAINING_STATE_INVALID', `cannot ${what} training job ${job.id}: it is ${job.state}`, {
    details: { id: job.id, state: job.state, action: what },
  });
}

function entry(job: TrainingJob, fromState: TrainingJobState, action: string, reason: string, details: Record<string, unknown>): TrainingAuditEntry {
  return { action, fromState, toState: job.state, attempt: job.attempt, reason, details };
}
