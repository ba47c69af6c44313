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
  /**
   * The model the record is about (inference, label, drift and sample records carry it); ""
   * or absent for none (events, system records). The retention policy shares a stream's quota
   * and the budget between the models of its records (retention.ts).
   */
  model?: string;
}

/** Why the buffer dropped records on its own: a stream over its quota, the disk budget, age, or a disk that filled up first. */
export type DropReason = 'quota' | 'budget' | 'ttl' | 'disk_full';

/**
 * Records dropped by policy since the buffer was created, per stream and reason (persisted).
 * `disk_full` is only present once a stream has lost records to a full disk.
 */
export type DropCounts = Record<number, Record<Exclude<DropReason, 'disk_full'>, number> & { disk_full?: number }>;

/**
 * The same drops per stream, model and reason (persisted; non-zero entries only). Records of
 * no model count under "": a stream's entries add up to its DropCounts.
 */
export type ModelDropCounts = Record<number, Record<string, Partial<Record<DropReason, number>>>>;

/** Streams in upload order: events first, captured samples last (the proto enum's order). */
export const STREAM_PRIORITY: readonly Stream[] = [1, 2, 3, 4];

/** The agent's store-and-forward buffer; records stay until the control plane acknowledges them. */
export interface TelemetryBuffer {
  readonly boot: number;
  /**
   * Resolves once the record is durable (group-committed with others of the same tick), or
   * once it is counted in dropped() (a quota, the budget or a full disk took it or older ones).
   */
  enqueue(record: NewRecord): Promise<void>;
  /** The oldest unacknowledged records after `afterSeq`, in sequence order, any stream. */
  peek(limit: number, afterSeq: number): BufferedRecord[];
  /** The oldest unacknowledged records of one stream after `afterSeq`. */
  peekStream(stream: Stream, afterSeq: number, limit: number): BufferedRecord[];
  /** The newest unacknowledged records above `aboveSeq`, newest first. */
  peekNewest(aboveSeq: number, limit: number): BufferedRecord[];
  /**
   * The uplink is about to send these: from now until acknowledged, the drop policy leaves them
   * alone. Resolves once the mark is durable (it may wait for the current group commit): the
   * uplink publishes only then, so the mark survives kill -9 whenever the batch went out.
   */
  markSent(records: readonly BufferedRecord[]): Promise<void>;
  /**
   * The control plane has committed these: they leave depth(), the peeks and the policy at once
   * (the rows may go with the next group commit; one left by a crash is sent again and
   * de-duplicated). Returns how many were still buffered.
   */
  acknowledge(ranges: readonly SeqRange[]): number;
  depth(): number;
  depthByStream(): Record<number, number>;
  dropped(): DropCounts;
  droppedByModel(): ModelDropCounts;
  close(): Promise<void>;
}

/**
 * The agent's small key-value state: the boot counter, drop counts, the model install state,
 * drift references. Its own port, not the buffer's: the model manager and the drift references
 * depend on it alone. Writes are durable when they return.
 */
export interface AgentStateStore {
  getState(key: string): string | undefined;
  setState(key: string, value: string): void;
}

const STREAM_NAMES: Record<number, string> = { 1: 'events', 2: 'inference', 3: 'system', 4: 'samples' };

/**
 * Drop counts as event attributes: `inference.budget` = "12", ... per stream, and per model of
 * a stream `inference.budget@detector` = "10" (model names have no "@"; records of no model
 * have no entry of their own), non-zero entries only.
 */
export function dropAttributes(drops: DropCounts, byModel: ModelDropCounts = {}): Record<string, string> {
  const out: Record<string, string> = {};
  const name = (stream: string): string => STREAM_NAMES[Number(stream)] ?? stream;
  for (const [stream, reasons] of Object.entries(drops)) {
    for (const [reason, n] of Object.entries(reasons)) if (n > 0) out[`${name(stream)}.${reason}`] = String(n);
  }
  for (const [stream, models] of Object.entries(byModel)) {
    for (const [model, reasons] of Object.entries(models)) {
      if (model === '') continue;
      for (const [reason, n] of Object.entries(reasons)) if (n && n > 0) out[`${name(stream)}.${reason}@${model}`] = String(n);
    }
  }
  return out;
}
