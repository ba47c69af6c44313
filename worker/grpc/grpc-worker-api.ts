/**
 * The worker's port over the control plane's gRPC WorkerService, through the typed client in
 * client/ (bearer token, TLS, deadlines on unary calls, refusals as DriftlineErrors with the
 * control plane's stable code). Downloads and the upload are streams without a deadline: a
 * dataset can take longer than any fixed one.
 */
import { createOperatorClient, type OperatorClientOptions } from '../../client/operator-client.js';
import { WorkerServiceService, type TrainingLease } from '../../common/proto/driftline/v1/learning.js';
import { DriftlineError } from '../../common/errors.js';
import type { WorkerApi, WorkerLease } from '../worker-api.js';

/** What a server that leaves an interval at 0 gets. */
const DEFAULT_HEARTBEAT_INTERVAL_MS = 10_000;
const DEFAULT_POLL_INTERVAL_MS = 5_000;
const UPLOAD_CHUNK_BYTES = 64 * 1024;

function leaseOf(lease: TrainingLease): WorkerLease {
  if (!lease.baseModel || !lease.dataset) {
    throw new DriftlineError('PAYLOAD_MALFORMED', `the lease of training job ${lease.jobId} names no base model or dataset artifact`);
  }
  return {
    jobId: lease.jobId,
    attempt: lease.attempt,
    leaseId: lease.leaseId,
    leaseTtlMs: lease.leaseTtlMs,
    leaseExpiresAtMs: lease.leaseExpiresAtMs,
    model: lease.model,
    baseVersion: lease.baseVersion,
    baseModel: { sha256: lease.baseModel.sha256, sizeBytes: lease.baseModel.sizeBytes },
    datasetId: lease.datasetId,
    dataset: { sha256: lease.dataset.sha256, sizeBytes: lease.dataset.sizeBytes },
    trainer: lease.trainer,
    hyperparametersJson: lease.hyperparametersJson,
    maxDurationMs: lease.maxDurationSeconds * 1000,
    maxCandidateBytes: lease.maxCandidateBytes,
    resources: lease.resources ?? { gpus: 0, gpuMemoryBytes: 0, cpu: 0, memoryBytes: 0 },
  };
}

/** Re-chunks a byte stream to at most UPLOAD_CHUNK_BYTES a message (well under gRPC's 4 MiB limit). */
async function* bounded(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  for await (const chunk of chunks) {
    for (let at = 0; at < chunk.byteLength; at += UPLOAD_CHUNK_BYTES) yield chunk.subarray(at, at + UPLOAD_CHUNK_BYTES);
  }
}

export function grpcWorkerApi(options: OperatorClientOptions): WorkerApi {
  const client = createOperatorClient(options);
  const service = client.service(WorkerServiceService);
  return {
    async register(registration) {
      const answer = await service.registerWorker(registration);
      return {
        workerId: answer.workerId,
        heartbeatIntervalMs: answer.heartbeatIntervalMs || DEFAULT_HEARTBEAT_INTERVAL_MS,
        pollIntervalMs: answer.pollIntervalMs || DEFAULT_POLL_INTERVAL_MS,
      };
    },
    async lease(workerId) {
      const { lease } = await service.leaseTrainingJob({ workerId });
      return lease ? leaseOf(lease) : undefined;
    },
    async heartbeat(leaseId, report) {
      const p = report.progress;
      const answer = await service.heartbeatTrainingJob({
        leaseId,
        progress: p ? { epoch: p.epoch, loss: p.loss ?? 0, hasLoss: p.loss !== null, metrics: p.metrics } : undefined,
        logLines: report.logLines,
      });
      return { cancel: answer.cancel };
    },
    async *download(leaseId, sha256) {
      for await (const message of service.downloadArtifact({ leaseId, sha256 })) yield message.chunk;
    },
    async upload(leaseId, declared, chunks) {
      const answer = await client.uploadCandidate({ leaseId, sizeBytes: declared.sizeBytes, sha256: declared.sha256 }, bounded(chunks));
      return { candidateId: answer.candidateId };
    },
    async complete(leaseId, candidateId, metrics) {
      await service.completeTrainingAttempt({ leaseId, candidateId, metrics });
    },
    async fail(leaseId, errorCode, message) {
      await service.failTrainingAttempt({ leaseId, errorCode, message });
    },
    close() {
      client.close();
    },
  };
}
