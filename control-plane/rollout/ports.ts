import type { ModelConstraints } from './cohorts.js';
import type { CohortStats, DriftStatus, InstallStats } from './gates.js';
import type { AuditEntry, PlanningDevice, Rollout } from './state-machine.js';

/** The small async interfaces the rollout engine is built on; adapters implement them over a store (control-plane/store/), the fleet and the device link. */

export interface AuditRecord extends AuditEntry {
  seq: number;
  rolloutId: string;
  atMs: number;
  /** Operator token id, or "system" for the driver's own decisions. */
  actor: string;
  clientRequestId: string;
}

export interface StoredRequest {
  clientRequestId: string;
  action: string;
  /** What was asked, so a reused id with a different request is refused. */
  fingerprint: string;
  rolloutId: string;
}

/** Reads of rollouts, their audit log and stored requests; inside or outside a unit of work. */
export interface RolloutReads {
  get(id: string): Promise<Rollout | undefined>;
  list(options?: { activeOnly?: boolean; model?: string; limit?: number }): Promise<Rollout[]>;
  findActive(model: string, targetGroup: string): Promise<Rollout | undefined>;
  audit(rolloutId: string): Promise<AuditRecord[]>;
  findRequest(clientRequestId: string): Promise<StoredRequest | undefined>;
}

/** One unit of work: its writes commit together when the work resolves, and none of them when it throws. */
export interface RolloutTransaction extends RolloutReads {
  /** Refuses a second active rollout for the same model and target group with ROLLOUT_ACTIVE_EXISTS. */
  insert(rollout: Rollout): Promise<void>;
  update(rollout: Rollout): Promise<void>;
  appendAudit(record: Omit<AuditRecord, 'seq'>): Promise<void>;
  saveRequest(request: StoredRequest, atMs: number): Promise<void>;
}

/**
 * Where rollouts are kept (SQLite today, PostgreSQL later). Writes happen only in a unit of
 * work, so all writes of one transition commit together on any store.
 */
export interface RolloutRepository extends RolloutReads {
  transaction<T>(work: (tx: RolloutTransaction) => Promise<T>): Promise<T>;
}

/**
 * How a rollout changes what devices run. Implemented over the desired-state path today; the
 * signed release manifests and rollback directives of the trust work slot in here.
 */
export interface ReleasePublisher {
  deploy(model: string, version: number, deviceIds: readonly string[]): Promise<void>;
  /**
   * `id` names the rollback (the rollout's id), so a signed directive can be traced to it.
   * A device sent to toVersion 0 had no version of the model: the model leaves its set.
   */
  rollback(model: string, devices: ReadonlyArray<{ deviceId: string; toVersion: number }>, reason: string, id: string): Promise<void>;
}

export interface FleetView {
  /** Enrolled devices matching the selector, with what they run now. */
  devices(selector: string, model: string): Promise<PlanningDevice[]>;
  /** Install outcome of `version` on these devices, from their reported state. */
  installStatus(model: string, version: number, deviceIds: readonly string[]): Promise<InstallStats>;
  /** Per device: the version of `model` it reports running (0: none). */
  activeVersions(model: string, deviceIds: readonly string[]): Promise<Record<string, number>>;
}

export interface CohortQuery {
  model: string;
  deviceIds: readonly string[];
  sinceMs: number;
  /** Only inferences by this version, or by any version except excludeVersion. */
  version?: number;
  excludeVersion?: number;
}

/** Inference metrics per version cohort, from telemetry. */
export interface CohortMetrics {
  cohort(query: CohortQuery): Promise<CohortStats>;
}

/** Drift status of a model version (issue #4's drift service); optional. */
export interface DriftSource {
  status(model: string, version: number, sinceMs: number): Promise<DriftStatus | undefined>;
}

/** What a model version requires of devices; throws MODEL_NOT_FOUND for an unknown version. */
export interface ModelCatalog {
  constraints(model: string, version: number): Promise<ModelConstraints>;
  /** Throws (RELEASE_NOT_DEPLOYABLE) when every device would refuse the release, so no rollout starts with it. */
  assertDeployable?(model: string, version: number): Promise<void>;
}
