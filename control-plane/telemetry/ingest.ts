import { DriftlineError } from '../../common/errors.js';
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { UpChannel } from '../../common/device-protocol/topics.js';
import { CommandResult, ReportedState, TelemetryBatch, type SeqRange, type TelemetryRecord } from '../../common/proto/driftline/v1/device_link.js';
import type { DriftSketch } from '../../common/proto/driftline/v1/drift.js';
import { inflateBounded, scanEntries, type EntryLimit } from './bounded-decode.js';
import { DeviceRateLimiter } from './device-rate-limit.js';
import type { DeviceLink } from '../device-link/ports.js';
import type { DeviceStateSink, TelemetryRepository } from './ports.js';
import { RefusalLedger } from './refusal-ledger.js';

/** What a device's messages may cost; `driftline serve` takes them from the `ingest` configuration. */
export interface IngestLimits {
  maxRecordsPerBatch: number;
  /** Largest a deflated batch may inflate to; inflation stops there (PAYLOAD_TOO_LARGE). */
  maxInflatedBytes: number;
  maxStateBytes: number;
  maxResultBytes: number;
  maxStateWarnings: number;
  /** Entries a reported state's active_models may hold (a device serves a set of models, issue #12). */
  maxStateModels: number;
  maxResultOutputs: number;
  /** Per-device token bucket over every message; absent: no rate limit. */
  deviceRate?: { messagesPerSecond: number; burst: number } | undefined;
  /** Refusals are logged at most once per this many milliseconds per device. */
  refusalLogInterval: number;
  /** A device's last-seen time is written at most once per this many milliseconds (a store write per message otherwise). */
  lastSeenResolution: number;
}

export interface IngestOptions {
  repository: TelemetryRepository;
  devices: DeviceStateSink;
  /** Where acks and missed desired states go back to the device. */
  downlink: Pick<DeviceLink, 'sendAck' | 'sendDesired'>;
  clock: Clock;
  logger: Logger;
  limits: IngestLimits;
  /** Where up/federated reports go (the federated engine); without it they are dropped. */
  federated?: ((deviceId: string, payload: Uint8Array) => Promise<void>) | undefined;
}

export interface IngestStats {
  batches: number;
  recordsStored: number;
  duplicates: number;
  /** Telemetry batches refused for what they held (malformed, too large, too many records); not those refused for the rate. */
  rejectedBatches: number;
  /** Bytes inflated from deflated batches, refused ones included: the work deflate asked for. */
  inflatedBytes: number;
  /** Age of the oldest record of the last committed batch, device clock corrected. */
  lagMs: number;
}

/** Errors that mean "this message is refused", not "the control plane failed" (a failed commit is rethrown: not acked, resent). */
const refused = (err: unknown): err is DriftlineError =>
  err instanceof DriftlineError &&
  (err.kind === 'invalid' || err.code === 'PAYLOAD_TOO_LARGE' || err.code === 'PAYLOAD_TOO_MANY_ENTRIES' || err.code.startsWith('FEDERATED_'));

/** TelemetryBatch.records, ReportedState.warnings and active_models, and CommandResult.output (a map: one entry per pair). */
const RECORDS_FIELD = 1;
const WARNINGS_FIELD = 12;
const ACTIVE_MODELS_FIELD = 13;
const OUTPUT_FIELD = 5;

/**
 * Everything a device sends up lands here. Telemetry is committed first and
 * acknowledged after, so a crash between the two only causes a resend, which the
 * (device, boot, seq) key turns into a no-op. The device id comes from the topic, which
 * the broker has tied to the authenticated client; payloads never name their sender.
 *
 * The work a message can cause is bounded before it is done: a device over its rate is
 * refused before anything is decoded (and, for telemetry, not acknowledged, so its agent
 * sends the batch again later); sizes and list lengths are checked on the wire before
 * decoding, and a deflated batch is inflated only as far as its limits allow.
 */
export class TelemetryIngest {
  readonly stats: IngestStats = { batches: 0, recordsStored: 0, duplicates: 0, rejectedBatches: 0, inflatedBytes: 0, lagMs: 0 };
  private readonly refusals: RefusalLedger;
  private readonly rate: DeviceRateLimiter | undefined;
  private readonly recordLimit: EntryLimit;
  private readonly seenWrittenAt = new Map<string, number>();

  constructor(private readonly options: IngestOptions) {
    const { limits, clock, logger, repository } = options;
    this.refusals = new RefusalLedger({ store: repository, clock, logger, logIntervalMs: limits.refusalLogInterval });
    this.rate = limits.deviceRate ? new DeviceRateLimiter({ ...limits.deviceRate, clock }) : undefined;
    this.recordLimit = { field: RECORDS_FIELD, max: limits.maxRecordsPerBatch, what: 'records', setting: 'ingest.maxRecordsPerBatch' };
  }

  /** Refused messages since start, by code (metrics). */
  get refusedByCode(): ReadonlyMap<string, number> {
    return this.refusals.totals;
  }

  /** Writes the pending per-device refusal counts to the store: before they are read, and at shutdown. */
  flushRefusals(): Promise<void> {
    return this.refusals.flush();
  }

  async handle(deviceId: string, channel: UpChannel, payload: Uint8Array): Promise<void> {
    const { devices, clock, limits } = this.options;
    if (this.rate && !this.rate.tryTake(deviceId)) {
      const { messagesPerSecond, burst } = limits.deviceRate!;
      this.refusals.note(
        deviceId,
        channel,
        'DEVICE_RATE_LIMITED',
        `more than ${burst} messages at once or ${messagesPerSecond}/s sustained (ingest.deviceRate)`,
        false,
      );
      return;
    }
    const now = clock.now();
    const seen = this.seenWrittenAt.get(deviceId);
    if (seen === undefined || now < seen || now - seen >= limits.lastSeenResolution) {
      await devices.recordSeen(deviceId, now);
      this.seenWrittenAt.set(deviceId, now);
    }
    try {
      if (channel === 'telemetry') await this.ingestTelemetry(deviceId, payload);
      else if (channel === 'state') await this.ingestState(deviceId, payload);
      else if (channel === 'result') this.ingestCommandResult(deviceId, payload);
      // Federated reports go to the rounds (control-plane/federated/); their refusals are counted here like any other.
      else if (channel === 'federated') await this.options.federated?.(deviceId, payload);
    } catch (err) {
      if (!refused(err)) throw err;
      const rejectedBatch = channel === 'telemetry';
      if (rejectedBatch) this.stats.rejectedBatches++;
      this.refusals.note(deviceId, channel, err.code, err.message, rejectedBatch);
    }
  }

  private async ingestTelemetry(deviceId: string, payload: Uint8Array): Promise<void> {
    const { limits } = this.options;
    // Counted on the wire first: a batch of a million empty records is refused without decoding one.
    scanEntries(payload, this.recordLimit);
    let batch = decode(TelemetryBatch, payload, 'telemetry batch');
    if (batch.deflated.length > 0) {
      const inflated = await inflateBounded(batch.deflated, {
        maxBytes: limits.maxInflatedBytes,
        setting: 'ingest.maxInflatedBytes',
        entries: this.recordLimit,
        onInflated: (bytes) => {
          this.stats.inflatedBytes += bytes;
        },
      });
      batch = decode(TelemetryBatch, inflated, 'deflated telemetry batch');
    }
    // Agents never send an empty batch; bytes that protobuf happens to read as one must not earn an ack.
    if (batch.records.length === 0) throw new DriftlineError('PAYLOAD_MALFORMED', 'telemetry batch has no records');
    batch.records.forEach(validateRecord);
    const now = this.options.clock.now();
    // sent_at is the device's clock at sending, so this offset also corrects a skewed device clock.
    const offset = batch.sentAtMs > 0 ? now - batch.sentAtMs : 0;
    const { stored, duplicates } = await this.options.repository.commit(deviceId, batch.records, now, offset);
    this.stats.batches++;
    this.stats.lagMs = Math.max(0, now - (batch.records.reduce((m, r) => Math.min(m, r.timeMs), Infinity) + offset));
    this.stats.recordsStored += stored;
    this.stats.duplicates += duplicates;
    this.send(deviceId, 'ack', this.options.downlink.sendAck(deviceId, { ranges: toRanges(batch.records), stored, duplicates }));
  }

  private async ingestState(deviceId: string, payload: Uint8Array): Promise<void> {
    const { maxStateBytes, maxStateWarnings, maxStateModels } = this.options.limits;
    checkSize(payload, maxStateBytes, 'reported state', 'ingest.maxStateBytes');
    scanEntries(payload, { field: WARNINGS_FIELD, max: maxStateWarnings, what: 'warnings', setting: 'ingest.maxStateWarnings' });
    scanEntries(payload, { field: ACTIVE_MODELS_FIELD, max: maxStateModels, what: 'active models', setting: 'ingest.maxStateModels' });
    const state = decode(ReportedState, payload, 'reported state');
    const { devices, repository, clock, downlink } = this.options;
    await devices.saveReported(deviceId, state, clock.now());
    await repository.noteDeviceState(deviceId, state);
    // Reconcile: a device that reports an older desired revision missed an update
    // (offline, broker restarted, session lost), so it gets the current one again.
    const desired = await devices.getDesired(deviceId);
    if (desired && desired.revision > state.desiredRevision) {
      this.send(deviceId, 'desired', downlink.sendDesired(deviceId, desired));
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
    const { maxResultBytes, maxResultOutputs } = this.options.limits;
    checkSize(payload, maxResultBytes, 'command result', 'ingest.maxResultBytes');
    scanEntries(payload, { field: OUTPUT_FIELD, max: maxResultOutputs, what: 'outputs', setting: 'ingest.maxResultOutputs' });
    const result = decode(CommandResult, payload, 'command result');
    this.options.logger.info({ deviceId, commandId: result.id, ok: result.ok, code: result.errorCode }, 'command result');
  }
}

function checkSize(payload: Uint8Array, max: number, what: string, setting: string): void {
  if (payload.length > max) {
    throw new DriftlineError('PAYLOAD_TOO_LARGE', `${what} of ${payload.length} bytes exceeds ${max} (${setting})`, { details: { limit: max, setting } });
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
    !Number.isSafeInteger(record.boot) || record.boot < 1
      ? 'boot must be a positive integer'
      : !Number.isSafeInteger(record.seq) || record.seq < 1
        ? 'seq must be a positive integer'
        : !Number.isFinite(record.timeMs)
          ? 'time must be finite'
          : record.body === undefined
            ? 'record has no body'
            : record.body.$case === 'inference' && !Number.isFinite(record.body.value.latencyMs)
              ? 'latency must be finite'
              : record.body.$case === 'drift' && !validSketch(record.body.value)
                ? 'drift sketch counts must be non-negative integers'
                : undefined;
  if (problem) throw new DriftlineError('PAYLOAD_MALFORMED', `record ${index}: ${problem}`);
}

function validSketch(sketch: DriftSketch): boolean {
  const ok = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;
  return (
    ok(sketch.rows) &&
    ok(sketch.errors) &&
    ok(sketch.requests) &&
    sketch.classCounts.every(ok) &&
    sketch.confidenceCounts.every(ok) &&
    sketch.features.every((f) => f.counts.every(ok))
  );
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
