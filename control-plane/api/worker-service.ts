import type { ServerReadableStream } from '@grpc/grpc-js';
import { z } from 'zod';
import { DriftlineError } from '../../common/errors.js';
import type { TrainingLease, UploadCandidateRequest, UploadCandidateResponse, WorkerServiceServer } from '../../common/proto/driftline/v1/learning.js';
import type { LeaseGrant, TrainingEngine } from '../training/engine.js';
import { rechunk } from './byte-chunks.js';
import { clientStreaming, serverStreaming, unary, validate, type Caller, type RpcContext } from './rpc.js';
import { jobToWire } from './training-service.js';

export interface WorkerApiDeps {
  engine: TrainingEngine;
  /** How long a worker that found nothing to lease waits before asking again (training.workerPollInterval). */
  pollIntervalMs: number;
}

/** Download chunks: well under grpc-js's 4 MiB message limit. */
export const DOWNLOAD_CHUNK_BYTES = 256 * 1024;
/** Heartbeat lines a request may carry; the engine keeps the last 200 of them. */
const MAX_HEARTBEAT_LINES = 1000;

const leaseId = z.string().min(1).max(64);
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'must be a lowercase hex sha256');

const heartbeatRequest = z.object({
  leaseId,
  logLines: z.array(z.string().max(64 * 1024)).max(MAX_HEARTBEAT_LINES),
});
const downloadRequest = z.object({ leaseId, sha256 });
const completeRequest = z.object({ leaseId, candidateId: z.string().min(1).max(64) });
const failRequest = z.object({ leaseId, errorCode: z.string().max(64), message: z.string().max(64 * 1024) });

/**
 * WorkerService: what `driftline worker` calls, with a worker token and only with one (rpc.ts's
 * 'worker' access: an operator token, admin included, is ROLE_INSUFFICIENT here, and a worker
 * token is ROLE_INSUFFICIENT everywhere else). A worker is bound to the token that registered
 * it: another token cannot lease as it or touch its leases (TRAINING_WORKER_NOT_FOUND,
 * TRAINING_LEASE_LOST).
 */
export function workerService({ engine, pollIntervalMs }: WorkerApiDeps, ctx: RpcContext): WorkerServiceServer {
  const token = (caller: Caller): string => caller!.id;
  return {
    registerWorker: unary(ctx, 'RegisterWorker', 'worker', async (req, caller) => {
      const worker = await engine.registerWorker(
        {
          name: req.name,
          gpus: req.gpus.map((g) => ({ name: g.name, memoryBytes: g.memoryBytes })),
          cpu: req.cpu,
          memoryBytes: req.memoryBytes,
          trainers: req.trainers,
          version: req.version,
        },
        token(caller),
      );
      ctx.logger.info(
        { worker: worker.id, name: worker.name, trainers: worker.trainers, gpus: worker.gpus.length, token: caller?.id },
        'training worker registered',
      );
      return { workerId: worker.id, heartbeatIntervalMs: heartbeatIntervalOf(engine.limits.leaseTtlMs), pollIntervalMs };
    }),
    leaseTrainingJob: unary(ctx, 'LeaseTrainingJob', 'worker', async (req, caller) => {
      const grant = await engine.lease(validate(z.string().min(1).max(64), req.workerId), token(caller));
      return { lease: grant ? leaseToWire(grant) : undefined };
    }),
    heartbeatTrainingJob: unary(ctx, 'HeartbeatTrainingJob', 'worker', async (req, caller) => {
      const r = validate(heartbeatRequest, req);
      const progress = req.progress
        ? { epoch: req.progress.epoch, loss: req.progress.hasLoss ? req.progress.loss : null, metrics: { ...req.progress.metrics } }
        : null;
      return engine.heartbeat(r.leaseId, { progress, logLines: r.logLines }, token(caller));
    }),
    downloadArtifact: serverStreaming(ctx, 'DownloadArtifact', 'worker', async (call, caller) => {
      const r = validate(downloadRequest, call.request);
      const bytes = await engine.download(r.leaseId, r.sha256, token(caller));
      for await (const chunk of rechunk(bytes, DOWNLOAD_CHUNK_BYTES)) {
        if (call.cancelled) return;
        // Backpressure: a slow worker holds the file stream, not the server's memory; a worker that leaves releases it.
        if (!call.write({ chunk }))
          await new Promise<void>((resolve) => {
            const done = (): void => {
              call.off('drain', done);
              call.off('cancelled', done);
              resolve();
            };
            call.once('drain', done);
            call.once('cancelled', done);
          });
      }
      call.end();
    }),
    uploadCandidate: clientStreaming(ctx, 'UploadCandidate', 'worker', async (call, caller) => receiveCandidate(engine, call, token(caller))),
    completeTrainingAttempt: unary(ctx, 'CompleteTrainingAttempt', 'worker', async (req, caller) => {
      const r = validate(completeRequest, req);
      const job = await engine.complete(r.leaseId, r.candidateId, { ...req.metrics }, token(caller));
      ctx.logger.info({ job: job.id, attempt: job.attempt, candidate: r.candidateId, token: caller?.id }, 'training attempt completed');
      return { job: jobToWire(job) };
    }),
    failTrainingAttempt: unary(ctx, 'FailTrainingAttempt', 'worker', async (req, caller) => {
      const r = validate(failRequest, req);
      const job = await engine.fail(r.leaseId, r.errorCode, r.message, token(caller));
      ctx.logger.info({ job: job.id, attempt: job.attempt, code: r.errorCode, state: job.state, token: caller?.id }, 'training attempt failed');
      return { job: jobToWire(job) };
    }),
  };
}

/** A third of the lease: two heartbeats may be lost before the lease expires. */
export const heartbeatIntervalOf = (leaseTtlMs: number): number => Math.max(1, Math.floor(leaseTtlMs / 3));

/** The header, then the chunks handed to the engine as they arrive (it caps, hashes and stores them). */
async function receiveCandidate(
  engine: TrainingEngine,
  call: ServerReadableStream<UploadCandidateRequest, UploadCandidateResponse>,
  tokenId: string,
): Promise<UploadCandidateResponse> {
  const messages = call[Symbol.asyncIterator]() as AsyncIterator<UploadCandidateRequest>;
  const first = await messages.next();
  if (first.done || first.value.part?.$case !== 'header') {
    throw new DriftlineError('REQUEST_INVALID', 'a candidate upload starts with exactly one header message');
  }
  const header = first.value.part.value;
  validate(z.object({ leaseId, sha256, sizeBytes: z.number().int().positive() }), header);
  async function* chunks(): AsyncGenerator<Uint8Array> {
    for (let next = await messages.next(); !next.done; next = await messages.next()) {
      const part = next.value.part;
      if (part?.$case !== 'chunk') throw new DriftlineError('REQUEST_INVALID', 'after the header a candidate upload carries only chunks');
      yield part.value;
    }
  }
  const candidate = await engine.uploadCandidate({ leaseId: header.leaseId, sizeBytes: header.sizeBytes, sha256: header.sha256 }, chunks(), tokenId);
  return { candidateId: candidate.id, sha256: candidate.sha256, sizeBytes: candidate.sizeBytes };
}

function leaseToWire(grant: LeaseGrant): TrainingLease {
  const { spec } = grant;
  return {
    jobId: grant.jobId,
    attempt: grant.attempt,
    leaseId: grant.leaseId,
    leaseTtlMs: grant.leaseTtlMs,
    leaseExpiresAtMs: grant.leaseExpiresAtMs,
    model: spec.model,
    baseVersion: spec.baseVersion,
    baseModel: { ...grant.baseModel },
    datasetId: spec.datasetId,
    dataset: { ...grant.dataset },
    trainer: spec.trainer,
    hyperparametersJson: spec.hyperparametersJson,
    maxDurationSeconds: Math.round(spec.maxDurationMs / 1000),
    maxCandidateBytes: grant.maxCandidateBytes,
    resources: { ...spec.resources },
  };
}
