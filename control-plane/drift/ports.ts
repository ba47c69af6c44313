import type { DriftStatus } from '../../common/proto/driftline/v1/drift.js';

/** The drift domain's async ports; adapters live in control-plane/store/ (SQLite today, PostgreSQL later). */

/** A verdict level the watcher records; no_data is also what a version or cohort without a verdict reads as. */
export type DriftLevel = 'ok' | 'warn' | 'alert' | 'no_data';

/** A change of the drift status of one model version and cohort ("" is the whole fleet). */
export interface DriftEventRecord {
  /** Monotonic; never reused, even after retention deletes older events. */
  id: number;
  atMs: number;
  model: string;
  version: number;
  cohort: string;
  previousStatus: DriftLevel;
  status: DriftLevel;
  driftedShare: number;
  driftedFeatures: string[];
  maxPsi: number;
  rows: number;
  devices: number;
}

export type NewDriftEvent = Omit<DriftEventRecord, 'id'>;

/** Which events a reader wants; every field is optional. `cohort: ""` is the whole fleet, undefined every cohort. */
export interface DriftEventFilter {
  model?: string;
  version?: number;
  cohort?: string | undefined;
  sinceMs?: number;
  afterId?: number;
}

export interface DriftStatusKey {
  model: string;
  version: number;
  cohort: string;
}

/** Rollup bucket sizes of drift sketches: 1 minute and 1 hour. */
export const BUCKET_MINUTE_MS = 60_000;
export const BUCKET_HOUR_MS = 3_600_000;

/** One device's merged sketch of one model version in one bucket, as stored (protobuf DriftSketch bytes). */
export interface DriftRollupRow {
  version: number;
  deviceId: string;
  digest: string;
  sketch: Uint8Array;
}

/** The drift rollups: written inside the telemetry commit (a RecordRoute of the store adapter), read here. */
export interface DriftRollupRepository {
  /** Rows of `model` (and `version`, 0: every version) in buckets of bucketMs that reach sinceMs or later, by version, device and bucket. */
  rowsSince(model: string, version: number, bucketMs: number, sinceMs: number): Promise<DriftRollupRow[]>;
  /** Model versions with sketches in an hour bucket that reaches `sinceMs` or later (a superset of the versions with data since then). */
  versionsSince(sinceMs: number): Promise<Array<{ model: string; version: number }>>;
  /** Sketches stored but left out of the rollups (they did not merge with their bucket); a metric. */
  readonly rejectedSketches: number;
}

/** Where drift events and the last recorded status per key are kept. */
export interface DriftEventStore {
  /** The last recorded status of every key whose status is not no_data. */
  current(): Promise<Array<DriftStatusKey & { status: DriftLevel }>>;
  /** Appends the events and moves the current statuses along, in one transaction; resolves to them with their ids. */
  record(events: NewDriftEvent[]): Promise<DriftEventRecord[]>;
  /** Events matching the filter, oldest first. */
  list(filter: DriftEventFilter, limit: number): Promise<DriftEventRecord[]>;
  /** Deletes events recorded before `beforeMs`. */
  pruneOlderThan(beforeMs: number): Promise<number>;
}

/** What drift status needs from other domains: the model's reference (registry) and a device's cohort label (fleet). */
export interface DriftLookups {
  /** The reference JSON of a model version, or undefined when it has none. */
  reference(model: string, version: number): Promise<string | undefined>;
  /** The device's cohort label ("" when it has none or is unknown). */
  cohort(deviceId: string): Promise<string>;
}

/** Drift status per model version and cohort (DriftService, the rollout drift gate, the watcher). */
export interface DriftQueries {
  status(request: { model: string; version: number; sinceMs: number }): Promise<DriftStatus[]>;
}

/** Counts on a feature's reference edges: [underflow, bins..., overflow] for both. */
export interface FeatureHistogram {
  feature: string;
  edges: number[];
  reference: number[];
  current: number[];
  /** Rows merged into `current`. */
  rows: number;
  windowStartMs: number;
  windowEndMs: number;
}

/** The same status at a past moment (the window ending then) and a feature's histograms: the web console's drift page. */
export interface DriftHistoryQueries extends DriftQueries {
  statusAt(request: { model: string; version: number; sinceMs: number }, atMs: number): Promise<DriftStatus[]>;
  histogram(request: { model: string; version: number; cohort: string; feature: string; sinceMs: number }): Promise<FeatureHistogram | undefined>;
}
