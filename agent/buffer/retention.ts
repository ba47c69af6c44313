import type { DropReason } from './ports.js';

/**
 * The buffer's retention policy, pure: which records go when a stream is over its quota, the
 * buffer over its byte budget, or the disk full. It decides from what each stream and each
 * model in it holds, in steps: each step names a stream and a model, how many of that model's
 * oldest records in the stream to evict and why; the store evicts what it can and answers
 * what that freed, and the policy decides the next step from that answer. So the policy runs
 * against SQLite (sqlite-buffer.ts) and against a plain array in its tests alike.
 *
 * In-flight protection: records handed to the uplink and not acknowledged yet are never
 * offered by the store, so a step may free fewer records than asked, or none. The policy
 * treats "fewer" as "this model has nothing left to give in this stream" and moves on to the
 * other models, then the next stream, which bounds the budget's overshoot by the uplink's window.
 *
 * Priorities: streams are numbered in upload order (events 1 first, samples 4 last); the
 * higher the number, the sooner its records are evicted.
 */

/** Records and bytes (body plus per-row overhead) one owner of a stream holds. */
export interface OwnerUsage {
  records: number;
  bytes: number;
}

/**
 * Records and bytes a stream holds, and per model: the owners of its records ("" for records
 * of no model: events, system records). Absent `models`: the whole stream is one owner, "".
 */
export interface StreamUsage extends OwnerUsage {
  models?: ReadonlyMap<string, OwnerUsage>;
}

export interface RetentionLimits {
  /** Budget for stored records in bytes; 0: unlimited. */
  maxBytes: number;
  /** Per-stream record quotas (stream number to count); absent or 0: unlimited. */
  maxRecords: Partial<Record<number, number>>;
  /** Records older than this are expired; 0: never. */
  ttlMs: number;
}

/** One step: evict up to `count` of the oldest records of one model in one stream ("" for no model) that are not in flight. */
export interface Eviction {
  stream: number;
  model: string;
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
 * After a commit: each stream over its quota loses records (what is in flight stays), then
 * while the buffer is over its budget, the lowest-priority stream that has records loses
 * records, then the next stream.
 *
 * Within a stream, the records go from the model that holds the most (its oldest first), so a
 * busy model cannot starve a quiet one: the models are levelled down, the busiest first, and
 * none above the level keeps less than another.
 * - Quota, in records: a model never goes below its fair share, floor(quota / models with
 *   records in the stream). Levelling always meets the quota without touching a share; only
 *   when a model's records are in flight (the uplink's window) does the stream stay over its
 *   quota instead of taking them from another model's share: the byte budget still bounds the disk.
 * - Budget, in bytes: levelled by bytes (a model of large records gives more records). The
 *   budget bounds the disk, so when the busiest model's records are all in flight the next
 *   model of the stream gives, as the next stream would.
 */
export function* enforceLimits(usage: ReadonlyMap<number, StreamUsage>, limits: Pick<RetentionLimits, 'maxBytes' | 'maxRecords'>): RetentionPlan {
  const left = copy(usage);
  for (const [stream, quota] of Object.entries(limits.maxRecords)) {
    const c = usageOf(left, Number(stream));
    if (!quota || c.records <= quota) continue;
    const share = Math.floor(quota / ownersWithRecords(c));
    yield* level(Number(stream), c, 'records', () => c.records - quota, share, 'quota');
  }
  const budget = limits.maxBytes;
  if (budget <= 0) return;
  for (const stream of [...left.keys()].sort((a, b) => b - a)) {
    if (totalBytes(left) <= budget) break;
    yield* level(stream, usageOf(left, stream), 'bytes', () => totalBytes(left) - budget, 0, 'budget');
  }
}

/**
 * A write the disk had no room for (SQLITE_FULL, before the budget was reached): records of
 * the lowest-priority streams go until `neededBytes` are free, never from a stream more
 * important than `floorStream` (the batch's most important record): events are not evicted
 * to make room for samples. Within a stream, levelled by bytes as for the budget.
 */
export function* makeRoom(usage: ReadonlyMap<number, StreamUsage>, neededBytes: number, floorStream: number): RetentionPlan {
  const left = copy(usage);
  let needed = neededBytes;
  const candidates = [...left.entries()].filter(([s, c]) => s >= floorStream && c.records > 0).sort(([a], [b]) => b - a);
  for (const [stream, c] of candidates) {
    if (needed <= 0) break;
    const before = c.bytes;
    const start = needed;
    yield* level(stream, c, 'bytes', () => start - (before - c.bytes), 0, 'disk_full');
    needed = start - (before - c.bytes);
  }
}

interface Owners {
  records: number;
  bytes: number;
  models: Map<string, OwnerUsage>;
}

/**
 * Evicts from one stream until `excess()` (in the measure's unit) is 0 or nothing is left to
 * give: each round levels the owners that still have records to give down to one level, no
 * lower than `floor`; an owner that frees fewer records than asked has nothing left but what
 * is in flight, and sits out the next rounds, which level the others for what is still missing.
 */
function* level(stream: number, c: Owners, measure: 'records' | 'bytes', excess: () => number, floor: number, reason: DropReason): RetentionPlan {
  const exhausted = new Set<string>();
  for (;;) {
    const missing = excess();
    if (missing <= 0) return;
    const owners = [...c.models].filter(([m, u]) => !exhausted.has(m) && u.records > 0);
    const takes = levelled(
      owners.map(([m, u]) => [m, u[measure]]),
      missing,
      floor,
    );
    if (takes.length === 0) return;
    for (const [model, amount] of takes) {
      const u = c.models.get(model)!;
      // Bytes: as many records as the owner's average record size says cover its part (at least one).
      const count = measure === 'records' ? amount : Math.min(u.records, Math.max(1, Math.ceil(amount / (u.bytes / u.records))));
      const freed = yield { stream, model, count, reason };
      take(c, model, freed);
      if (freed.records < count) exhausted.add(model);
    }
  }
}

/**
 * Water-filling: how much each owner gives so that `excess` is given, the largest owners
 * first, down to one level no lower than `floor`; [] when every owner is at or under the floor.
 * Integers throughout; ties go to the owner named first.
 */
export function levelled(owners: ReadonlyArray<readonly [string, number]>, excess: number, floor: number): Array<[string, number]> {
  const above = (l: number): number => owners.reduce((sum, [, v]) => sum + Math.max(0, v - l), 0);
  const top = owners.reduce((max, [, v]) => Math.max(max, v), 0);
  if (top <= floor || excess <= 0) return [];
  // The lowest level (>= floor) at which the owners above it give no more than the excess.
  let lo = floor;
  let hi = top;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (above(mid) <= excess) hi = mid;
    else lo = mid + 1;
  }
  const lvl = lo;
  // Below the floor nothing goes; above it, one more each from the largest owners at the level makes up the rest.
  let rest = lvl > floor ? excess - above(lvl) : 0;
  const order = [...owners].sort(([a, va], [b, vb]) => vb - va || (a < b ? -1 : a > b ? 1 : 0));
  const out: Array<[string, number]> = [];
  for (const [m, v] of order) {
    let n = Math.max(0, v - lvl);
    if (rest > 0 && v >= lvl) {
      n++;
      rest--;
    }
    if (n > 0) out.push([m, n]);
  }
  return out;
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

function copy(usage: ReadonlyMap<number, StreamUsage>): Map<number, Owners> {
  return new Map([...usage].map(([s, c]) => [s, owners(c)]));
}

/** A stream's usage with its owners; a stream without them is one owner, "". */
function owners(c: StreamUsage): Owners {
  const models = new Map<string, OwnerUsage>();
  if (c.models && c.models.size > 0) for (const [m, u] of c.models) models.set(m, { records: u.records, bytes: u.bytes });
  else if (c.records > 0) models.set('', { records: c.records, bytes: c.bytes });
  return { records: c.records, bytes: c.bytes, models };
}

function usageOf(usage: Map<number, Owners>, stream: number): Owners {
  let c = usage.get(stream);
  if (!c) usage.set(stream, (c = { records: 0, bytes: 0, models: new Map() }));
  return c;
}

function ownersWithRecords(c: Owners): number {
  let n = 0;
  for (const u of c.models.values()) if (u.records > 0) n++;
  return Math.max(1, n);
}

function take(c: Owners, model: string, freed: Freed): void {
  c.records -= freed.records;
  c.bytes -= freed.bytes;
  const u = c.models.get(model);
  if (u) {
    u.records -= freed.records;
    u.bytes -= freed.bytes;
  }
}

function totalBytes(usage: ReadonlyMap<number, OwnerUsage>): number {
  let total = 0;
  for (const c of usage.values()) total += c.bytes;
  return total;
}
