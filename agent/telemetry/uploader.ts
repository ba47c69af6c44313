import { BinaryWriter } from '@bufbuild/protobuf/wire';
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import { TelemetryAck } from '../../common/proto/driftline/v1/device_link.js';
import type { BufferedRecord, TelemetryBuffer } from '../buffer/ports.js';
import type { Uplink } from '../uplink/ports.js';

export interface UploaderOptions {
  buffer: TelemetryBuffer;
  uplink: Uplink;
  clock: Clock;
  logger: Logger;
  maxBatchRecords: number;
  maxInflightBatches: number;
  /** How long to gather records before sending a partial batch. */
  batchDelayMs: number;
  /** A batch not acknowledged within this is sent again (the control plane de-duplicates). */
  ackTimeoutMs: number;
}

export interface UploaderStats {
  batchesSent: number;
  recordsSent: number;
  recordsAcknowledged: number;
  resends: number;
}

/**
 * Drains the buffer to the control plane: a window of batches in flight, each record
 * deleted only when the control plane's ack (sent after its commit) names it. Anything
 * unacknowledged after a reconnect or a timeout is sent again from the oldest.
 */
export class TelemetryUploader {
  readonly stats: UploaderStats = { batchesSent: 0, recordsSent: 0, recordsAcknowledged: 0, resends: 0 };
  /** Highest seq handed to the uplink since the last reset. */
  private cursor = 0;
  /** Last seq of each batch in flight, with the time it was sent. */
  private readonly inflight = new Map<number, number>();
  private timer: NodeJS.Timeout | undefined;
  private pumping = false;
  private stopped = false;
  private drainWaiters: Array<() => void> = [];

  constructor(private readonly options: UploaderOptions) {
    options.uplink.onStatus((status) => {
      if (status.type === 'connected') this.restart('connected');
    });
    options.uplink.onMessage((channel, payload) => {
      if (channel === 'ack') this.onAck(payload);
    });
  }

  /** Something was enqueued: send soon, batching with whatever else arrives meanwhile. */
  notify(): void {
    if (this.timer || this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pump();
    }, this.options.batchDelayMs);
  }

  /** Called periodically: resends batches whose ack never came. */
  checkTimeouts(): void {
    const now = this.options.clock.now();
    for (const sentAt of this.inflight.values()) {
      if (now - sentAt >= this.options.ackTimeoutMs) {
        this.restart('ack timeout');
        return;
      }
    }
    if (this.options.buffer.depth() > 0) this.pump();
  }

  private restart(reason: string): void {
    if (this.inflight.size > 0 || this.cursor > 0) this.options.logger.debug({ reason, inflight: this.inflight.size }, 'resending unacknowledged telemetry');
    if (this.inflight.size > 0) this.stats.resends++;
    this.cursor = 0;
    this.inflight.clear();
    this.pump();
  }

  private pump(): void {
    if (this.pumping || this.stopped) return;
    this.pumping = true;
    try {
      const { buffer, uplink, maxBatchRecords, maxInflightBatches, clock } = this.options;
      while (uplink.connected && this.inflight.size < maxInflightBatches) {
        const records = buffer.peek(maxBatchRecords, this.cursor);
        if (records.length === 0) break;
        const lastSeq = records[records.length - 1]!.seq;
        this.cursor = lastSeq;
        this.inflight.set(lastSeq, clock.now());
        this.stats.batchesSent++;
        this.stats.recordsSent += records.length;
        uplink.publish('telemetry', encodeBatch(records, clock.now())).catch((err: unknown) => {
          // Offline or refused: the records stay buffered and go again after reconnect.
          this.options.logger.debug({ err }, 'telemetry batch not accepted by the broker');
          this.inflight.delete(lastSeq);
        });
      }
    } finally {
      this.pumping = false;
    }
    this.resolveDrainWaiters();
  }

  private onAck(payload: Buffer): void {
    let ack: TelemetryAck;
    try {
      ack = TelemetryAck.decode(payload);
    } catch (err) {
      this.options.logger.warn({ err }, 'ignoring malformed telemetry ack');
      return;
    }
    this.stats.recordsAcknowledged += this.options.buffer.acknowledge(ack.ranges);
    const highest = Math.max(0, ...ack.ranges.map((r) => r.last));
    for (const lastSeq of this.inflight.keys()) if (lastSeq <= highest) this.inflight.delete(lastSeq);
    this.pump();
  }

  private resolveDrainWaiters(): void {
    if (this.options.buffer.depth() > 0) return;
    for (const resolve of this.drainWaiters.splice(0)) resolve();
  }

  /** Waits until the buffer is empty (everything acknowledged) or the time is up. */
  async drain(timeoutMs: number): Promise<boolean> {
    if (this.options.buffer.depth() === 0) return true;
    this.pump();
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.drainWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

/**
 * Builds a TelemetryBatch from stored record bodies without decoding them: protobuf
 * allows fields in any order, so appending `boot` (field 1) and `seq` (field 2) to a
 * stored TelemetryRecord encoding yields the complete record.
 */
export function encodeBatch(records: readonly BufferedRecord[], sentAtMs: number): Uint8Array {
  const writer = new BinaryWriter();
  for (const record of records) {
    writer.uint32(10).fork().raw(record.body).uint32(8).uint64(record.boot).uint32(16).uint64(record.seq).join();
  }
  writer.uint32(16).int64(sentAtMs);
  return writer.finish();
}
