import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { Clock } from '../../common/clock.js';
import { DriftlineError, asDriftlineError } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import type { Logger } from '../../common/logger.js';
import { judgeCandidate, normalizeEvaluationGates, parseEvaluationGate } from './evaluation.js';
import {
  LEASED_STATES,
  TRAINING_JOB_STATES,
  assertLeaseHeld,
  cancel as cancelJob,
  completeAttempt,
  createJob,
  evaluationFailed,
  expireLease,
  failAttempt,
  heartbeat as heartbeatJob,
  isTerminal,
  judge,
  leaseJob,
  recordRelease as recordReleaseOf,
  recordResultVersion,
  registrationFailed,
  type TrainingJob,
  type TrainingRelease,
  type TrainingJobSpec,
  type TrainingJobState,
  type TrainingProgress,
  type TrainingTransition,
} from './job-state-machine.js';
import type {
  ArtifactRef,
  BaseModels,
  CandidateSink,
  DatasetCatalog,
  Evaluator,
  StoredCandidate,
  TrainingArtifacts,
  TrainingAttemptRecord,
  TrainingAuditRecord,
  TrainingJobReads,
  TrainingJobRepository,
  TrainingJobTransaction,
  TrainingLogLine,
  TrainingWorker,
  WorkerGpu,
} from './ports.js';
import { pickJob } from './scheduling.js';

/** The `training` configuration the engine runs with (durations in milliseconds). */
export interface TrainingLimits {
  leaseTtlMs: number;
  defaultMaxAttempts: number;
  defaultMaxDurationMs: number;
  maxCandidateBytes: number;
  /** A split with fewer rows makes its gates inconclusive. */
  minSplitRows: number;
  /** Log lines kept per job (the oldest go first). */
  maxLogLinesPerJob: number;
}

export interface TrainingEngineOptions {
  repository: TrainingJobRepository;
  baseModels: BaseModels;
  datasets: DatasetCatalog;
  artifacts: TrainingArtifacts;
  evaluator: Evaluator;
  /** Without one a passing candidate stays a succeeded job with result version 0. */
  sink?: CandidateSink | undefined;
  limits: TrainingLimits;
  clock: Clock;
  logger: Logger;
  newId?: (prefix: 'tj' | 'tl' | 'tw' | 'tc') => string;
}

/** Who asked: the token id and the caller's idempotency key (empty: none). */
export interface TrainingActor {
  actor: string;
  clientRequestId: string;
}

export const SYSTEM_ACTOR: TrainingActor = { actor: 'system', clientRequestId: '' };

export interface TrainingJobUpdate {
  job: TrainingJob;
  /** Lines recorded since the previous update of this watch. */
  logLines: TrainingLogLine[];
}

export interface StartTrainingJobInput {
  model: string;
  baseVersion: number;
  datasetId: string;
  trainer: string;
  hyperparametersJson?: string | undefined;
  resources?: Partial<TrainingJobSpec['resources']> | undefined;
  /** 0 or absent: the configured default. */
  maxDurationMs?: number | undefined;
  maxAttempts?: number | undefined;
  gates?: readonly string[] | undefined;
  /** The retraining trigger decision that started the job (lineage); absent for an operator's job. */
  trigger?: TrainingJobSpec['trigger'];
}

export interface WorkerRegistration {
  name: string;
  gpus: WorkerGpu[];
  cpu: number;
  memoryBytes: number;
  trainers: string[];
  version: string;
}

export interface LeaseGrant {
  jobId: string;
  attempt: number;
  leaseId: string;
  leaseTtlMs: number;
  leaseExpiresAtMs: number;
  spec: TrainingJobSpec;
  baseModel: ArtifactRef;
  dataset: ArtifactRef;
  maxCandidateBytes: number;
}

const LOG_LINE_CHARS = 1000;
const LOG_LINES_PER_HEARTBEAT = 200;
const WATCH_REPLAY_LINES = 100;
const ERROR_CODE_TEXT = /^[A-Z][A-Z0-9_]{2,63}$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

const resourcesSchema = z
  .object({
    gpus: z.number().int().min(0).max(64).default(0),
    gpuMemoryBytes: z.number().int().min(0).default(0),
    cpu: z.number().int().min(0).max(4096).default(0),
    memoryBytes: z.number().int().min(0).default(0),
  })
  .strict();

const startSchema = z
  .object({
    model: z.string(),
    baseVersion: z.number().int().min(1, 'name the base version (1 or more)'),
    datasetId: z.string().regex(/^[0-9a-f]{64}$/, 'expected the dataset snapshot id (64 hex digits)'),
    trainer: z.string().regex(NAME, 'expected a trainer name (letters, digits, . _ -)'),
    hyperparametersJson: z.string().max(65_536).optional(),
    resources: resourcesSchema.optional(),
    maxDurationMs: z
      .number()
      .int()
      .min(0)
      .max(7 * 86_400_000)
      .optional(),
    maxAttempts: z.number().int().min(0).max(100).optional(),
    gates: z.array(z.string().max(128)).max(20).optional(),
    trigger: z
      .object({
        kind: z.enum(['drift', 'schedule', 'labelled']),
        key: z.string().max(128),
        clientRequestId: z.string().max(256),
        policyVersion: z.number().int().min(0),
        driftEventId: z.number().int().min(0),
        cohort: z.string().max(128),
        cohortSelector: z.string().max(512),
        datasetSelector: z.string().max(1024),
        replayedDatasetId: z.string().max(64),
      })
      .strict()
      .optional(),
  })
  .strict();

const registrationSchema = z
  .object({
    name: z.string().regex(NAME, 'expected a worker name (letters, digits, . _ -; at most 64)'),
    gpus: z.array(z.object({ name: z.string().max(128), memoryBytes: z.number().int().min(0) })).max(64),
    cpu: z.number().int().min(0).max(4096),
    memoryBytes: z.number().int().min(0),
    trainers: z.array(z.string().regex(NAME)).max(64),
    version: z.string().max(64),
  })
  .strict();

const finiteMetrics = z
  .record(z.string().min(1).max(128), z.number().finite('metrics must be finite numbers (no NaN or infinity)'))
  .refine((m) => Object.keys(m).length <= 256, 'at most 256 metrics');

/**
 * Runs training jobs: turns operator commands, worker calls and the sweep into state-machine
 * transitions, each persisted with its audit entries in one unit of work that first reads the
 * job again (so two workers, two replicas or a worker and the sweep never both move one job).
 * A completed attempt's candidate is judged in the background; settled() waits for that.
 */
export class TrainingEngine {
  private readonly listeners = new Set<(jobId: string) => void>();
  private readonly evaluations = new Map<string, Promise<void>>();
  /**
   * Jobs committed `succeeded` whose candidate the sink is registering now: a watch holds their
   * update back until the version is recorded (or the job failed), so its last update names it.
   */
  private readonly registering = new Set<string>();
  private readonly newId: (prefix: 'tj' | 'tl' | 'tw' | 'tc') => string;

  constructor(private readonly options: TrainingEngineOptions) {
    this.newId = options.newId ?? ((prefix) => `${prefix}_${randomBytes(prefix === 'tl' ? 12 : 6).toString('hex')}`);
  }

  get limits(): TrainingLimits {
    return this.options.limits;
  }

  // ── operators ────────────────────────────────────────────────────────────

  async start(input: StartTrainingJobInput, by: TrainingActor): Promise<TrainingJob> {
    const spec = this.parseSpec(input);
    const fingerprint = JSON.stringify(spec);
    const { repository, baseModels, datasets, clock } = this.options;
    const replay = await this.replayed(repository, by, 'start', fingerprint);
    if (replay) return replay;
    await baseModels.artifact(spec.model, spec.baseVersion);
    const dataset = await datasets.describe(spec.datasetId);
    if (!dataset) throw new DriftlineError('DATASET_NOT_FOUND', `no dataset snapshot ${spec.datasetId}`, { details: { datasetId: spec.datasetId } });
    if (dataset.model !== spec.model) {
      throw new DriftlineError('REQUEST_INVALID', `dataset ${spec.datasetId} holds samples of ${dataset.model}, not ${spec.model}`, {
        details: { datasetId: spec.datasetId, model: dataset.model },
      });
    }
    const job = await repository.transaction(async (tx) => {
      // Read again inside the unit of work: two starts with one id race to here.
      const again = await this.replayed(tx, by, 'start', fingerprint);
      if (again) return again;
      const created = createJob({ id: this.newId('tj'), spec, nowMs: clock.now() });
      await tx.insert(created.job);
      await this.record(tx, created, by);
      if (by.clientRequestId) await tx.saveRequest({ clientRequestId: by.clientRequestId, action: 'start', fingerprint, jobId: created.job.id }, clock.now());
      return created.job;
    });
    this.changed(job.id);
    return job;
  }

  async cancel(id: string, by: TrainingActor, reason = ''): Promise<TrainingJob> {
    const fingerprint = JSON.stringify({ id });
    const job = await this.options.repository.transaction(async (tx) => {
      const replay = await this.replayed(tx, by, 'cancel', fingerprint);
      if (replay) return replay;
      const transition = cancelJob(await this.require(tx, id), reason.slice(0, 500), this.options.clock.now());
      await tx.update(transition.job);
      await this.record(tx, transition, by);
      await this.endAttemptRecord(tx, transition.job, 'cancelled', '');
      if (by.clientRequestId) await tx.saveRequest({ clientRequestId: by.clientRequestId, action: 'cancel', fingerprint, jobId: id }, this.options.clock.now());
      return transition.job;
    });
    this.changed(job.id);
    return job;
  }

  get(id: string): Promise<TrainingJob> {
    return this.require(this.options.repository, id);
  }

  /** Newest first, a page at a time; the token is opaque to callers. */
  async list(options: { model?: string; state?: string; pageSize?: number; pageToken?: string }): Promise<{ jobs: TrainingJob[]; nextPageToken: string }> {
    const limit = Math.min(Math.max(options.pageSize || 100, 1), 1000);
    if (options.state && !(TRAINING_JOB_STATES as readonly string[]).includes(options.state)) {
      throw new DriftlineError('REQUEST_INVALID', `state must be one of ${TRAINING_JOB_STATES.join(', ')}`, { details: { state: options.state } });
    }
    const after = options.pageToken ? decodePageToken(options.pageToken) : undefined;
    const jobs = await this.options.repository.list({
      model: options.model || undefined,
      state: (options.state || undefined) as TrainingJobState | undefined,
      after,
      limit: limit + 1,
    });
    const page = jobs.slice(0, limit);
    const last = page.at(-1);
    return { jobs: page, nextPageToken: jobs.length > limit && last ? encodePageToken(last) : '' };
  }

  /** The job a start with this client request id created, if one did (a caller deciding whether to prepare a start again). */
  async findByClientRequestId(clientRequestId: string): Promise<TrainingJob | undefined> {
    const stored = clientRequestId ? await this.options.repository.findRequest(clientRequestId) : undefined;
    return stored?.action === 'start' ? this.get(stored.jobId) : undefined;
  }

  /** Records where the release of a succeeded job's version stands (the retraining loop's canary), with an audit entry. */
  async recordRelease(id: string, release: Omit<TrainingRelease, 'updatedAtMs'>, by: TrainingActor = SYSTEM_ACTOR): Promise<TrainingJob> {
    const job = await this.options.repository.transaction(async (tx) => {
      const transition = recordReleaseOf(await this.require(tx, id), { ...release, updatedAtMs: 0 }, this.options.clock.now());
      await tx.update(transition.job);
      await this.record(tx, transition, by);
      return transition.job;
    });
    this.changed(job.id);
    return job;
  }

  audit(id: string): Promise<TrainingAuditRecord[]> {
    return this.options.repository.audit(id);
  }

  async logs(id: string, options: { attempt?: number; tail?: number } = {}): Promise<TrainingLogLine[]> {
    await this.get(id);
    return this.options.repository.logs(id, options);
  }

  /**
   * The job now (with its last log lines), then after every change with the lines added since,
   * until it reaches a terminal state or `signal` aborts (a watcher that left, shutdown): the
   * generator then returns at once, even while it waits for a change. Breaking out of the loop unsubscribes.
   * A succeeded job is yielded only once its result version is recorded (or, when the sink failed,
   * as the failed job it became): the last update of a succeeded job carries its version.
   */
  async *watch(id: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<TrainingJobUpdate> {
    const { repository } = this.options;
    const { signal } = options;
    let wake: (() => void) | undefined;
    let dirty = true;
    const unsubscribe = this.subscribe((changed) => {
      if (changed !== id) return;
      dirty = true;
      wake?.();
    });
    const onAbort = (): void => wake?.();
    signal?.addEventListener('abort', onAbort);
    try {
      let lastSeq = -1;
      let lastText = '';
      for (;;) {
        if (signal?.aborted) return;
        if (!dirty) await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
        if (signal?.aborted) return;
        dirty = false;
        const job = await this.get(id);
        // Registering: wait for the next change. A change seen meanwhile (dirty) may be the version
        // recorded after this read, so the job is read again rather than ended with version 0.
        if (job.state === 'succeeded' && job.resultVersion === 0 && (this.registering.has(id) || dirty)) continue;
        const logLines = lastSeq < 0 ? await repository.logs(id, { tail: WATCH_REPLAY_LINES }) : await repository.logs(id, { afterSeq: lastSeq });
        if (logLines.length > 0) lastSeq = logLines.at(-1)!.seq;
        else if (lastSeq < 0) lastSeq = 0;
        const text = JSON.stringify(job);
        if (text !== lastText || logLines.length > 0) {
          lastText = text;
          yield { job, logLines };
        }
        if (isTerminal(job.state)) return;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      unsubscribe();
    }
  }

  /** Called with a job's id after each change it went through. Returns the unsubscribe function. */
  subscribe(listener: (jobId: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ── workers ──────────────────────────────────────────────────────────────

  /** Registers a worker, or refreshes one of the same token and name (it keeps its id). */
  async registerWorker(input: WorkerRegistration, tokenId: string): Promise<TrainingWorker> {
    const parsed = parseOrRefuse(registrationSchema, input, 'worker registration');
    const now = this.options.clock.now();
    return this.options.repository.transaction(async (tx) => {
      const existing = await tx.workerByName(tokenId, parsed.name);
      const worker: TrainingWorker = {
        ...parsed,
        id: existing?.id ?? this.newId('tw'),
        tokenId,
        registeredAtMs: existing?.registeredAtMs ?? now,
        lastSeenMs: now,
      };
      await tx.saveWorker(worker);
      return worker;
    });
  }

  /**
   * The oldest queued job this worker can run, taken in one unit of work: the queue is read and
   * the job leased in it, so two concurrent calls never get the same attempt.
   */
  async lease(workerId: string, tokenId: string): Promise<LeaseGrant | undefined> {
    const { repository, clock, limits } = this.options;
    const grant = await repository.transaction(async (tx) => {
      const worker = await tx.worker(workerId);
      if (!worker || worker.tokenId !== tokenId) {
        throw new DriftlineError('TRAINING_WORKER_NOT_FOUND', `no worker ${workerId} registered with this token; register again`, { details: { workerId } });
      }
      const now = clock.now();
      await tx.saveWorker({ ...worker, lastSeenMs: now });
      const busy = new Set((await tx.inStates([...LEASED_STATES, 'evaluating'], 10_000)).map((j) => j.spec.model));
      const job = pickJob(await tx.inStates(['queued'], 1000), worker, busy);
      if (!job) return undefined;
      const transition = leaseJob(job, { id: this.newId('tl'), workerId, ttlMs: limits.leaseTtlMs }, now);
      const lease = transition.job.lease!;
      await tx.update(transition.job);
      await this.record(tx, transition, { actor: tokenId, clientRequestId: '' });
      await tx.saveAttempt({ jobId: job.id, attempt: lease.attempt, leaseId: lease.id, workerId, leasedAtMs: now, endedAtMs: 0, outcome: '', errorCode: '' });
      return { job: transition.job, lease };
    });
    if (!grant) return undefined;
    this.changed(grant.job.id);
    const { spec } = grant.job;
    const dataset = await this.options.datasets.describe(spec.datasetId);
    if (!dataset)
      throw new DriftlineError('DATASET_NOT_FOUND', `dataset ${spec.datasetId} of job ${grant.job.id} is gone`, { details: { datasetId: spec.datasetId } });
    return {
      jobId: grant.job.id,
      attempt: grant.lease.attempt,
      leaseId: grant.lease.id,
      leaseTtlMs: limits.leaseTtlMs,
      leaseExpiresAtMs: grant.lease.expiresAtMs,
      spec,
      baseModel: await this.options.baseModels.artifact(spec.model, spec.baseVersion),
      dataset: { sha256: dataset.sha256, sizeBytes: dataset.sizeBytes },
      maxCandidateBytes: limits.maxCandidateBytes,
    };
  }

  /** Extends the lease and records progress and log lines; TRAINING_LEASE_LOST when it is gone. */
  async heartbeat(
    leaseId: string,
    report: { progress: TrainingProgress | null; logLines: readonly string[] },
    tokenId: string,
  ): Promise<{ cancel: boolean; leaseTtlMs: number; leaseExpiresAtMs: number }> {
    const { repository, clock, limits } = this.options;
    if (report.progress) parseOrRefuse(finiteMetrics, report.progress.metrics, 'progress metrics');
    const outcome = await repository.transaction(async (tx) => {
      const job = await this.jobOfLease(tx, leaseId, tokenId);
      const now = clock.now();
      const beat = heartbeatJob(job, leaseId, report.progress, limits.leaseTtlMs, now);
      if (beat.cancel) return { ...beat, now };
      await tx.update(beat.job);
      await this.record(tx, beat, { actor: tokenId, clientRequestId: '' });
      const lines = report.logLines.slice(-LOG_LINES_PER_HEARTBEAT).map((text) => ({ attempt: job.attempt, atMs: now, text: text.slice(0, LOG_LINE_CHARS) }));
      if (lines.length > 0) await tx.appendLogs(job.id, lines, limits.maxLogLinesPerJob);
      return { ...beat, now };
    });
    if (!outcome.cancel) this.changed(outcome.job.id);
    return { cancel: outcome.cancel, leaseTtlMs: limits.leaseTtlMs, leaseExpiresAtMs: outcome.job.lease?.expiresAtMs ?? outcome.now };
  }

  /** The base model or dataset a live lease names, by content hash. */
  async download(leaseId: string, sha256: string, tokenId: string): Promise<AsyncIterable<Uint8Array>> {
    const job = await this.jobOfLease(this.options.repository, leaseId, tokenId);
    assertLeaseHeld(job, leaseId, this.options.clock.now());
    const allowed = [
      (await this.options.baseModels.artifact(job.spec.model, job.spec.baseVersion)).sha256,
      (await this.options.datasets.describe(job.spec.datasetId))?.sha256,
    ];
    if (!allowed.includes(sha256)) {
      throw new DriftlineError('ARTIFACT_FORBIDDEN', `lease ${leaseId} names no artifact ${sha256}`, { details: { leaseId, sha256 } });
    }
    return this.options.artifacts.read(sha256);
  }

  /** Stores a candidate uploaded under a live lease (size capped, sha256 verified, content addressed). */
  async uploadCandidate(
    header: { leaseId: string; sizeBytes: number; sha256: string },
    chunks: AsyncIterable<Uint8Array>,
    tokenId: string,
  ): Promise<StoredCandidate> {
    const { repository, clock, limits, artifacts } = this.options;
    const job = await this.jobOfLease(repository, header.leaseId, tokenId);
    assertLeaseHeld(job, header.leaseId, clock.now());
    if (!/^[0-9a-f]{64}$/.test(header.sha256)) throw new DriftlineError('REQUEST_INVALID', 'the candidate header needs a lowercase hex sha256');
    if (!Number.isInteger(header.sizeBytes) || header.sizeBytes <= 0)
      throw new DriftlineError('REQUEST_INVALID', 'the candidate header needs its size in bytes');
    if (header.sizeBytes > limits.maxCandidateBytes) {
      throw new DriftlineError('PAYLOAD_TOO_LARGE', `a candidate may be at most ${limits.maxCandidateBytes} bytes; this one declares ${header.sizeBytes}`, {
        details: { sizeBytes: header.sizeBytes, maxBytes: limits.maxCandidateBytes },
      });
    }
    const stored = await artifacts.store({ sha256: header.sha256, sizeBytes: header.sizeBytes }, chunks, limits.maxCandidateBytes);
    return repository.transaction(async (tx) => {
      const again = await this.require(tx, job.id);
      assertLeaseHeld(again, header.leaseId, clock.now());
      const candidate: StoredCandidate = {
        id: this.newId('tc'),
        jobId: job.id,
        leaseId: header.leaseId,
        attempt: again.attempt,
        sha256: stored.sha256,
        sizeBytes: stored.sizeBytes,
        metrics: {},
        uploadedAtMs: clock.now(),
      };
      await tx.saveCandidate(candidate);
      return candidate;
    });
  }

  /** The attempt produced this candidate: the job goes to evaluation (judged in the background). */
  async complete(leaseId: string, candidateId: string, metrics: Record<string, number>, tokenId: string): Promise<TrainingJob> {
    const checked = parseOrRefuse(finiteMetrics, metrics, 'candidate metrics');
    const { repository, clock } = this.options;
    const job = await repository.transaction(async (tx) => {
      const current = await this.jobOfLease(tx, leaseId, tokenId);
      // A lost lease is the answer that matters to the worker, whatever candidate it names.
      assertLeaseHeld(current, leaseId, clock.now());
      const stored = await tx.candidate(candidateId);
      if (!stored || stored.leaseId !== leaseId) {
        throw new DriftlineError('TRAINING_CANDIDATE_NOT_FOUND', `lease ${leaseId} uploaded no candidate ${candidateId}`, {
          details: { leaseId, candidateId },
        });
      }
      const { jobId: _job, leaseId: _lease, uploadedAtMs: _at, ...candidate } = { ...stored, metrics: checked };
      const transition = completeAttempt(current, leaseId, candidate, clock.now());
      await tx.update(transition.job);
      await this.record(tx, transition, { actor: tokenId, clientRequestId: '' });
      await this.endAttemptRecord(tx, current, 'completed', '');
      return transition.job;
    });
    this.changed(job.id);
    this.evaluateInBackground(job.id);
    return job;
  }

  /** The attempt failed: queued again while attempts are left, else failed. A cancelled job stays as it is. */
  async fail(leaseId: string, errorCode: string, message: string, tokenId: string): Promise<TrainingJob> {
    if (!ERROR_CODE_TEXT.test(errorCode)) {
      throw new DriftlineError('REQUEST_INVALID', 'error_code must be a stable code such as TRAINER_CRASHED (upper case, digits, underscores)', {
        details: { errorCode: errorCode.slice(0, 80) },
      });
    }
    const { repository, clock } = this.options;
    const job = await repository.transaction(async (tx) => {
      const current = await this.jobOfLease(tx, leaseId, tokenId);
      if (current.state === 'cancelled' && current.lease?.id === leaseId) return current;
      const transition = failAttempt(current, leaseId, errorCode, message.slice(0, 2000), clock.now());
      await tx.update(transition.job);
      await this.record(tx, transition, { actor: tokenId, clientRequestId: '' });
      await this.endAttemptRecord(tx, current, 'failed', errorCode);
      return transition.job;
    });
    this.changed(job.id);
    return job;
  }

  // ── the engine's own work ────────────────────────────────────────────────

  /**
   * One sweep: re-queues (or fails) every job whose lease expired by the clock, and judges
   * candidates left in evaluation by a control plane that stopped before judging them.
   */
  async sweep(): Promise<void> {
    const { repository, clock, logger } = this.options;
    for (const job of await repository.inStates(LEASED_STATES, 10_000)) {
      if (!job.lease || job.lease.expiresAtMs > clock.now()) continue;
      try {
        const moved = await repository.transaction(async (tx) => {
          const current = await this.require(tx, job.id);
          const transition = expireLease(current, clock.now());
          if (transition.job === current) return false;
          await tx.update(transition.job);
          await this.record(tx, transition, SYSTEM_ACTOR);
          await this.endAttemptRecord(tx, current, 'lease-expired', 'TRAINING_LEASE_LOST');
          return true;
        });
        if (moved) this.changed(job.id);
      } catch (err) {
        logger.error({ err, job: job.id }, 'training sweep failed for a job');
      }
    }
    for (const job of await repository.inStates(['evaluating'], 1000)) this.evaluateInBackground(job.id);
  }

  /** Waits for the evaluations in flight (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.evaluations.size > 0) await Promise.allSettled([...this.evaluations.values()]);
  }

  private evaluateInBackground(jobId: string): void {
    if (this.evaluations.has(jobId)) return;
    const run = this.evaluate(jobId)
      .catch((err: unknown) => this.options.logger.error({ err, job: jobId }, 'training evaluation could not be recorded'))
      .finally(() => this.evaluations.delete(jobId));
    this.evaluations.set(jobId, run);
  }

  /** The gate: the evaluator measures, the pure judge decides, a passing candidate goes to the sink. */
  private async evaluate(jobId: string): Promise<void> {
    const { evaluator, artifacts, clock, limits, logger, sink } = this.options;
    const job = await this.get(jobId);
    if (job.state !== 'evaluating' || !job.candidate) return;
    let transition: TrainingTransition;
    try {
      const { splits } = await evaluator.evaluate({
        jobId,
        model: job.spec.model,
        parentVersion: job.spec.baseVersion,
        datasetId: job.spec.datasetId,
        focusSelector: job.spec.trigger?.cohortSelector ?? '',
        candidate: { sha256: job.candidate.sha256, path: artifacts.pathOf(job.candidate.sha256) },
      });
      const report = judgeCandidate(job.spec.gates.map(parseEvaluationGate), splits, { minSplitRows: limits.minSplitRows }, clock.now());
      transition = judge(job, report, clock.now());
    } catch (err) {
      const error = asDriftlineError(err, 'TRAINING_EVALUATION_FAILED');
      logger.warn({ err, job: jobId }, 'training candidate could not be evaluated');
      // Whatever the evaluator threw, the job's code says the gate failed; the cause stays in the reason.
      transition = evaluationFailed(job, 'TRAINING_EVALUATION_FAILED', `${error.code}: ${error.message}`, clock.now());
    }
    // Marked before the commit that watchers hear: none of them sees this succeeded job without its version.
    if (sink && transition.job.state === 'succeeded') this.registering.add(jobId);
    try {
      const committed = await this.commitIfStill(jobId, 'evaluating', (current) => (current.state === 'evaluating' ? transition : undefined));
      if (!committed || committed.state !== 'succeeded' || !sink) return;
      try {
        const { version } = await sink.accept({ job: committed, candidate: committed.candidate!, report: committed.evaluation! });
        await this.commitIfStill(jobId, 'succeeded', (current) => recordResultVersion(current, version, clock.now()));
      } catch (err) {
        const error = asDriftlineError(err);
        logger.error({ err, job: jobId }, 'the accepted training candidate could not be registered');
        await this.commitIfStill(jobId, 'succeeded', (current) =>
          current.resultVersion === 0 ? registrationFailed(current, error.code, `${error.code}: ${error.message}`.slice(0, 2000), clock.now()) : undefined,
        );
      }
    } finally {
      if (this.registering.delete(jobId)) this.changed(jobId);
    }
  }

  /** Commits a transition computed from the job as stored now, when it is still in `state`. */
  private async commitIfStill(
    jobId: string,
    state: TrainingJobState,
    next: (job: TrainingJob) => TrainingTransition | undefined,
  ): Promise<TrainingJob | undefined> {
    const job = await this.options.repository.transaction(async (tx) => {
      const current = await this.require(tx, jobId);
      if (current.state !== state) return undefined;
      const transition = next(current);
      if (!transition) return undefined;
      await tx.update(transition.job);
      await this.record(tx, transition, SYSTEM_ACTOR);
      return transition.job;
    });
    if (job) this.changed(jobId);
    return job;
  }

  private parseSpec(input: StartTrainingJobInput): TrainingJobSpec {
    const v = parseOrRefuse(startSchema, input, 'training job');
    const model = assertModelName(v.model);
    let hyperparameters: unknown = {};
    if (v.hyperparametersJson?.trim()) {
      try {
        hyperparameters = JSON.parse(v.hyperparametersJson);
      } catch (err) {
        throw new DriftlineError('REQUEST_INVALID', 'hyperparameters must be a JSON object', { cause: err });
      }
    }
    if (hyperparameters === null || typeof hyperparameters !== 'object' || Array.isArray(hyperparameters)) {
      throw new DriftlineError('REQUEST_INVALID', 'hyperparameters must be a JSON object');
    }
    const { limits } = this.options;
    return {
      model,
      baseVersion: v.baseVersion,
      datasetId: v.datasetId,
      trainer: v.trainer,
      hyperparametersJson: JSON.stringify(hyperparameters),
      resources: resourcesSchema.parse(v.resources ?? {}),
      maxDurationMs: v.maxDurationMs || limits.defaultMaxDurationMs,
      maxAttempts: v.maxAttempts || limits.defaultMaxAttempts,
      gates: normalizeEvaluationGates(v.gates ?? []),
      ...(v.trigger ? { trigger: v.trigger } : {}),
    };
  }

  private async record(tx: TrainingJobTransaction, transition: TrainingTransition, by: TrainingActor): Promise<void> {
    const atMs = this.options.clock.now();
    for (const entry of transition.audit) {
      await tx.appendAudit({ ...entry, jobId: transition.job.id, atMs, actor: by.actor, clientRequestId: by.clientRequestId });
      this.options.logger.info(
        { job: transition.job.id, action: entry.action, state: entry.toState, attempt: entry.attempt, reason: entry.reason || undefined, by: by.actor },
        'training job',
      );
    }
  }

  private async endAttemptRecord(tx: TrainingJobTransaction, before: TrainingJob, outcome: string, errorCode: string): Promise<void> {
    const lease = before.lease;
    if (!lease || !LEASED_STATES.includes(before.state)) return;
    const record: TrainingAttemptRecord = {
      jobId: before.id,
      attempt: lease.attempt,
      leaseId: lease.id,
      workerId: lease.workerId,
      leasedAtMs: lease.leasedAtMs,
      endedAtMs: this.options.clock.now(),
      outcome,
      errorCode,
    };
    await tx.saveAttempt(record);
  }

  /** The job a lease belongs to, refusing a lease this worker token never held. */
  private async jobOfLease(reads: Pick<TrainingJobReads, 'attemptByLease' | 'worker' | 'get'>, leaseId: string, tokenId: string): Promise<TrainingJob> {
    const attempt = await reads.attemptByLease(leaseId);
    const worker = attempt ? await reads.worker(attempt.workerId) : undefined;
    if (!attempt || !worker || worker.tokenId !== tokenId) {
      throw new DriftlineError('TRAINING_LEASE_LOST', `no lease ${leaseId} is held by this worker`, { details: { leaseId } });
    }
    return this.require(reads, attempt.jobId);
  }

  private async replayed(
    reads: Pick<TrainingJobReads, 'findRequest' | 'get'>,
    by: TrainingActor,
    action: string,
    fingerprint: string,
  ): Promise<TrainingJob | undefined> {
    if (!by.clientRequestId) return undefined;
    const stored = await reads.findRequest(by.clientRequestId);
    if (!stored) return undefined;
    if (stored.action !== action || stored.fingerprint !== fingerprint) {
      throw new DriftlineError('REQUEST_ID_REUSED', `client request id ${by.clientRequestId} was already used for another request`, {
        details: { clientRequestId: by.clientRequestId, action: stored.action },
      });
    }
    return this.require(reads, stored.jobId);
  }

  private async require(reads: Pick<TrainingJobReads, 'get'>, id: string): Promise<TrainingJob> {
    const job = await reads.get(id);
    if (!job) throw new DriftlineError('TRAINING_JOB_NOT_FOUND', `training job ${id} does not exist`, { details: { id } });
    return job;
  }

  private changed(jobId: string): void {
    for (const listener of this.listeners) {
      try {
        listener(jobId);
      } catch (err) {
        this.options.logger.warn({ err }, 'training job listener failed');
      }
    }
  }
}

function parseOrRefuse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(value)'}: ${i.message}`);
    throw new DriftlineError('REQUEST_INVALID', `invalid ${what}: ${problems.join('; ')}`, { details: { problems } });
  }
  return result.data;
}

function encodePageToken(job: TrainingJob): string {
  return Buffer.from(JSON.stringify({ c: job.createdAtMs, i: job.id })).toString('base64url');
}

function decodePageToken(token: string): { createdAtMs: number; id: string } {
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { c?: unknown; i?: unknown };
    if (typeof parsed.c === 'number' && typeof parsed.i === 'string') return { createdAtMs: parsed.c, id: parsed.i };
  } catch {
    // Refused below, like any other token this server did not hand out.
  }
  throw new DriftlineError('REQUEST_INVALID', 'page_token is not one this server handed out', { details: { pageToken: token.slice(0, 100) } });
}
