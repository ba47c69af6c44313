import type { TrainingEngine } from '../../control-plane/training/engine.js';
import type { WorkerApi, WorkerLease } from '../../worker/worker-api.js';

/**
 * The worker's port over a TrainingEngine in this process (the same calls WorkerService makes
 * for a worker token): the worker loop runs against the real engine and a real SQLite file
 * without a gRPC server in between.
 */
export function inProcessWorkerApi(
  engine: TrainingEngine,
  options: { tokenId?: string; heartbeatIntervalMs?: number; pollIntervalMs?: number } = {},
): WorkerApi {
  const tokenId = options.tokenId ?? 'tok_worker';
  return {
    async register(registration) {
      const worker = await engine.registerWorker(registration, tokenId);
      return {
        workerId: worker.id,
        heartbeatIntervalMs: options.heartbeatIntervalMs ?? Math.floor(engine.limits.leaseTtlMs / 3),
        pollIntervalMs: options.pollIntervalMs ?? 1000,
      };
    },
    async lease(workerId) {
      const grant = await engine.lease(workerId, tokenId);
      if (!grant) return undefined;
      const lease: WorkerLease = {
        jobId: grant.jobId,
        attempt: grant.attempt,
        leaseId: grant.leaseId,
        leaseTtlMs: grant.leaseTtlMs,
        leaseExpiresAtMs: grant.leaseExpiresAtMs,
        model: grant.spec.model,
        baseVersion: grant.spec.baseVersion,
        baseModel: grant.baseModel,
        datasetId: grant.spec.datasetId,
        dataset: grant.dataset,
        trainer: grant.spec.trainer,
        hyperparametersJson: grant.spec.hyperparametersJson,
        maxDurationMs: grant.spec.maxDurationMs,
        maxCandidateBytes: grant.maxCandidateBytes,
        resources: grant.spec.resources,
      };
      return lease;
    },
    heartbeat(leaseId, report) {
      return engine.heartbeat(leaseId, report, tokenId);
    },
    async *download(leaseId, sha256) {
      yield* await engine.download(leaseId, sha256, tokenId);
    },
    async upload(leaseId, declared, chunks) {
      const candidate = await engine.uploadCandidate({ leaseId, ...declared }, chunks, tokenId);
      return { candidateId: candidate.id };
    },
    async complete(leaseId, candidateId, metrics) {
      await engine.complete(leaseId, candidateId, metrics, tokenId);
    },
    async fail(leaseId, errorCode, message) {
      await engine.fail(leaseId, errorCode, message, tokenId);
    },
    close() {},
  };
}
