import type { DesiredState, ReportedState } from '../../common/proto/driftline/v1/device_link.js';

/**
 * The fleet's async ports: devices and their enrollment, operator tokens. Adapters live in
 * control-plane/store/ (SQLite today, PostgreSQL later); the fleet's rules (who may enroll,
 * what a token may do) stay in this folder and reach storage only through these.
 */

export type DeviceStatus = 'enrolled' | 'decommissioned';

/** A device as stored: its credential is kept only as a hash. */
export interface StoredDevice {
  id: string;
  labels: Record<string, string>;
  status: DeviceStatus;
  /** sha256 of the device's MQTT password; null once decommissioned. */
  secretHash: string | null;
  enrolledAtMs: number;
  lastSeenMs: number;
  reported: ReportedState | undefined;
  desired: DesiredState | undefined;
}

/** An enrollment token as stored: never the token itself, only its hash. */
export interface StoredEnrollmentToken {
  tokenHash: string;
  deviceId: string;
  labels: Record<string, string>;
  createdAtMs: number;
  expiresAtMs: number;
  usedAtMs: number | null;
  revokedAtMs: number | null;
  purpose: 'enroll' | 'reenroll';
}

export interface EnrollmentTokenQuery {
  /** "" for every device. */
  deviceId: string;
  /** Used, revoked and expired tokens too. */
  includeInactive: boolean;
  nowMs: number;
  limit: number;
}

/** One page of devices for a table (the web console): searched and counted in the store, never all loaded. */
export interface DevicePageQuery {
  /** Matches a substring of the id or of the labels' JSON; "" matches every device. */
  search: string;
  offset: number;
  limit: number;
  includeDecommissioned: boolean;
}

export interface DevicePage {
  devices: StoredDevice[];
  /** Devices matching the search, over every page. */
  total: number;
}

/** Counts over the enrolled fleet. */
export interface DeviceSummary {
  enrolled: number;
  /** Seen at or after the query's onlineSinceMs. */
  online: number;
  /** By the `profile` label ("" when a device has none). */
  byProfile: Record<string, number>;
  /** By reported agent version ("" when not reported yet). */
  byAgentVersion: Record<string, number>;
  /** By "model vN" of every model a device serves. */
  byModelVersion: Record<string, number>;
}

export interface FleetReads {
  device(deviceId: string): Promise<StoredDevice | undefined>;
  /** Every device, decommissioned ones included, by id. */
  devices(): Promise<StoredDevice[]>;
  /** One page, by id. */
  devicePage(query: DevicePageQuery): Promise<DevicePage>;
  deviceSummary(onlineSinceMs: number): Promise<DeviceSummary>;
  enrollmentToken(tokenHash: string): Promise<StoredEnrollmentToken | undefined>;
  /** The token whose hash starts with these 16 hex digits (its public id). */
  enrollmentTokenByHashPrefix(prefix: string): Promise<StoredEnrollmentToken | undefined>;
  /** Newest first. */
  enrollmentTokens(query: EnrollmentTokenQuery): Promise<StoredEnrollmentToken[]>;
}

export interface FleetWrites {
  addEnrollmentToken(token: Omit<StoredEnrollmentToken, 'usedAtMs' | 'revokedAtMs'>): Promise<void>;
  markEnrollmentTokenUsed(tokenHash: string, atMs: number): Promise<void>;
  /** Keeps the first revocation time when revoked twice. */
  revokeEnrollmentToken(tokenHash: string, atMs: number): Promise<void>;
  /** Creates the device, or gives an existing one new labels, secret and enrollment time. */
  saveEnrolledDevice(device: { id: string; labels: Record<string, string>; secretHash: string; enrolledAtMs: number }): Promise<void>;
  /** Moves last-seen forward, never back. */
  recordSeen(deviceId: string, atMs: number): Promise<void>;
  saveReported(deviceId: string, state: ReportedState, atMs: number): Promise<void>;
  /** Resolves to false when there is no such device. */
  setDesired(deviceId: string, desired: DesiredState): Promise<boolean>;
  setLabels(deviceId: string, labels: Record<string, string>): Promise<void>;
  /** Marks the device decommissioned and drops its credential. */
  decommission(deviceId: string): Promise<void>;
}

/** One unit of work: its writes commit together when the work resolves, none of them when it throws. */
export interface FleetTransaction extends FleetReads, FleetWrites {}

export interface FleetRepository extends FleetReads, FleetWrites {
  transaction<T>(work: (tx: FleetTransaction) => Promise<T>): Promise<T>;
}

/** A token's role: the ordered operator roles, and `worker` (training workers: WorkerService only). */
export type OperatorRoleName = 'viewer' | 'operator' | 'admin' | 'worker';

export interface StoredOperatorToken {
  id: string;
  name: string;
  role: OperatorRoleName;
  createdAtMs: number;
  revokedAtMs: number | null;
}

/** Operator bearer tokens; only their sha256 is stored. */
export interface OperatorTokenRepository {
  insert(token: { id: string; name: string; role: OperatorRoleName; tokenHash: string; createdAtMs: number }): Promise<void>;
  byHash(tokenHash: string): Promise<StoredOperatorToken | undefined>;
  /** By creation. */
  list(): Promise<StoredOperatorToken[]>;
  /** Keeps the first revocation time; resolves to false when there is no such token. */
  revoke(id: string, atMs: number): Promise<boolean>;
  hasLiveAdmin(): Promise<boolean>;
}
