import type { ModelConstraints } from './cohorts.js';
import type { CohortStats, DriftStatus, InstallStats } from './gates.js';
import type { AuditEntry, PlanningDevice, Rollout } from './state-machine.js';

/** The small interfaces the rollout engine is built on; adapters implement them over SQLite, the fleet store and the broker. */

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

export interface RolloutRepository {
  /** Runs fn in one transaction (all writes of one transition commit together). */
  transaction<T>(fn: () => T): T;
  /** Refuses a second active rollout for the same model and target group with ROLLOUT_ACTIVE_EXISTS. */
  insert(rollout: Rollout): void;
  update(rollout: Rollout): void;
  get(id: string): Rollout | undefined;
  list(options?: { activeOnly?: boolean; model?: string; limit?: number }): Rollout[];
  findActive(model: string, targetGroup: string): Rollout | undefined;
  appendAudit(record: Omit<AuditRecord, 'seq'>): void;
  audit(rolloutId: string): AuditRecord[];
  findRequest(clientRequestId: string): StoredRequest | undefined;
  saveRequest(request: StoredRequest, atMs: number): void;
}

/**
 * How a rollout changes what devices run. Implemented over the desired-state path today; the
 * signed release manifests and rollback directives of the trust work slot in here.
 */
export interface ReleasePublisher {
  deploy(model: string, version: number, deviceIds: readonly string[]): Promise<void>;
  /** `id` names the rollback (the rollout's id), so a signed directive can be traced to it. */
  rollback(model: string, devices: ReadonlyArray<{ deviceId: string; toVersion: number }>, reason: string, id: string): Promise<void>;
}

export interface FleetView {
  /** Enrolled devices matching the selector, with what they run now. */
  devices(selector: string, model: string): PlanningDevice[];
  /** Install outcome of `version` on these devices, from their reported state. */
  installStatus(model: string, version: number, deviceIds: readonly string[]): InstallStats;
  /** Per device: the version of `model` it reports running (0: none). */
  activeVersions(model: string, deviceIds: readonly string[]): Record<string, number>;
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
  cohort(query: CohortQuery): CohortStats;
}

/** Drift status of a model version (issue #4's drift service); optional. */
export interface DriftSource {
  status(model: string, version: number, sinceMs: number): DriftStatus | undefined;
}

/** What a model version requires of devices; throws MODEL_NOT_FOUND for an unknown version. */
export interface ModelCatalog {
  constraints(model: string, version: number): ModelConstraints;
  /** Throws (RELEASE_NOT_DEPLOYABLE) when every device would refuse the release, so no rollout starts with it. */
  assertDeployable?(model: string, version: number): void;
}
