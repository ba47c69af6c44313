import type { DesiredState, ReportedState, TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';
import type { TelemetrySummary, TelemetrySummaryRequest } from '../../common/proto/driftline/v1/telemetry.js';

/** A count of refused messages from one device with one error code. */
export interface RefusalCount {
  code: string;
  count: number;
  /** When the latest of them was refused (control-plane clock). */
  lastMs: number;
}

/** Where refused device messages are counted, per device and code. */
export interface RefusalStore {
  /** Adds the counts; rejectedBatches of them were telemetry batches refused for their content (the fleet-wide counter). */
  noteRefusals(deviceId: string, refusals: readonly RefusalCount[], rejectedBatches: number): Promise<void>;
}

/** Where ingested telemetry is committed; implemented over SQLite (control-plane/store/sqlite/), PostgreSQL later. */
export interface TelemetryRepository extends RefusalStore {
  /**
   * Commits a batch in one transaction; records already stored are skipped, not rewritten, and
   * each new record is also handed to the route for its kind (see RecordRoute) in that transaction.
   * deviceClockOffsetMs: the control plane's clock minus the device's, estimated from the batch's sent_at.
   */
  commit(
    deviceId: string,
    records: readonly TelemetryRecord[],
    receivedAtMs: number,
    deviceClockOffsetMs?: number,
  ): Promise<{ stored: number; duplicates: number }>;
  noteDeviceState(deviceId: string, state: ReportedState): Promise<void>;
  summary(request: TelemetrySummaryRequest): Promise<TelemetrySummary>;
}

/** The kinds a telemetry record can be (its body's case). */
export type TelemetryRecordKind = NonNullable<TelemetryRecord['body']>['$case'];

/**
 * Where newly stored records of one kind go besides the telemetry tables (drift sketches to the
 * drift rollups), so telemetry knows no other domain: the composition root routes kinds to
 * their stores. A store adapter runs accept() inside its commit, so a record resent after a
 * crash reaches the route exactly once, like the record itself.
 */
export interface RecordRoute {
  kind: TelemetryRecordKind;
  accept(deviceId: string, record: TelemetryRecord, correctedTimeMs: number): void;
}

/** What ingest needs of the device registry. */
export interface DeviceStateSink {
  recordSeen(deviceId: string, atMs: number): Promise<void>;
  saveReported(deviceId: string, state: ReportedState, atMs: number): Promise<void>;
  getDesired(deviceId: string): Promise<DesiredState | undefined>;
}
