import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { Stream } from '../common/proto/driftline/v1/device_link.js';
import type { DropReason } from '../agent/buffer/ports.js';
import { enforceLimits, expiryCutoff, levelled, makeRoom, runPlan, type Eviction, type Freed, type StreamUsage } from '../agent/buffer/retention.js';
import { dropAttributes } from '../agent/buffer/ports.js';
import { ROW_OVERHEAD_BYTES, SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';

const dir = mkdtempSync(join(tmpdir(), 'driftline-buffer-policy-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const file = (): string => join(dir, `buffer-${++files}.db`);
const body = (i: number, size = 10): Uint8Array => new Uint8Array(size).fill(i % 251);

async function fill(buffer: SqliteBuffer, stream: Stream, n: number, clock: ManualClock, size = 10): Promise<void> {
  await Promise.all(Array.from({ length: n }, (_, i) => buffer.enqueue({ stream, timeMs: clock.now(), body: body(i, size) })));
}

describe('agent buffer policy', () => {
  it('a stream over its quota loses its own oldest records, counted as quota drops', async () => {
    const clock = new ManualClock();
    const buffer = SqliteBuffer.open({ file: file(), synchronous: 'FULL', clock, limits: { maxRecords: { [Stream.STREAM_SYSTEM]: 5 } } });
    await fill(buffer, Stream.STREAM_SYSTEM, 8, clock);
    await fill(buffer, Stream.STREAM_EVENTS, 3, clock);
    expect(buffer.depthByStream()).toMatchObject({ [Stream.STREAM_SYSTEM]: 5, [Stream.STREAM_EVENTS]: 3 });
    expect(buffer.dropped()[Stream.STREAM_SYSTEM]).toEqual({ quota: 3, budget: 0, ttl: 0 });
    // The oldest went: what is left are the last five system records (seq 4..8).
    expect(buffer.peekStream(Stream.STREAM_SYSTEM, 0, 100).map((r) => r.seq)).toEqual([4, 5, 6, 7, 8]);
    await buffer.close();
  });

  it('when the byte budget is full the lowest-priority stream goes first, and events last', async () => {
    const clock = new ManualClock();
    const perRecord = 10 + ROW_OVERHEAD_BYTES;
    const buffer = SqliteBuffer.open({ file: file(), synchronous: 'FULL', clock, limits: { maxBytes: 20 * perRecord } });
    await fill(buffer, Stream.STREAM_EVENTS, 5, clock);
    await fill(buffer, Stream.STREAM_INFERENCE, 5, clock);
    await fill(buffer, Stream.STREAM_SAMPLES, 8, clock);
    await fill(buffer, Stream.STREAM_SYSTEM, 6, clock);
    // 24 records for a budget of 20: four samples go, the newest samples stay.
    expect(buffer.depth()).toBe(20);
    expect(buffer.depthByStream()).toMatchObject({ 1: 5, 2: 5, 3: 6, 4: 4 });
    expect(buffer.dropped()[Stream.STREAM_SAMPLES]!.budget).toBe(4);
    await fill(buffer, Stream.STREAM_EVENTS, 12, clock);
    // Samples and system records are gone before any inference record or event.
    expect(buffer.depthByStream()).toMatchObject({ 1: 17, 2: 3, 3: 0, 4: 0 });
    expect(buffer.usedBytes()).toBeLessThanOrEqual(20 * perRecord);
    await buffer.close();
  });

  it('drop counts survive a restart, and each record is either buffered or counted as dropped', async () => {
    const clock = new ManualClock();
    const path = file();
    const limits = { maxRecords: { [Stream.STREAM_INFERENCE]: 50 } };
    let buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', clock, limits });
    await fill(buffer, Stream.STREAM_INFERENCE, 80, clock);
    await buffer.close();
    buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', clock, limits });
    await fill(buffer, Stream.STREAM_INFERENCE, 20, clock);
    expect(buffer.boot).toBe(2);
    expect(buffer.depth() + buffer.droppedTotal()).toBe(100);
    expect(buffer.dropped()[Stream.STREAM_INFERENCE]!.quota).toBe(50);
    await buffer.close();
  });

  it('records past their TTL are expired by maintenance and counted as ttl drops', async () => {
    const clock = new ManualClock();
    const buffer = SqliteBuffer.open({ file: file(), synchronous: 'NORMAL', clock, limits: { ttlMs: 60_000 } });
    await fill(buffer, Stream.STREAM_SYSTEM, 4, clock);
    clock.advance(45_000);
    await fill(buffer, Stream.STREAM_EVENTS, 2, clock);
    clock.advance(30_000);
    expect(buffer.maintain()).toEqual({ expired: 4 });
    expect(buffer.depthByStream()).toMatchObject({ [Stream.STREAM_EVENTS]: 2, [Stream.STREAM_SYSTEM]: 0 });
    expect(buffer.dropped()[Stream.STREAM_SYSTEM]!.ttl).toBe(4);
    await buffer.close();
  });

  it('acknowledged records leave the buffer and free their budget', async () => {
    const clock = new ManualClock();
    const buffer = SqliteBuffer.open({ file: file(), synchronous: 'FULL', clock, limits: { maxBytes: 1_000_000 } });
    await fill(buffer, Stream.STREAM_INFERENCE, 10, clock, 100);
    const used = buffer.usedBytes();
    expect(buffer.acknowledge([{ boot: buffer.boot, first: 1, last: 6 }])).toBe(6);
    expect(buffer.depth()).toBe(4);
    expect(buffer.usedBytes()).toBe(used - 6 * (100 + ROW_OVERHEAD_BYTES));
    // A repeated ack is harmless.
    expect(buffer.acknowledge([{ boot: buffer.boot, first: 1, last: 6 }])).toBe(0);
    await buffer.close();
  });
});

describe('agent buffer policy across a restart', () => {
  it('records sent but not acknowledged before a crash stay protected from eviction after it', async () => {
    const clock = new ManualClock();
    const path = file();
    const perRecord = 10 + ROW_OVERHEAD_BYTES;
    const limits = { maxBytes: 10 * perRecord };
    let buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', clock, limits });
    await fill(buffer, Stream.STREAM_SAMPLES, 10, clock);
    // The uplink took the five oldest; the process dies before their ack (no close, no ack).
    const inFlight = buffer.peekStream(Stream.STREAM_SAMPLES, 0, 5);
    await buffer.markSent(inFlight);
    buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', clock, limits });
    await fill(buffer, Stream.STREAM_SAMPLES, 10, clock);
    // The budget made room from the oldest records that were never sent; the five in flight
    // may already be stored, so they are still here, waiting for their resend and ack.
    const left = buffer.peekStream(Stream.STREAM_SAMPLES, 0, 100).map((r) => r.seq);
    expect(left.slice(0, 5)).toEqual(inFlight.map((r) => r.seq));
    expect(buffer.depth() + buffer.droppedTotal()).toBe(20);
    expect(buffer.acknowledge([{ boot: 1, first: 1, last: 5 }])).toBe(5);
    await buffer.close();
  });
});

describe('agent buffer: acknowledgements between commits', () => {
  it('an acknowledged record leaves depth, peeks and the policy at once; a crash before its delete commits leaves it marked sent, to go again', async () => {
    const clock = new ManualClock();
    const path = file();
    // The test closes the commit windows: here the window after the ack never closes (kill -9).
    const windows: Array<() => void> = [];
    const closeWindow = () => {
      for (const commit of windows.splice(0)) commit();
    };
    const perRecord = 10 + ROW_OVERHEAD_BYTES;
    const limits = { maxBytes: 10 * perRecord };
    let buffer = SqliteBuffer.open({
      file: path,
      synchronous: 'FULL',
      clock,
      limits,
      commitDelayMs: 20,
      scheduleCommit: (commit) => (windows.push(commit), () => undefined),
    });
    const filled = fill(buffer, Stream.STREAM_INFERENCE, 10, clock);
    closeWindow();
    await filled;
    const marked = buffer.markSent(buffer.peekStream(Stream.STREAM_INFERENCE, 0, 5));
    closeWindow();
    await marked;
    expect(buffer.acknowledge([{ boot: 1, first: 1, last: 5 }])).toBe(5);
    expect(buffer.acknowledge([{ boot: 1, first: 1, last: 5 }])).toBe(0);
    expect(buffer.depth()).toBe(5);
    expect(buffer.usedBytes()).toBe(5 * perRecord);
    expect(buffer.peekStream(Stream.STREAM_INFERENCE, 0, 3).map((r) => r.seq)).toEqual([6, 7, 8]);
    expect(buffer.peek(100, 0).map((r) => r.seq)).toEqual([6, 7, 8, 9, 10]);
    expect(buffer.peekNewest(0, 100).map((r) => r.seq)).toEqual([10, 9, 8, 7, 6]);
    const rows = (): Array<{ seq: number; sent: number }> => {
      const db = new Database(path, { readonly: true });
      try {
        return db.prepare('SELECT seq, sent FROM outbox ORDER BY seq').all() as Array<{ seq: number; sent: number }>;
      } finally {
        db.close();
      }
    };
    expect(rows()).toHaveLength(10);
    expect(windows).toHaveLength(1);

    // The process dies before that window closes: the acknowledged rows are still in the file,
    // marked sent, so the policy leaves them alone until they go again and are acknowledged again.
    buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', clock, limits });
    expect(buffer.depth()).toBe(10);
    await fill(buffer, Stream.STREAM_INFERENCE, 5, clock);
    expect(buffer.peekStream(Stream.STREAM_INFERENCE, 0, 100).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 11, 12, 13, 14, 15]);
    expect(buffer.dropped()[Stream.STREAM_INFERENCE]!.budget).toBe(5);
    expect(buffer.acknowledge([{ boot: 1, first: 1, last: 5 }])).toBe(5);
    // The acknowledged rows are never counted as dropped while their delete waits.
    await fill(buffer, Stream.STREAM_INFERENCE, 5, clock);
    expect(buffer.dropped()[Stream.STREAM_INFERENCE]!.budget).toBe(5);
    await buffer.close();
    expect(rows().map((r) => r.seq)).toEqual([11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
  });
});

describe('agent buffer on a full disk', () => {
  it('keeps its counts equal to the rows in the file through failed and retried commits', async () => {
    const clock = new ManualClock();
    const path = file();
    const buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', clock, maxFileBytes: 96 * 1024 });
    // 1,500 records of one stream in commits of 25: the file's ceiling is reached halfway.
    for (let i = 0; i < 60; i++) await fill(buffer, Stream.STREAM_INFERENCE, 25, clock, 60);
    const rows = (): number => {
      const db = new Database(path, { readonly: true });
      try {
        return (db.prepare('SELECT count(*) AS n FROM outbox').get() as { n: number }).n;
      } finally {
        db.close();
      }
    };
    expect(buffer.dropped()[Stream.STREAM_INFERENCE]!.disk_full).toBeGreaterThan(0);
    expect(buffer.depth()).toBe(rows());
    expect(buffer.depth() + buffer.droppedTotal()).toBe(1500);
    // The oldest went: what is left ends with the newest record.
    expect(buffer.peekNewest(0, 1)[0]!.seq).toBe(1500);
    await buffer.close();
  });
});

/** The retention policy against a plain array of records: no SQLite, the same rules. */
function arrayStore(records: Array<{ seq: number; stream: number; bytes: number; model?: string; inFlight?: boolean }>) {
  const dropped: Array<[number, DropReason]> = [];
  const usage = (): Map<number, StreamUsage> => {
    const m = new Map<number, StreamUsage & { models: Map<string, { records: number; bytes: number }> }>();
    for (const r of records) {
      const c = m.get(r.stream) ?? { records: 0, bytes: 0, models: new Map() };
      c.records++;
      c.bytes += r.bytes;
      const o = c.models.get(r.model ?? '') ?? { records: 0, bytes: 0 };
      o.records++;
      o.bytes += r.bytes;
      c.models.set(r.model ?? '', o);
      m.set(r.stream, c);
    }
    return m;
  };
  const evict = ({ stream, model, count, reason }: Eviction): Freed => {
    const gone = records.filter((r) => r.stream === stream && (r.model ?? '') === model && !r.inFlight).slice(0, count);
    for (const r of gone) {
      records.splice(records.indexOf(r), 1);
      dropped.push([r.seq, reason]);
    }
    return { records: gone.length, bytes: gone.reduce((n, r) => n + r.bytes, 0) };
  };
  /** Records left per model of a stream. */
  const left = (stream: number): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const r of records) if (r.stream === stream) out[r.model ?? ''] = (out[r.model ?? ''] ?? 0) + 1;
    return out;
  };
  return { records, dropped, usage, evict, left };
}

const rows = (stream: number, from: number, n: number, bytes = 10) => Array.from({ length: n }, (_, i) => ({ seq: from + i, stream, bytes }));
/** n records of `stream`, seqs from `from`, taking turns between the models: `models[i % models.length]`. */
const interleaved = (stream: number, from: number, n: number, models: readonly string[], bytes = 10) =>
  Array.from({ length: n }, (_, i) => ({ seq: from + i, stream, bytes, model: models[i % models.length]! }));

describe('agent buffer retention policy, without SQLite', () => {
  it('a stream over its quota loses its own oldest records', () => {
    const store = arrayStore([...rows(Stream.STREAM_SYSTEM, 1, 8), ...rows(Stream.STREAM_EVENTS, 9, 3)]);
    runPlan(enforceLimits(store.usage(), { maxBytes: 0, maxRecords: { [Stream.STREAM_SYSTEM]: 5 } }), store.evict);
    expect(store.dropped).toEqual([
      [1, 'quota'],
      [2, 'quota'],
      [3, 'quota'],
    ]);
  });

  it('over the budget, the lowest-priority stream goes first and events last', () => {
    const store = arrayStore([
      ...rows(Stream.STREAM_EVENTS, 1, 5),
      ...rows(Stream.STREAM_INFERENCE, 6, 5),
      ...rows(Stream.STREAM_SAMPLES, 11, 3),
      ...rows(Stream.STREAM_SYSTEM, 14, 4),
    ]);
    runPlan(enforceLimits(store.usage(), { maxBytes: 100, maxRecords: {} }), store.evict);
    // 17 records of 10 bytes for a budget of 100: the 3 samples, the 4 system records, then 0 inference records.
    expect(store.dropped.map(([seq]) => seq)).toEqual([11, 12, 13, 14, 15, 16, 17]);
    expect(store.dropped.every(([, reason]) => reason === 'budget')).toBe(true);
    expect(store.records.length).toBe(10);
  });

  it('records in flight are never evicted: the budget takes the next stream instead, and is over by at most what is in flight', () => {
    const store = arrayStore([...rows(Stream.STREAM_EVENTS, 1, 4), ...rows(Stream.STREAM_SAMPLES, 5, 4).map((r) => ({ ...r, inFlight: true }))]);
    runPlan(enforceLimits(store.usage(), { maxBytes: 50, maxRecords: {} }), store.evict);
    expect(store.dropped.map(([seq]) => seq)).toEqual([1, 2, 3]);
    expect(store.records.map((r) => r.seq)).toEqual([4, 5, 6, 7, 8]);
  });

  it('a full disk evicts from the lowest-priority streams, never from one more important than the write', () => {
    const store = arrayStore([...rows(Stream.STREAM_EVENTS, 1, 4), ...rows(Stream.STREAM_INFERENCE, 5, 4), ...rows(Stream.STREAM_SAMPLES, 9, 2)]);
    runPlan(makeRoom(store.usage(), 35, Stream.STREAM_INFERENCE), store.evict);
    expect(store.dropped).toEqual([
      [9, 'disk_full'],
      [10, 'disk_full'],
      [5, 'disk_full'],
      [6, 'disk_full'],
    ]);
    // Samples need room too, but no more than samples can give.
    const full = arrayStore([...rows(Stream.STREAM_EVENTS, 1, 4)]);
    runPlan(makeRoom(full.usage(), 35, Stream.STREAM_SAMPLES), full.evict);
    expect(full.dropped).toEqual([]);
  });

  it('expires records by the device clock only when a TTL is set', () => {
    expect(expiryCutoff(100_000, { ttlMs: 60_000 })).toBe(40_000);
    expect(expiryCutoff(100_000, { ttlMs: 0 })).toBeUndefined();
  });
});

describe('agent buffer retention policy between models, without SQLite', () => {
  it("a busy model cannot starve another's records: over the quota, the model holding the most loses its oldest", () => {
    // 90 detector records, with 10 classifier records among the oldest, for a quota of 50.
    const store = arrayStore([
      ...interleaved(Stream.STREAM_INFERENCE, 1, 20, ['detector', 'classifier']),
      ...interleaved(Stream.STREAM_INFERENCE, 21, 80, ['detector']),
    ]);
    runPlan(enforceLimits(store.usage(), { maxBytes: 0, maxRecords: { [Stream.STREAM_INFERENCE]: 50 } }), store.evict);
    expect(store.left(Stream.STREAM_INFERENCE)).toEqual({ detector: 40, classifier: 10 });
    // The detector's oldest went, every one counted as a quota drop; the classifier's oldest records stay.
    expect(store.dropped).toHaveLength(50);
    expect(store.dropped.every(([, reason]) => reason === 'quota')).toBe(true);
    expect(store.records.filter((r) => r.model === 'detector').map((r) => r.seq)[0]).toBe(61);
    expect(store.records.filter((r) => r.model === 'classifier').map((r) => r.seq)).toEqual([2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
  });

  it('each model keeps its fair share of the quota when every model is over it', () => {
    const store = arrayStore([
      ...interleaved(Stream.STREAM_INFERENCE, 1, 80, ['detector']),
      ...interleaved(Stream.STREAM_INFERENCE, 81, 40, ['classifier']),
      ...interleaved(Stream.STREAM_INFERENCE, 121, 5, ['recognizer']),
    ]);
    runPlan(enforceLimits(store.usage(), { maxBytes: 0, maxRecords: { [Stream.STREAM_INFERENCE]: 65 } }), store.evict);
    // The recognizer holds less than its share (65 / 3) and keeps all; the two others level at 30 each.
    expect(store.left(Stream.STREAM_INFERENCE)).toEqual({ detector: 30, classifier: 30, recognizer: 5 });
  });

  it("a model whose records are in flight holds the stream over its quota rather than taking another model's fair share", () => {
    const detector = interleaved(Stream.STREAM_INFERENCE, 1, 90, ['detector']).map((r, i) => ({ ...r, inFlight: i < 80 }));
    const store = arrayStore([...detector, ...interleaved(Stream.STREAM_INFERENCE, 91, 30, ['classifier'])]);
    runPlan(enforceLimits(store.usage(), { maxBytes: 0, maxRecords: { [Stream.STREAM_INFERENCE]: 50 } }), store.evict);
    // The detector gives the 10 it can; the classifier gives only what it holds above its share of 25.
    expect(store.left(Stream.STREAM_INFERENCE)).toEqual({ detector: 80, classifier: 25 });
  });

  it("over the byte budget, a stream's models are levelled by bytes, the largest first", () => {
    // Samples: 10 large detector samples (100 bytes) and 10 small classifier samples (10 bytes); events stay.
    const store = arrayStore([
      ...rows(Stream.STREAM_EVENTS, 1, 5),
      ...interleaved(Stream.STREAM_SAMPLES, 6, 10, ['detector'], 100),
      ...interleaved(Stream.STREAM_SAMPLES, 16, 10, ['classifier'], 10),
    ]);
    runPlan(enforceLimits(store.usage(), { maxBytes: 50 + 300, maxRecords: {} }), store.evict);
    // 1,150 bytes for 350: the detector goes down to the classifier's 100 bytes, then both share the rest.
    expect(store.records.reduce((n, r) => n + r.bytes, 0)).toBeLessThanOrEqual(350);
    expect(store.left(Stream.STREAM_SAMPLES)).toEqual({ detector: 2, classifier: 10 });
    expect(store.left(Stream.STREAM_EVENTS)).toEqual({ '': 5 });
  });

  it('a full disk levels the models of a stream by bytes too', () => {
    const store = arrayStore([...interleaved(Stream.STREAM_SAMPLES, 1, 20, ['detector']), ...interleaved(Stream.STREAM_SAMPLES, 21, 4, ['classifier'])]);
    runPlan(makeRoom(store.usage(), 100, Stream.STREAM_SAMPLES), store.evict);
    expect(store.left(Stream.STREAM_SAMPLES)).toEqual({ detector: 10, classifier: 4 });
    expect(store.dropped.every(([, reason]) => reason === 'disk_full')).toBe(true);
  });

  it('levelling gives exactly the excess, ties to the owner named first, and nothing below the floor', () => {
    expect(
      levelled(
        [
          ['b', 10],
          ['a', 10],
        ],
        3,
        0,
      ),
    ).toEqual([
      ['a', 2],
      ['b', 1],
    ]);
    expect(
      levelled(
        [
          ['a', 100],
          ['b', 7],
        ],
        50,
        0,
      ),
    ).toEqual([['a', 50]]);
    expect(
      levelled(
        [
          ['a', 100],
          ['b', 70],
        ],
        50,
        0,
      ),
    ).toEqual([
      ['a', 40],
      ['b', 10],
    ]);
    expect(
      levelled(
        [
          ['a', 30],
          ['b', 30],
        ],
        50,
        25,
      ),
    ).toEqual([
      ['a', 5],
      ['b', 5],
    ]);
    expect(levelled([['a', 20]], 5, 25)).toEqual([]);
  });

  it("drop counts per model become event attributes next to the stream's, records of no model under the stream alone", () => {
    const attributes = dropAttributes(
      { 1: { quota: 0, budget: 2, ttl: 0 }, 2: { quota: 12, budget: 0, ttl: 0 } },
      { 1: { '': { budget: 2 } }, 2: { detector: { quota: 10 }, 'classifier.v2': { quota: 2 } } },
    );
    expect(attributes).toEqual({ 'events.budget': '2', 'inference.quota': '12', 'inference.quota@detector': '10', 'inference.quota@classifier.v2': '2' });
  });
});
