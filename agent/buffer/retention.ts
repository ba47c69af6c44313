import type { DropReason } from './ports.js';

/**
 * The buffer's retention policy, pure: which records go when a stream is over its quota, the
 * buffer over its byte budget, or the disk full. It decides in steps: each step names a stream,
 * how many of its oldest records to evict and why; the store evicts what it can and answers
 * what that freed, and the policy decides the next step from that answer. So the policy runs
 * against SQLite (sqlite-buffer.ts) and against a plain array in its tests alike.
 *
 * In-flight protection: records handed to the uplink and not acknowledged yet are never
 * offered by the store, so a step may free fewer records than asked, or none. The policy
 * treats "none" as "this stream has nothing left to give" and moves on to the next stream,
 * which bounds the budget's overshoot by the uplink's window.
 *
 * Priorities: streams are numbered in upload order (events 1 first, samples 4 last); the
 * higher the number, the sooner its records are evicted.
 */

/** Records and bytes (body plus per-row overhead) a stream holds. */
export interface StreamUsage {
  records: number;
  bytes: number;
}

export interface RetentionLimits {
  /** Budget for stored records in bytes; 0: unlimited. */
  maxBytes: number;
  /** Per-stream record quotas (stream number to count); absent or 0: unlimited. */
  maxRecords: Partial<Record<number, number>>;
  /** Records older than this are expired; 0: never. */
  ttlMs: number;
}

/** One step: evict up to `count` of the stream's oldest records that are not in flight. */
export interface Eviction {
  stream: number;
  count: number;
  reason: DropReason;
}

/** What a step freed. */
export interface Freed {
  records: number;
  bytes: number;
}

/** A plan the store runs: next(freed) with what the previous step freed. */
export type RetentionPlan = Generator<Eviction, void, Freed>;

/**
 * After a commit: each stream over its quota loses its oldest records (one step each, what is
 * in flight stays), then while the buffer is over its budget, the lowest-priority stream that
 * has records loses its oldest ones, then the next stream.
 */
export function* enforceLimits(usage: ReadonlyMap<number, StreamUsage>, limits: Pick<RetentionLimits, 'maxBytes' | 'maxRecords'>): RetentionPlan {
  const left = copy(usage);
  for (const [stream, quota] of Object.entries(limits.maxRecords)) {
    const c = usageOf(left, Number(stream));
    if (quota && c.records > quota) take(c, yield { stream: Number(stream), count: c.records - quota, reason: 'quota' });
  }
  const budget = limits.maxBytes;
  if (budget <= 0) return;
  let total = totalBytes(left);
  for (const stream of [...left.keys()].sort((a, b) => b - a)) {
    const c = usageOf(left, stream);
    while (total > budget && c.records > 0) {
      // As many as the stream's average record size says cover the excess (at least one).
      const freed = yield { stream, count: Math.min(c.records, Math.max(1, Math.ceil((total - budget) / (c.bytes / c.records)))), reason: 'budget' };
      take(c, freed);
      if (freed.records === 0) break;
      total = totalBytes(left);
    }
    if (total <= budget) break;
  }
}

/**
 * A write the disk had no room for (SQLITE_FULL, before the budget was reached): the oldest
 * records of the lowest-priority streams go until `neededBytes` are free, never from a stream
 * more important than `floorStream` (the batch's most important record): events are not
 * evicted to make room for samples.
 */
export function* makeRoom(usage: ReadonlyMap<number, StreamUsage>, neededBytes: number, floorStream: number): RetentionPlan {
  const left = copy(usage);
  let needed = neededBytes;
  const candidates = [...left.entries()].filter(([s, c]) => s >= floorStream && c.records > 0).sort(([a], [b]) => b - a);
  for (const [stream, c] of candidates) {
    while (needed > 0 && c.records > 0) {
      const freed = yield { stream, count: Math.min(c.records, Math.max(1, Math.ceil(needed / (c.bytes / c.records)))), reason: 'disk_full' };
      take(c, freed);
      if (freed.bytes === 0) break;
      needed -= freed.bytes;
    }
    if (needed <= 0) break;
  }
}

/** Records written before this time are expired; undefined when there is no TTL. */
export function expiryCutoff(nowMs: number, limits: Pick<RetentionLimits, 'ttlMs'>): number | undefined {
  return limits.ttlMs > 0 ? nowMs - limits.ttlMs : undefined;
}

/** Runs a plan against an evictor: what a store does with it. */
export function runPlan(plan: RetentionPlan, evict: (step: Eviction) => Freed): void {
  let step = plan.next();
  while (!step.done) step = plan.next(evict(step.value));
}

function copy(usage: ReadonlyMap<number, StreamUsage>): Map<number, StreamUsage> {
  return new Map([...usage].map(([s, c]) => [s, { ...c }]));
}

function usageOf(usage: Map<number, StreamUsage>, stream: number): StreamUsage {
  let c = usage.get(stream);
  if (!c) usage.set(stream, (c = { records: 0, bytes: 0 }));
  return c;
}

function take(c: StreamUsage, freed: Freed): void {
  c.records -= freed.records;
  c.bytes -= freed.bytes;
}

function totalBytes(usage: ReadonlyMap<number, StreamUsage>): number {
  let total = 0;
  for (const c of usage.values()) total += c.bytes;
  return total;
}
