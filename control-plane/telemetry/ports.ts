import type { DesiredState, ReportedState, TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';
import type { TelemetrySummary, TelemetrySummaryRequest } from '../../common/proto/driftline/v1/telemetry.js';

/** Where ingested telemetry is committed; implemented over SQLite (PostgreSQL later). */
export interface TelemetryRepository {
  /** Commits a batch in one transaction; records already stored are skipped, not rewritten. */
  /** deviceClockOffsetMs: the control plane's clock minus the device's, estimated from the batch's sent_at. */
  commit(deviceId: string, records: readonly TelemetryRecord[], receivedAtMs: number, deviceClockOffsetMs?: number): { stored: number; duplicates: number };
  noteRejectedBatch(deviceId: string): void;
  noteDeviceState(deviceId: string, state: ReportedState): void;
  summary(request: TelemetrySummaryRequest): TelemetrySummary;
}

/** What ingest needs of the device registry. */
export interface DeviceStateSink {
  recordSeen(deviceId: string, atMs: number): void;
  saveReported(deviceId: string, state: ReportedState, atMs: number): void;
  getDesired(deviceId: string): DesiredState | undefined;
}

/** Sends messages down to one device (over MQTT or IoT Hub). */
export interface DownlinkPublisher {
  publishAck(deviceId: string, payload: Uint8Array): Promise<void>;
  publishDesired(deviceId: string, payload: Uint8Array): Promise<void>;
}
