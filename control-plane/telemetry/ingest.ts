import { inflateSync } from 'node:zlib';
import { DriftlineError } from '../../common/errors.js';
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { UpChannel } from '../../common/topics.js';
import {
  CommandResult,
  DesiredState,
  ReportedState,
  TelemetryAck,
  TelemetryBatch,
  type SeqRange,
  type TelemetryRecord,
} from '../../common/proto/driftline/v1/device_link.js';
import type { DriftSketch } from '../../common/proto/driftline/v1/drift.js';
import type { DeviceStateSink, DownlinkPublisher, TelemetryRepository } from './ports.js';

export interface IngestOptions {
  repository: TelemetryRepository;
  devices: DeviceStateSink;
  downlink: DownlinkPublisher;
  clock: Clock;
  logger: Logger;
  maxRecordsPerBatch: number;
  /** Largest a deflated batch may inflate to; bigger ones are refused as PAYLOAD_TOO_LARGE. */
  maxInflatedBytes?: number;
}

export interface IngestStats {
  batches: number;
  recordsStored: number;
  duplicates: number;
  rejectedBatches: number;
  /** Age of the oldest record of the last committed batch, device clock corrected. */
  lagMs: number;
}

/**
 * Everything a device sends up lands here. Telemetry is committed first and
 * acknowledged after, so a crash between the two only causes a resend, which the
 * (device, boot, seq) key turns into a no-op. The device id comes from the topic, which
 * the broker has tied to the authenticated client; payloads never name their sender.
 */
export class TelemetryIngest {
  readonly stats: IngestStats = { batches: 0, recordsStored: 0, duplicates: 0, rejectedBatches: 0, lagMs: 0 };

  constructor(private readonly options: IngestOptions) {}

  async handle(deviceId: string, channel: UpChannel, payload: Uint8Array): Promise<void> {
    const { devices, clock, logger } = this.options;
    devices.recordSeen(deviceId, clock.now());
    try {
      if (channel === 'telemetry') this.ingestTelemetry(deviceId, payload);
      else if (channel === 'state') this.ingestState(deviceId, payload);
      else this.ingestCommandResult(deviceId, payload);
    } catch (err) {
      if (!(err instanceof DriftlineError) || (err.kind !== 'invalid' && err.code !== 'PAYLOAD_TOO_LARGE')) throw err;
      if (channel === 'telemetry') {
        this.stats.rejectedBatches++;
        this.options.repository.noteRejectedBatch(deviceId);
      }
      logger.warn({ deviceId, channel, code: err.code, reason: err.message }, 'device message rejected');
    }
  }

  private ingestTelemetry(deviceId: string, payload: Uint8Array): void {
    let batch = decode(TelemetryBatch, payload, 'telemetry batch');
    if (batch.deflated.length > 0) batch = decode(TelemetryBatch, this.inflate(batch.deflated), 'deflated telemetry batch');
    // Agents never send an empty batch; bytes that protobuf happens to read as one must not earn an ack.
    if (batch.records.length === 0) throw new DriftlineError('PAYLOAD_MALFORMED', 'telemetry batch has no records');
    if (batch.records.length > this.options.maxRecordsPerBatch) {
      throw new DriftlineError('PAYLOAD_MALFORMED', `batch of ${batch.records.length} records exceeds ${this.options.maxRecordsPerBatch}`);
    }
    batch.records.forEach(validateRecord);
    const now = this.options.clock.now();
    // sent_at is the device's clock at sending, so this offset also corrects a skewed device clock.
    const offset = batch.sentAtMs > 0 ? now - batch.sentAtMs : 0;
    const { stored, duplicates } = this.options.repository.commit(deviceId, batch.records, now, offset);
    this.stats.batches++;
    if (batch.records.length > 0) this.stats.lagMs = Math.max(0, now - (batch.records.reduce((m, r) => Math.min(m, r.timeMs), Infinity) + offset));
    this.stats.recordsStored += stored;
    this.stats.duplicates += duplicates;
    const ack = TelemetryAck.encode({ ranges: toRanges(batch.records), stored, duplicates }).finish();
    this.send(deviceId, 'ack', this.options.downlink.publishAck(deviceId, ack));
  }

  private inflate(deflated: Uint8Array): Uint8Array {
    try {
      return inflateSync(deflated, { maxOutputLength: this.options.maxInflatedBytes ?? 64 * 1024 * 1024 });
    } catch (err) {
      const tooLarge = (err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE';
      throw new DriftlineError(tooLarge ? 'PAYLOAD_TOO_LARGE' : 'PAYLOAD_MALFORMED', tooLarge ? 'deflated batch inflates beyond the limit' : 'deflated batch is not valid zlib', { cause: err });
    }
  }

  private ingestState(deviceId: string, payload: Uint8Array): void {
    const state = decode(ReportedState, payload, 'reported state');
    const { devices, repository, clock, downlink } = this.options;
    devices.saveReported(deviceId, state, clock.now());
    repository.noteDeviceState(deviceId, state);
    // Reconcile: a device that reports an older desired revision missed an update
    // (offline, broker restarted, session lost), so it gets the current one again.
    const desired = devices.getDesired(deviceId);
    if (desired && desired.revision > state.desiredRevision) {
      this.send(deviceId, 'desired', downlink.publishDesired(deviceId, DesiredState.encode(desired).finish()));
    }
  }

  /**
   * Replies are not awaited: the broker's PUBACK for them cannot arrive while the
   * message being handled still holds the link. A lost reply only causes a resend.
   */
  private send(deviceId: string, what: string, sending: Promise<void>): void {
    sending.catch((err: unknown) => this.options.logger.warn({ err, deviceId, what }, 'reply to device not sent; it will resend'));
  }

  private ingestCommandResult(deviceId: string, payload: Uint8Array): void {
    const result = decode(CommandResult, payload, 'command result');
    this.options.logger.info({ deviceId, commandId: result.id, ok: result.ok, code: result.errorCode }, 'command result');
  }
}

function decode<T>(codec: { decode(input: Uint8Array): T }, payload: Uint8Array, what: string): T {
  try {
    return codec.decode(payload);
  } catch (err) {
    throw new DriftlineError('PAYLOAD_MALFORMED', `${what} is not valid protobuf`, { cause: err });
  }
}

function validateRecord(record: TelemetryRecord, index: number): void {
  const problem =
    !Number.isSafeInteger(record.boot) || record.boot < 1 ? 'boot must be a positive integer'
    : !Number.isSafeInteger(record.seq) || record.seq < 1 ? 'seq must be a positive integer'
    : !Number.isFinite(record.timeMs) ? 'time must be finite'
    : record.body === undefined ? 'record has no body'
    : record.body.$case === 'inference' && !Number.isFinite(record.body.value.latencyMs) ? 'latency must be finite'
    : record.body.$case === 'drift' && !validSketch(record.body.value) ? 'drift sketch counts must be non-negative integers'
    : undefined;
  if (problem) throw new DriftlineError('PAYLOAD_MALFORMED', `record ${index}: ${problem}`);
}

function validSketch(sketch: DriftSketch): boolean {
  const ok = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;
  return ok(sketch.rows) && ok(sketch.errors) && ok(sketch.requests) && sketch.classCounts.every(ok) && sketch.confidenceCounts.every(ok) && sketch.features.every((f) => f.counts.every(ok));
}

/** Compresses the (boot, seq) pairs of a batch into inclusive ranges for the ack. */
export function toRanges(records: readonly Pick<TelemetryRecord, 'boot' | 'seq'>[]): SeqRange[] {
  const sorted = [...records].sort((a, b) => a.boot - b.boot || a.seq - b.seq);
  const ranges: SeqRange[] = [];
  for (const { boot, seq } of sorted) {
    const last = ranges.at(-1);
    if (last && last.boot === boot && seq <= last.last + 1) last.last = Math.max(last.last, seq);
    else ranges.push({ boot, first: seq, last: seq });
  }
  return ranges;
}
