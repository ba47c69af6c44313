import type { DriftEventFilter, DriftEventRecord } from '../drift/ports.js';
import type { FiredReason, NotFiredReason, RetrainingPolicy, StoredRetrainingPolicy, TrainingJobRequest, TriggerKind } from './retraining-policy.js';

/**
 * The small async interfaces retraining triggers are built on. The policy store is this
 * domain's own (control-plane/store/sqlite/ today); the other three are other domains', adapted
 * in the composition root: drift events (the drift watcher), labelled-sample counts (datasets)
 * and starting a training job (the training engine).
 */

/** Why a trigger started nothing, beyond decide()'s reasons: the job could not be started, or a fact could not be read. */
export type WatcherReason = 'start_failed' | 'facts_unavailable';
export type TriggerReason = FiredReason | NotFiredReason | WatcherReason;

/** One recorded decision: a trigger fired (with the job it started) or why it did not. */
export interface TriggerDecisionRecord {
  /** Monotonic; never reused. */
  id: number;
  model: string;
  atMs: number;
  trigger: TriggerKind;
  /** The trigger's name within the model (`drift-42`, `schedule-1700000000000`, `labelled-since-...`). */
  triggerKey: string;
  fired: boolean;
  reason: TriggerReason;
  details: Record<string, unknown>;
  /** The job started; "" when none was. */
  jobId: string;
  /** The id the job was (or would have been) requested with. */
  clientRequestId: string;
  policyVersion: number;
}

export type NewTriggerDecision = Omit<TriggerDecisionRecord, 'id'>;

export interface TriggerDecisionFilter {
  model?: string;
  firedOnly?: boolean;
  /** Only decisions with a smaller id (the next page of a newest-first listing). */
  beforeId?: number;
}

/** Where policies (every version) and the decision log are kept. */
export interface RetrainingPolicyStore {
  /** The model's current policy version. */
  current(model: string): Promise<StoredRetrainingPolicy | undefined>;
  /** The current policy version of every model that has one. */
  all(): Promise<StoredRetrainingPolicy[]>;
  /** Stores a new version, or returns the current one when the policy is the same (a replayed command changes nothing). */
  save(model: string, policy: RetrainingPolicy, atMs: number, actor: string): Promise<StoredRetrainingPolicy>;
  /**
   * Appends a decision. A second fired decision for the same model and trigger key is refused
   * by the store (REQUEST_ID_REUSED): one trigger never starts two jobs, whoever asks.
   */
  recordDecision(decision: NewTriggerDecision): Promise<TriggerDecisionRecord>;
  /** The latest decision recorded for this model and trigger key. */
  lastDecisionFor(model: string, triggerKey: string): Promise<TriggerDecisionRecord | undefined>;
  /** The model's latest fired decision: the cooldown and "new labelled samples" count from it. */
  lastFired(model: string): Promise<TriggerDecisionRecord | undefined>;
  /** Newest first. */
  listDecisions(filter: TriggerDecisionFilter, limit: number): Promise<TriggerDecisionRecord[]>;
  /** How far the watcher has read a feed (the last drift event id considered). */
  cursor(name: string): Promise<number | undefined>;
  setCursor(name: string, value: number): Promise<void>;
  pruneDecisionsOlderThan(beforeMs: number): Promise<number>;
}

/** Drift events as the drift watcher records and announces them (DriftWatcher implements it). */
export interface DriftEventSource {
  /** Events matching the filter, oldest first. */
  list(filter: DriftEventFilter, limit: number): Promise<DriftEventRecord[]>;
  /** Hears each new event after it is committed; returns the unsubscribe function. */
  subscribe(listener: (event: DriftEventRecord) => void): () => void;
}

/** Labelled samples the control plane keeps (the datasets domain implements it). */
export interface LabelledSampleCounter {
  /** Labelled samples of `model` captured at or after sinceMs, of devices matching `selector` when it is not empty. */
  count(model: string, sinceMs: number, selector?: string): Promise<number>;
}

/** Training jobs (the training engine implements it). */
export interface TrainingJobStarter {
  /**
   * Starts a job, or answers with the job already started under the same clientRequestId
   * (idempotent, as TrainingService's start is): a restart never starts a second one.
   */
  start(request: TrainingJobRequest): Promise<{ jobId: string }>;
  /**
   * The model's job that is not finished yet (queued, leased, running, evaluating), if any, with
   * the client request id it was started with: a job this watcher started before a crash is its own.
   */
  activeJob(model: string): Promise<{ jobId: string; clientRequestId: string } | undefined>;
}
