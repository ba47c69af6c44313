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
  noteRefusals(deviceId: string, refusals: readonly RefusalCount[], rejectedBatches: number): void;
}

/** Where ingested telemetry is committed; implemented over SQLite (PostgreSQL later). */
export interface TelemetryRepository extends RefusalStore {
  /** Commits a batch in one transaction; records already stored are skipped, not rewritten. */
  /** deviceClockOffsetMs: the control plane's clock minus the device's, estimated from the batch's sent_at. */
  commit(deviceId: string, records: readonly TelemetryRecord[], receivedAtMs: number, deviceClockOffsetMs?: number): { stored: number; duplicates: number };
  noteDeviceState(deviceId: string, state: ReportedState): void;
  summary(request: TelemetrySummaryRequest): TelemetrySummary;
}

/** What ingest needs of the device registry. */
export interface DeviceStateSink {
  recordSeen(deviceId: string, atMs: number): void;
  saveReported(deviceId: string, state: ReportedState, atMs: number): void;
  getDesired(deviceId: string): DesiredState | undefined;
}
