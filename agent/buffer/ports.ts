import type { SeqRange, Stream } from '../../common/proto/driftline/v1/device_link.js';

/** A record waiting in the device buffer, identified by the (boot, seq) it was given on entry. */
export interface BufferedRecord {
  boot: number;
  seq: number;
  stream: Stream;
  timeMs: number;
  /** The encoded TelemetryRecord body (without boot/seq, which the buffer owns). */
  body: Uint8Array;
}

export interface NewRecord {
  stream: Stream;
  timeMs: number;
  body: Uint8Array;
}

/** The agent's store-and-forward buffer; records stay until the control plane acknowledges them. */
export interface TelemetryBuffer {
  readonly boot: number;
  /** Resolves once the records are durable (group-committed with others of the same tick). */
  enqueue(record: NewRecord): Promise<void>;
  /** The oldest unacknowledged records after `afterSeq`, in sequence order. */
  peek(limit: number, afterSeq: number): BufferedRecord[];
  acknowledge(ranges: readonly SeqRange[]): number;
  depth(): number;
  close(): Promise<void>;
}
