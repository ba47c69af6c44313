/**
 * The port a GPU worker's loop talks to: WorkerService's calls in the worker's own terms.
 * Adapters: worker/grpc/grpc-worker-api.ts (the control plane over gRPC, what `driftline worker`
 * uses) and, in tests, one over an in-process TrainingEngine. Every refusal is a DriftlineError
 * with the control plane's stable code (TRAINING_LEASE_LOST, TRAINING_WORKER_NOT_FOUND, ...).
 */
import type { WorkerResources } from './resources.js';

export type { WorkerGpu, WorkerResources } from './resources.js';

export interface WorkerRegistration extends WorkerResources {
  name: string;
  /** Trainer names this worker runs. */
  trainers: string[];
  version: string;
}

export interface WorkerSession {
  workerId: string;
  /** How often to heartbeat a lease. */
  heartbeatIntervalMs: number;
  /** How long to wait after a lease call that found nothing. */
  pollIntervalMs: number;
}

/** An artifact a lease names, downloaded by content hash and verified. */
export interface LeasedArtifact {
  sha256: string;
  sizeBytes: number;
}

export interface WorkerLease {
  jobId: string;
  attempt: number;
  leaseId: string;
  leaseTtlMs: number;
  leaseExpiresAtMs: number;
  model: string;
  baseVersion: number;
  baseModel: LeasedArtifact;
  datasetId: string;
  /** The dataset snapshot as one driftline-dataset/1 tar. */
  dataset: LeasedArtifact;
  trainer: string;
  hyperparametersJson: string;
  /** 0: the worker's own limit. */
  maxDurationMs: number;
  maxCandidateBytes: number;
  resources: { gpus: number; gpuMemoryBytes: number; cpu: number; memoryBytes: number };
}

export interface WorkerProgress {
  epoch: number;
  /** null: the trainer reported none yet. */
  loss: number | null;
  metrics: Record<string, number>;
}

export interface HeartbeatReport {
  progress: WorkerProgress | null;
  /** Trainer output since the last heartbeat. */
  logLines: string[];
}

export interface WorkerApi {
  register(registration: WorkerRegistration): Promise<WorkerSession>;
  /** undefined: nothing this worker can run is queued. */
  lease(workerId: string): Promise<WorkerLease | undefined>;
  /** cancel: the job was cancelled, stop the trainer. TRAINING_LEASE_LOST: stop, upload nothing. */
  heartbeat(leaseId: string, report: HeartbeatReport): Promise<{ cancel: boolean }>;
  /** The bytes of an artifact the lease names; the caller verifies them. */
  download(leaseId: string, sha256: string): AsyncIterable<Uint8Array>;
  upload(leaseId: string, declared: LeasedArtifact, chunks: AsyncIterable<Uint8Array>): Promise<{ candidateId: string }>;
  complete(leaseId: string, candidateId: string, metrics: Record<string, number>): Promise<void>;
  fail(leaseId: string, errorCode: string, message: string): Promise<void>;
  close(): void;
}
