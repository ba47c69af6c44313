import type { EvaluationReport, SplitEvaluation } from './evaluation.js';
import type { TrainingAuditEntry, TrainingCandidate, TrainingJob, TrainingJobState } from './job-state-machine.js';

/**
 * The small async interfaces the training engine is built on. Adapters implement them over the
 * store (control-plane/store/), the registry's artifacts, the datasets and onnxruntime.
 */

export interface TrainingAuditRecord extends TrainingAuditEntry {
  seq: number;
  jobId: string;
  atMs: number;
  /** Operator or worker token id, or "system" for the engine's own decisions (the sweep, the gate). */
  actor: string;
  clientRequestId: string;
}

export interface StoredTrainingRequest {
  clientRequestId: string;
  action: string;
  /** What was asked, so a reused id with a different request is refused. */
  fingerprint: string;
  jobId: string;
}

export interface WorkerGpu {
  name: string;
  memoryBytes: number;
}

/** A registered worker: what it offers. Bound to the worker token that registered it. */
export interface TrainingWorker {
  id: string;
  name: string;
  tokenId: string;
  gpus: WorkerGpu[];
  cpu: number;
  memoryBytes: number;
  trainers: string[];
  version: string;
  registeredAtMs: number;
  lastSeenMs: number;
}

/** One attempt's lease as recorded (also after it ended), so a lease id finds its job. */
export interface TrainingAttemptRecord {
  jobId: string;
  attempt: number;
  leaseId: string;
  workerId: string;
  leasedAtMs: number;
  /** 0 while the attempt runs. */
  endedAtMs: number;
  /** "", or how it ended: completed, failed, lease-expired, cancelled. */
  outcome: string;
  errorCode: string;
}

/** A candidate uploaded under a lease; only the one named by CompleteTrainingAttempt is judged. */
export interface StoredCandidate extends TrainingCandidate {
  jobId: string;
  leaseId: string;
  uploadedAtMs: number;
}

export interface TrainingLogLine {
  seq: number;
  jobId: string;
  attempt: number;
  atMs: number;
  text: string;
}

export interface TrainingJobFilter {
  model?: string | undefined;
  state?: TrainingJobState | undefined;
  /** Only jobs after this one in the listing order (newest first): the page token's position. */
  after?: { createdAtMs: number; id: string } | undefined;
  limit: number;
}

/** Reads of jobs, their attempts, audit log, logs, workers and candidates; inside or outside a unit of work. */
export interface TrainingJobReads {
  get(id: string): Promise<TrainingJob | undefined>;
  /** Newest first (created_at, then id, descending). */
  list(filter: TrainingJobFilter): Promise<TrainingJob[]>;
  /** Jobs in these states, oldest first. */
  inStates(states: readonly TrainingJobState[], limit: number): Promise<TrainingJob[]>;
  attemptByLease(leaseId: string): Promise<TrainingAttemptRecord | undefined>;
  attempts(jobId: string): Promise<TrainingAttemptRecord[]>;
  audit(jobId: string): Promise<TrainingAuditRecord[]>;
  findRequest(clientRequestId: string): Promise<StoredTrainingRequest | undefined>;
  /** Lines in order; `afterSeq` for the lines added since, `tail` for the last ones only. */
  logs(jobId: string, options: { attempt?: number; afterSeq?: number; tail?: number }): Promise<TrainingLogLine[]>;
  worker(id: string): Promise<TrainingWorker | undefined>;
  workerByName(tokenId: string, name: string): Promise<TrainingWorker | undefined>;
  candidate(id: string): Promise<StoredCandidate | undefined>;
}

/** One unit of work: its writes commit together when the work resolves, and none of them when it throws. */
export interface TrainingJobTransaction extends TrainingJobReads {
  insert(job: TrainingJob): Promise<void>;
  update(job: TrainingJob): Promise<void>;
  appendAudit(record: Omit<TrainingAuditRecord, 'seq'>): Promise<void>;
  saveRequest(request: StoredTrainingRequest, atMs: number): Promise<void>;
  /** Inserts or replaces the (jobId, attempt) record. */
  saveAttempt(attempt: TrainingAttemptRecord): Promise<void>;
  /** Appends lines and drops the job's oldest beyond keepPerJob. */
  appendLogs(jobId: string, lines: ReadonlyArray<{ attempt: number; atMs: number; text: string }>, keepPerJob: number): Promise<void>;
  saveWorker(worker: TrainingWorker): Promise<void>;
  saveCandidate(candidate: StoredCandidate): Promise<void>;
}

/**
 * Where training jobs are kept (SQLite today, PostgreSQL later). Writes happen only in a unit
 * of work, and a lease reads the queue and takes a job in the same one: a store must run them
 * so that two never take the same attempt (SQLite: one writer at a time; PostgreSQL: SELECT …
 * FOR UPDATE SKIP LOCKED on the queued jobs).
 */
export interface TrainingJobRepository extends TrainingJobReads {
  transaction<T>(work: (tx: TrainingJobTransaction) => Promise<T>): Promise<T>;
}

/** An artifact a worker downloads by content hash. */
export interface ArtifactRef {
  sha256: string;
  sizeBytes: number;
}

/** The base model's bytes (the registry): MODEL_NOT_FOUND for an unknown version. */
export interface BaseModels {
  artifact(model: string, version: number): Promise<ArtifactRef>;
}

/** Dataset snapshots (control-plane/datasets/): each one as a single artifact (a driftline-dataset/1 tar). */
export interface DatasetCatalog {
  /** undefined when there is no such snapshot. */
  describe(datasetId: string): Promise<(ArtifactRef & { id: string; model: string }) | undefined>;
}

/** Content-addressed bytes: what workers download and candidates are stored as (the artifact store). */
export interface TrainingArtifacts {
  read(sha256: string): AsyncIterable<Uint8Array>;
  /**
   * Stores an upload: refuses it past maxBytes (PAYLOAD_TOO_LARGE) or the declared size
   * (UPLOAD_INCOMPLETE), short of it (UPLOAD_INCOMPLETE) or with another sha256 (MODEL_CHECKSUM_MISMATCH).
   */
  store(declared: ArtifactRef, chunks: AsyncIterable<Uint8Array>, maxBytes: number): Promise<ArtifactRef>;
  /** A local file path of a stored artifact, for the evaluator. */
  pathOf(sha256: string): string;
}

export interface EvaluationInput {
  jobId: string;
  model: string;
  parentVersion: number;
  datasetId: string;
  /**
   * The devices the candidate was trained to get better on (a retraining trigger's cohort, as a
   * label selector such as `cohort=plant-2`); "" or absent: the whole test split is the focus.
   */
  focusSelector?: string | undefined;
  candidate: { sha256: string; path: string };
}

/** Runs the candidate and its parent on the dataset's test splits (onnxruntime-node in production). */
export interface Evaluator {
  evaluate(input: EvaluationInput): Promise<{ splits: SplitEvaluation[] }>;
}

/** Receives a candidate that passed the gate: registers it as a version with its lineage. */
export interface CandidateSink {
  accept(input: { job: TrainingJob; candidate: TrainingCandidate; report: EvaluationReport }): Promise<{ version: number }>;
}
