import { z } from 'zod';
import type {
  EvaluationReport as WireReport,
  TrainingJob as WireJob,
  TrainingLogLine as WireLogLine,
  TrainingServiceServer,
} from '../../common/proto/driftline/v1/learning.js';
import type { TrainingEngine } from '../training/engine.js';
import type { ClassificationMetrics, EvaluationReport } from '../training/evaluation.js';
import { LEASED_STATES, type TrainingJob } from '../training/job-state-machine.js';
import type { TrainingLogLine } from '../training/ports.js';
import { serverStreaming, streamWatch, unary, validate, type Caller, type RpcContext } from './rpc.js';

export interface TrainingApiDeps {
  engine: TrainingEngine;
  /** Aborted when the control plane stops: open watch streams end (the client sees the stream end, not an error). */
  shutdown?: AbortSignal | undefined;
}

const MAX_PAGE = 1000;
const MAX_LOG_TAIL = 100_000;

const jobId = z.string().min(1).max(64);
const requestId = z.string().max(128);

const startRequest = z.object({
  model: z.string().min(1).max(128),
  baseVersion: z.number().int().min(1, 'name the base version (1 or more)'),
  clientRequestId: requestId,
  datasetId: z.string().regex(/^[0-9a-f]{64}$/, 'must be a dataset id (64 lowercase hex)'),
  trainer: z.string().min(1).max(64),
  hyperparametersJson: z.string().max(65_536),
  maxDurationSeconds: z
    .number()
    .int()
    .min(0)
    .max(7 * 86_400),
  maxAttempts: z.number().int().min(0).max(100),
  gates: z.array(z.string().max(128)).max(20),
});
const listRequest = z.object({
  model: z.string().max(128),
  state: z.string().max(32),
  pageSize: z.number().int().min(0).max(MAX_PAGE),
  pageToken: z.string().max(512),
});
const cancelRequest = z.object({ id: jobId, clientRequestId: requestId, reason: z.string().max(2000) });
const logsRequest = z.object({ id: jobId, attempt: z.number().int().min(0).max(100), tail: z.number().int().min(0).max(MAX_LOG_TAIL) });

/** TrainingService: operators start and cancel jobs, viewers read them, their logs, and watch them. */
export function trainingService({ engine, shutdown }: TrainingApiDeps, ctx: RpcContext): TrainingServiceServer {
  const actor = (caller: Caller, clientRequestId: string) => ({ actor: caller?.id ?? 'anonymous', clientRequestId });
  return {
    startTrainingJob: unary(ctx, 'StartTrainingJob', 'operator', async (req, caller) => {
      const r = validate(startRequest, req);
      const job = await engine.start(
        {
          model: r.model,
          baseVersion: r.baseVersion,
          datasetId: r.datasetId,
          trainer: r.trainer,
          hyperparametersJson: r.hyperparametersJson,
          ...(req.resources
            ? {
                resources: {
                  gpus: req.resources.gpus,
                  gpuMemoryBytes: req.resources.gpuMemoryBytes,
                  cpu: req.resources.cpu,
                  memoryBytes: req.resources.memoryBytes,
                },
              }
            : {}),
          maxDurationMs: r.maxDurationSeconds * 1000,
          maxAttempts: r.maxAttempts,
          gates: r.gates,
        },
        actor(caller, r.clientRequestId),
      );
      ctx.logger.info({ job: job.id, model: job.spec.model, base: job.spec.baseVersion, dataset: job.spec.datasetId, by: caller?.id }, 'training job started');
      return jobToWire(job);
    }),
    getTrainingJob: unary(ctx, 'GetTrainingJob', 'viewer', async (req) => jobToWire(await engine.get(validate(jobId, req.id)))),
    listTrainingJobs: unary(ctx, 'ListTrainingJobs', 'viewer', async (req) => {
      const r = validate(listRequest, req);
      const page = await engine.list({ model: r.model, state: r.state, pageSize: r.pageSize, pageToken: r.pageToken });
      return { jobs: page.jobs.map(jobToWire), nextPageToken: page.nextPageToken };
    }),
    cancelTrainingJob: unary(ctx, 'CancelTrainingJob', 'operator', async (req, caller) => {
      const r = validate(cancelRequest, req);
      const job = await engine.cancel(r.id, actor(caller, r.clientRequestId), r.reason);
      ctx.logger.info({ job: job.id, by: caller?.id }, 'training job cancelled');
      return jobToWire(job);
    }),
    getTrainingJobLogs: unary(ctx, 'GetTrainingJobLogs', 'viewer', async (req) => {
      const r = validate(logsRequest, req);
      const lines = await engine.logs(r.id, { ...(r.attempt > 0 ? { attempt: r.attempt } : {}), ...(r.tail > 0 ? { tail: r.tail } : {}) });
      return { lines: lines.map(logLineToWire) };
    }),
    watchTrainingJob: serverStreaming(ctx, 'WatchTrainingJob', 'viewer', async (call) => {
      const id = validate(jobId, call.request.id);
      // An unknown job is the call's status, before anything is streamed.
      await engine.get(id);
      await streamWatch(
        call,
        shutdown,
        (signal) => engine.watch(id, { signal }),
        (update) => ({ job: jobToWire(update.job), logLines: update.logLines.map(logLineToWire) }),
      );
    }),
  };
}

export function jobToWire(job: TrainingJob): WireJob {
  const { spec } = job;
  const leased = job.lease !== null && LEASED_STATES.includes(job.state);
  return {
    id: job.id,
    model: spec.model,
    state: job.state,
    baseVersion: spec.baseVersion,
    datasetId: spec.datasetId,
    trainer: spec.trainer,
    hyperparametersJson: spec.hyperparametersJson,
    resources: { ...spec.resources },
    maxDurationSeconds: Math.round(spec.maxDurationMs / 1000),
    maxAttempts: spec.maxAttempts,
    attempt: job.attempt,
    gates: [...spec.gates],
    createdAtMs: job.createdAtMs,
    updatedAtMs: job.updatedAtMs,
    errorCode: job.errorCode,
    reason: job.reason,
    workerId: leased ? job.lease!.workerId : '',
    leaseExpiresAtMs: leased ? job.lease!.expiresAtMs : 0,
    progress: job.progress
      ? { epoch: job.progress.epoch, loss: job.progress.loss ?? 0, hasLoss: job.progress.loss !== null, metrics: { ...job.progress.metrics } }
      : undefined,
    candidate: job.candidate
      ? {
          id: job.candidate.id,
          sha256: job.candidate.sha256,
          sizeBytes: job.candidate.sizeBytes,
          attempt: job.candidate.attempt,
          metrics: { ...job.candidate.metrics },
        }
      : undefined,
    evaluation: job.evaluation ? reportToWire(job.evaluation) : undefined,
    resultVersion: job.resultVersion,
    cancelReason: job.cancelReason,
    trigger: spec.trigger
      ? {
          kind: spec.trigger.kind,
          key: spec.trigger.key,
          clientRequestId: spec.trigger.clientRequestId,
          policyVersion: spec.trigger.policyVersion,
          driftEventId: spec.trigger.driftEventId,
          cohort: spec.trigger.cohort,
          cohortSelector: spec.trigger.cohortSelector,
          datasetSelector: spec.trigger.datasetSelector,
          replayedDatasetId: spec.trigger.replayedDatasetId,
        }
      : undefined,
    release: job.release
      ? {
          state: job.release.state,
          version: job.release.version,
          audience: job.release.audience,
          rolloutId: job.release.rolloutId,
          reason: job.release.reason,
          errorCode: job.release.errorCode,
          updatedAtMs: job.release.updatedAtMs,
        }
      : undefined,
  };
}

export function reportToWire(report: EvaluationReport): WireReport {
  return {
    verdict: report.verdict,
    reason: report.reason,
    gates: report.gates.map((g) => ({
      gate: g.gate,
      verdict: g.verdict,
      value: g.value ?? 0,
      hasValue: g.value !== null,
      threshold: g.threshold,
      detail: g.detail,
    })),
    splits: report.splits.map((s) => ({ split: s.split, candidate: metricsToWire(s.candidate), parent: metricsToWire(s.parent) })),
    evaluatedAtMs: report.evaluatedAtMs,
  };
}

const metricsToWire = (m: ClassificationMetrics) => ({
  rows: m.rows,
  accuracy: m.accuracy,
  macroF1: m.macroF1,
  perClassRecall: [...m.perClassRecall],
  logLoss: m.logLoss,
  expectedCalibrationError: m.expectedCalibrationError,
  perClassSupport: [...m.perClassSupport],
  latencyP50Ms: m.latencyP50Ms ?? 0,
  latencyP95Ms: m.latencyP95Ms ?? 0,
});

const logLineToWire = (line: TrainingLogLine): WireLogLine => ({ attempt: line.attempt, atMs: line.atMs, text: line.text });
