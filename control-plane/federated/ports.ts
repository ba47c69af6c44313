import type { DenseLayer } from '../../common/learning/dense-head.js';
import type { FederatedInvitation, FederatedTensor } from '../../common/proto/driftline/v1/device_link.js';
import type { FederatedStrategy } from '../../common/proto/driftline/v1/federated.js';
import type { ClientUpdate, ServerStrategy } from './strategies/strategy.js';
import type { EvaluationReport } from '../training/evaluation.js';
import type { TrainingRelease } from '../training/job-state-machine.js';
import type { FederatedRequestSpec, FederatedTask } from './task-state-machine.js';

/**
 * The small async interfaces the federated engine is built on; adapters implement them over
 * the SQLite store, the fleet, the registry's artifacts and the device link.
 */

/** An accepted update, kept until its round aggregates (so a restarted control plane resumes the round). */
export interface StoredUpdate {
  taskId: string;
  round: number;
  deviceId: string;
  sampleCount: number;
  trainLoss: number;
  staleness: number;
  /** Decoded and validated, float32. */
  delta: Float32Array;
}

/** What a device answered, once per (task, round, device, kind): the key replays are counted by. */
export interface ReportKey {
  taskId: string;
  round: number;
  deviceId: string;
  /** 'train', or 'evaluate:<head sha256>' (one answer per head asked about). */
  kind: string;
}

export interface StoredFederatedRequest {
  clientRequestId: string;
  fingerprint: string;
  taskId: string;
}

export interface FederatedTaskFilter {
  model?: string;
  state?: string;
  /** Tasks created strictly before this (createdAtMs, id): the page token. */
  before?: { createdAtMs: number; id: string };
  limit: number;
}

/** Where tasks live. Every write of one transition happens in one unit of work. */
export interface FederatedTaskRepository {
  get(id: string): Promise<FederatedTask | undefined>;
  list(filter: FederatedTaskFilter): Promise<FederatedTask[]>;
  /** Tasks not ended (pending, running, evaluating, releasing): what the driver resumes. */
  active(): Promise<FederatedTask[]>;
  findRequest(clientRequestId: string): Promise<StoredFederatedRequest | undefined>;
  transaction<T>(work: (tx: FederatedTaskTransaction) => Promise<T>): Promise<T>;
  /** The accepted updates of a round, one at a time (never all in memory at once). */
  updates(taskId: string, round: number): AsyncIterable<StoredUpdate>;
}

export interface FederatedTaskTransaction {
  get(id: string): Promise<FederatedTask | undefined>;
  insert(task: FederatedTask): Promise<void>;
  update(task: FederatedTask): Promise<void>;
  saveRequest(request: StoredFederatedRequest, atMs: number): Promise<void>;
  /** False when this key was recorded before (a replay): nothing is written then. */
  recordReport(key: ReportKey, atMs: number): Promise<boolean>;
  saveUpdate(update: StoredUpdate): Promise<void>;
  /** Drops a round's kept updates once it aggregated (or failed). */
  dropUpdates(taskId: string, round: number): Promise<void>;
}

/** A device that may take part: it matches the cohort and serves the base version. */
export interface FederatedCandidate {
  deviceId: string;
  online: boolean;
}

export interface FederatedFleet {
  /** Enrolled devices matching the selector that run `model` at `version`. */
  candidates(model: string, version: number, selector: string): Promise<FederatedCandidate[]>;
}

/** How invitations reach devices (down/federated). A device not connected misses it; the round counts it as dropped. */
export interface FederatedInvitations {
  send(deviceId: string, invitation: FederatedInvitation): Promise<void>;
}

/** Global heads, content addressed (the artifact store devices download from). */
export interface HeadArtifacts {
  /** Stores a FederatedHead artifact's bytes; returns its sha256 and size. */
  put(bytes: Uint8Array): Promise<{ sha256: string; sizeBytes: number }>;
  get(sha256: string): Promise<Uint8Array>;
  /** Where an invited device fetches it on the artifact server (HTTP path). */
  pathOf(sha256: string): string;
}

/** The base version's trainable head (final dense layers), read from its ONNX model. */
export interface BaseHeads {
  /** MODEL_NOT_FOUND for an unknown version, MODEL_HEAD_UNSUPPORTED without a trainable head. */
  headOf(model: string, version: number): Promise<DenseLayer[]>;
}

/** A head's federated evaluation: the devices' held-out counts summed. */
export interface FederatedEvaluationCounts {
  /** Devices that answered. */
  devices: number;
  samples: number;
  correct: number;
  /** Sample-weighted mean cross-entropy. */
  loss: number;
  perClassSupport: number[];
  perClassCorrect: number[];
}

export interface FederatedJudgeInput {
  taskId: string;
  model: string;
  baseVersion: number;
  /** Normalized gate texts (normalizeEvaluationGates); [] judges nothing. */
  gates: string[];
  /** The final head and the base version's head, evaluated on the same devices. */
  candidate: FederatedEvaluationCounts;
  parent: FederatedEvaluationCounts;
  nowMs: number;
}

/** What a federated version records as its lineage. */
export interface FederatedLineage {
  taskId: string;
  rounds: number;
  clientsPerRound: number;
  strategy: string;
  mode: string;
  epsilon: number;
  delta: number;
}

export interface FederatedRegisterInput {
  model: string;
  baseVersion: number;
  /** The final head (a FederatedHead artifact) and its layers, to write into the base model. */
  headSha256: string;
  layers: DenseLayer[];
  lineage: FederatedLineage;
  evaluation: EvaluationReport;
}

export interface FederatedReleaseInput {
  taskId: string;
  model: string;
  version: number;
  /** The task's cohort selector: the canary's audience. */
  cohortSelector: string;
}

/**
 * Judge and release (implemented by control-plane/federated/release/ over the evaluation gate,
 * the registry and the signed canary). The engine calls judge once after the federated
 * evaluation; on pass, register then (when the task asked for it) release.
 */
export interface FederatedRelease {
  judge(input: FederatedJudgeInput): Promise<EvaluationReport>;
  /** The model's next version: the base model with the final head written in, with lineage. */
  register(input: FederatedRegisterInput): Promise<{ version: number }>;
  /** Signs the version as a canary for the cohort and starts its rollout; the release's state now. */
  release(input: FederatedReleaseInput): Promise<Omit<TrainingRelease, 'updatedAtMs'>>;
}

/**
 * Central DP as a round uses it (the shape of ./privacy/mechanism.ts's PrivacyMechanism). A
 * round calls wouldExceedBudget before inviting, clip on each accepted update, privatize once on
 * the sum, afterRound once the noised aggregate is applied.
 */
export interface RoundPrivacy {
  initialState(): Record<string, unknown>;
  clippingNorm(state: Record<string, unknown>): number;
  clip(delta: Float32Array, state: Record<string, unknown>): { delta: Float32Array; norm: number; clipped: boolean };
  privatize(sum: Float32Array, expectedClients: number, state: Record<string, unknown>, gaussian: () => number): Float32Array;
  afterRound(
    state: Record<string, unknown>,
    round: { aggregated: number; clipped: number; samplingRate: number },
    gaussian: () => number,
  ): Record<string, unknown>;
  spent(state: Record<string, unknown>): { epsilon: number; delta: number };
  wouldExceedBudget(state: Record<string, unknown>, samplingRate: number): boolean;
}

/** FedBuff's buffer (./strategies/async-buffer.ts): staleness-scales, refuses too-stale updates, aggregates with the strategy. */
export interface AsyncBuffer {
  /** Throws FEDERATED_UPDATE_STALE past max_staleness; returns the staleness weight used. */
  add(update: ClientUpdate): number;
  readonly count: number;
  flush(): { delta: Float32Array };
}

/**
 * The aggregation rules and checks other folders implement (strategies/, privacy/,
 * update-validation.ts), behind one port so the engine is wired with them in one place
 * (./algorithms.ts) and tests can run with a reference of their own.
 */
export interface FederatedAlgorithms {
  /** Throws FEDERATED_TASK_INVALID (naming the field) when the strategy or privacy settings do not fit the task. */
  validate(spec: FederatedRequestSpec): void;
  strategy(spec: FederatedStrategy): ServerStrategy;
  /** The central-gaussian mechanism (privacy mode none: undefined). */
  privacy(spec: FederatedRequestSpec, samplingRate: number): RoundPrivacy | undefined;
  asyncBuffer(strategy: ServerStrategy, length: number, options: { bufferSize: number; maxStaleness: number }): AsyncBuffer;
  /** Size cap before decoding, encoding, length, finite values, norm bound: throws the FEDERATED_UPDATE_* code. */
  validateUpdate(
    tensor: FederatedTensor | undefined,
    limits: { headLength: number; maxUpdateNorm: number; maxBytes: number; encoding: string },
  ): { delta: Float32Array; norm: number };
}

export type { FederatedRequestSpec };
