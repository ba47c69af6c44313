import { deflateSync } from 'node:zlib';
import type { Clock } from '../../common/clock.js';
import { encodeDeflatedTelemetryBatch, encodeTelemetryBatch } from '../../common/device-protocol/telemetry-batch.js';
import type { Logger } from '../../common/logger.js';
import { TelemetryAck, type SeqRange } from '../../common/proto/driftline/v1/device_link.js';
import { STREAM_PRIORITY, type BufferedRecord, type TelemetryBuffer } from '../buffer/ports.js';
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
  /** Batches at least this large are deflated when that saves 10 % or more; 0: never. */
  compressMinBytes?: number;
  /** Upload bandwidth cap in bytes per second (payload bytes); 0: none. */
  maxBytesPerSecond?: number;
  /** While a backlog drains oldest first, every Nth batch carries the newest records instead; 0: never. */
  liveEvery?: number;
}

export interface UploaderStats {
  batchesSent: number;
  recordsSent: number;
  recordsAcknowledged: number;
  resends: number;
  bytesSent: number;
  compressedBatches: number;
}

interface Inflight {
  sentAt: number;
  records: number;
}

/**
 * Drains the buffer to the control plane: a window of batches in flight, each record
 * deleted only when the control plane's ack (sent after its commit) names it. Batches
 * fill by priority (events, inference, system, samples), each stream oldest first; while
 * a backlog drains, every `liveEvery`-th batch takes the newest records so live data is
 * not stuck behind hours of backlog. Anything unacknowledged after a reconnect or a
 * timeout is sent again from the oldest; the control plane drops what it already has.
 */
export class TelemetryUploader {
  readonly stats: UploaderStats = { batchesSent: 0, recordsSent: 0, recordsAcknowledged: 0, resends: 0, bytesSent: 0, compressedBatches: 0 };
  /** Highest seq handed to the uplink per stream since the last reset. */
  private cursors = new Map<number, number>();
  /** Highest seq a live batch has taken. */
  private liveCursor = 0;
  /** Seq -> stream of records a live batch sent that the oldest-first drain has not passed yet (it skips them). */
  private readonly liveSent = new Map<number, number>();
  private readonly inflight = new Map<string, Inflight>();
  private timer: NodeJS.Timeout | undefined;
  private bandwidthTimer: NodeJS.Timeout | undefined;
  private tokens: number;
  private tokensAt: number;
  private batchCounter = 0;
  private pumping = false;
  private stopped = false;
  private drainWaiters: Array<() => void> = [];

  constructor(private readonly options: UploaderOptions) {
    this.tokens = options.maxBytesPerSecond ?? 0;
    this.tokensAt = options.clock.now();
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
    for (const { sentAt } of this.inflight.values()) {
      // A clock stepped backwards must not hold batches forever.
      if (now - sentAt >= this.options.ackTimeoutMs || now < sentAt) {
        this.restart('ack timeout');
        return;
      }
    }
    if (this.options.buffer.depth() > 0) this.pump();
  }

  private restart(reason: string): void {
    if (this.inflight.size > 0) {
      this.options.logger.debug({ reason, inflight: this.inflight.size }, 'resending unacknowledged telemetry');
      this.stats.resends++;
    }
    this.cursors.clear();
    this.liveCursor = 0;
    this.liveSent.clear();
    this.inflight.clear();
    this.pump();
  }

  /** Token bucket: true when a batch may go now; otherwise a timer resumes the pump. */
  private bandwidthAllows(): boolean {
    const rate = this.options.maxBytesPerSecond ?? 0;
    if (rate <= 0) return true;
    const now = this.options.clock.now();
    this.tokens = Math.min(rate, this.tokens + (Math.max(0, now - this.tokensAt) * rate) / 1000);
    this.tokensAt = now;
    if (this.tokens > 0) return true;
    if (!this.bandwidthTimer) {
      this.bandwidthTimer = setTimeout(
        () => {
          this.bandwidthTimer = undefined;
          this.pump();
        },
        Math.ceil((-this.tokens / rate) * 1000) + 1,
      );
    }
    return false;
  }

  private nextBatch(): BufferedRecord[] {
    const { buffer, maxBatchRecords, liveEvery = 4 } = this.options;
    const cursor = (stream: number): number => this.cursors.get(stream) ?? 0;
    this.batchCounter++;
    if (liveEvery > 0 && this.batchCounter % liveEvery === 0) {
      // Records above every cursor that are not yet sent, newest first.
      const live = buffer.peekNewest(this.liveCursor, maxBatchRecords).filter((r) => r.seq > cursor(r.stream));
      if (live.length > 0 && live.length < buffer.depth()) {
        this.liveCursor = Math.max(this.liveCursor, live[0]!.seq);
        for (const r of live) this.liveSent.set(r.seq, r.stream);
        return live;
      }
    }
    const records: BufferedRecord[] = [];
    for (const stream of STREAM_PRIORITY) {
      for (;;) {
        const room = maxBatchRecords - records.length;
        if (room <= 0) break;
        const taken = buffer.peekStream(stream, cursor(stream), room);
        if (taken.length === 0) break;
        this.cursors.set(stream, taken[taken.length - 1]!.seq);
        // A live batch already carried these: sending them again would only make duplicates.
        for (const r of taken) if (!this.liveSent.delete(r.seq)) records.push(r);
      }
    }
    // Live records acknowledged before the drain reached them are gone from the buffer: forget them once passed.
    for (const [seq, stream] of this.liveSent) if (seq <= cursor(stream)) this.liveSent.delete(seq);
    return records;
  }

  private pump(): void {
    if (this.pumping || this.stopped) return;
    this.pumping = true;
    try {
      const { uplink, maxInflightBatches, clock } = this.options;
      while (uplink.connected && this.inflight.size < maxInflightBatches && this.bandwidthAllows()) {
        const records = this.nextBatch();
        if (records.length === 0) break;
        const key = batchKey(records);
        this.inflight.set(key, { sentAt: clock.now(), records: records.length });
        const payload = this.encode(records);
        this.tokens -= payload.length;
        this.stats.batchesSent++;
        this.stats.recordsSent += records.length;
        this.stats.bytesSent += payload.length;
        // Possibly stored once published: the buffer's drop policy must not count them as
        // dropped, so the batch goes only once that mark is durable (in the buffer's group
        // commit at the end of this turn, with the records and deletes waiting, not a
        // transaction of its own).
        this.options.buffer
          .markSent(records)
          .then(() => uplink.publish('telemetry', payload))
          .catch((err: unknown) => {
            // Offline, refused, or the mark not saved: the records stay buffered and go again after reconnect or timeout.
            this.options.logger.debug({ err }, 'telemetry batch not sent');
            this.inflight.delete(key);
          });
      }
    } finally {
      this.pumping = false;
    }
    this.resolveDrainWaiters();
  }

  private encode(records: readonly BufferedRecord[]): Uint8Array {
    const sentAt = this.options.clock.now();
    const raw = encodeTelemetryBatch(records, sentAt);
    const min = this.options.compressMinBytes ?? 0;
    if (min <= 0 || raw.length < min) return raw;
    const deflated = deflateSync(raw, { level: 1 });
    if (deflated.length > raw.length * 0.9) return raw;
    this.stats.compressedBatches++;
    return encodeDeflatedTelemetryBatch(deflated, sentAt);
  }

  private onAck(payload: Buffer): void {
    let ack: TelemetryAck;
    try {
      ack = TelemetryAck.decode(payload);
    } catch (err) {
      this.options.logger.warn({ err }, 'ignoring malformed telemetry ack');
      return;
    }
    try {
      this.stats.recordsAcknowledged += this.options.buffer.acknowledge(ack.ranges);
    } catch (err) {
      // The batch stays in flight: it times out, goes again, and the control plane acks it again.
      this.options.logger.warn({ err }, 'cannot remove acknowledged telemetry from the buffer');
      return;
    }
    this.inflight.delete(rangesKey(ack.ranges));
    // A full batch (or a drain) goes at once; a few live records wait for the batch delay
    // like any others, so the ack round trip does not turn into a commit (markSent) and an
    // ack commit per handful of records under steady inference load.
    if (this.drainWaiters.length > 0 || this.unsent() >= this.options.maxBatchRecords) this.pump();
    else {
      this.resolveDrainWaiters();
      if (this.options.buffer.depth() > 0) this.notify();
    }
  }

  /** Buffered records not in any batch in flight (an estimate: records of a timed-out batch count twice until it goes again). */
  private unsent(): number {
    let inflight = 0;
    for (const batch of this.inflight.values()) inflight += batch.records;
    return this.options.buffer.depth() - inflight;
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
    clearTimeout(this.bandwidthTimer);
  }
}

/** Identifies a batch by its (boot, seq) set the way the control plane's ack names it. */
function batchKey(records: readonly BufferedRecord[]): string {
  const sorted = records.map((r) => [r.boot, r.seq] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const first = sorted[0]!;
  const last = sorted[sorted.length - 1]!;
  let distinct = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i]![0] !== sorted[i - 1]![0] || sorted[i]![1] !== sorted[i - 1]![1]) distinct++;
  return `${first[0]}:${first[1]}-${last[0]}:${last[1]}#${distinct}`;
}

function rangesKey(ranges: readonly SeqRange[]): string {
  if (ranges.length === 0) return '';
  const first = ranges[0]!;
  const last = ranges[ranges.length - 1]!;
  const count = ranges.reduce((n, r) => n + (r.last - r.first + 1), 0);
  return `${first.boot}:${first.first}-${last.boot}:${last.last}#${count}`;
}
