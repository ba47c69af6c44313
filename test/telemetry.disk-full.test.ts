/**
 * A full disk and a full budget. The buffer is a real SQLite file; the "disk" is the file's
 * page ceiling (PRAGMA max_page_count, set through maxFileBytes), past which SQLite fails
 * writes with SQLITE_FULL exactly as on a full partition. Then the whole agent, offline
 * behind a dropped link, fills its byte budget: the oldest records of the lowest-priority
 * stream go, the drops are counted and reported upstream, and stored + dropped equals
 * produced, exactly.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { ManualClock } from '../common/clock.js';
import { Stream, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { vibrationRowSampler } from '../demo/model/vibration-data.js';
import { inferOnce } from './helpers/agent-traffic.js';
import { waitFor } from './helpers/processes.js';
import { startTcpProxy } from './helpers/tcp-proxy.js';
import { startEnrolledAgent, startTestControlPlane } from './helpers/wired-agent.js';

const dir = mkdtempSync(join(tmpdir(), 'driftline-disk-full-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const DISK = 96 * 1024;
const body = (i: number, size: number): Uint8Array => new Uint8Array(size).fill(i % 251);

/** Enqueues n records of one stream, `perTick` per group commit; resolves when all are settled. */
async function produce(buffer: SqliteBuffer, clock: ManualClock, stream: Stream, n: number, size: number, perTick = 25): Promise<void> {
  for (let i = 0; i < n; i += perTick) {
    await Promise.all(Array.from({ length: Math.min(perTick, n - i) }, (_, j) => buffer.enqueue({ stream, timeMs: clock.now(), body: body(i + j, size) })));
  }
}

const seqs = (buffer: SqliteBuffer, stream: Stream): number[] => buffer.peekStream(stream, 0, 100_000).map((r) => r.seq);

describe('telemetry on a full disk', () => {
  it('disk full - the buffer keeps accepting, the oldest records of the lowest-priority stream make room, and every record is buffered or counted', async () => {
    const clock = new ManualClock();
    const file = join(dir, 'full.db');
    let buffer = SqliteBuffer.open({ file, synchronous: 'FULL', clock, maxFileBytes: DISK });
    await produce(buffer, clock, Stream.STREAM_EVENTS, 20, 100);
    await produce(buffer, clock, Stream.STREAM_SAMPLES, 100, 300);
    // Far more inference records than the disk holds; none of the enqueues fails.
    await produce(buffer, clock, Stream.STREAM_INFERENCE, 1000, 200);
    const produced = 20 + 100 + 1000;

    const drops = buffer.dropped();
    expect(drops[Stream.STREAM_SAMPLES]!.disk_full).toBe(100);
    expect(drops[Stream.STREAM_INFERENCE]!.disk_full).toBeGreaterThan(0);
    expect(drops[Stream.STREAM_EVENTS]!.disk_full ?? 0).toBe(0);
    // Budget, quota and TTL had nothing to do with it.
    expect(drops[Stream.STREAM_INFERENCE]).toMatchObject({ quota: 0, budget: 0, ttl: 0 });
    expect(buffer.depth() + buffer.droppedTotal()).toBe(produced);
    expect(buffer.depthByStream()).toMatchObject({ [Stream.STREAM_EVENTS]: 20, [Stream.STREAM_SAMPLES]: 0 });
    // What is left of the inference stream is its newest records: a run ending at the last one.
    const inference = seqs(buffer, Stream.STREAM_INFERENCE);
    expect(inference.at(-1)).toBe(produced);
    expect(inference).toEqual(Array.from({ length: inference.length }, (_, i) => produced - inference.length + 1 + i));

    // The counts and the records survive a restart on the same full disk.
    const depth = buffer.depth();
    const dropped = buffer.dropped();
    await buffer.close();
    buffer = SqliteBuffer.open({ file, synchronous: 'FULL', clock, maxFileBytes: DISK });
    expect({ depth: buffer.depth(), dropped: buffer.dropped() }).toEqual({ depth, dropped });

    // Events are never evicted to make room for less important records: those are dropped themselves.
    buffer.acknowledge([{ boot: 1, first: 1, last: produced }]);
    await produce(buffer, clock, Stream.STREAM_EVENTS, 2000, 100);
    const eventsKept = buffer.depthByStream()[Stream.STREAM_EVENTS]!;
    const eventsDropped = buffer.dropped()[Stream.STREAM_EVENTS]!.disk_full ?? 0;
    expect(eventsKept + eventsDropped).toBe(2000);
    await produce(buffer, clock, Stream.STREAM_SAMPLES, 10, 300);
    expect(buffer.depthByStream()[Stream.STREAM_EVENTS]).toBe(eventsKept);
    // The samples got in only where free pages were left, and the rest were dropped themselves.
    expect(buffer.depthByStream()[Stream.STREAM_SAMPLES]! + buffer.dropped()[Stream.STREAM_SAMPLES]!.disk_full! - 100).toBe(10);

    // Once the control plane acknowledges, the freed pages take new records again without drops.
    const before = buffer.droppedTotal();
    buffer.acknowledge([{ boot: 2, first: 1, last: 1_000_000 }]);
    await produce(buffer, clock, Stream.STREAM_INFERENCE, 100, 200);
    expect(buffer.droppedTotal()).toBe(before);
    expect(buffer.depth()).toBe(100);
    await buffer.close();
  });

  it('in flight - records handed to the uplink are never dropped by policy, so no record is both stored and counted as dropped', async () => {
    const clock = new ManualClock();
    const buffer = SqliteBuffer.open({ file: join(dir, 'inflight.db'), synchronous: 'FULL', clock, limits: { maxBytes: 10 * (100 + 40) } });
    await produce(buffer, clock, Stream.STREAM_INFERENCE, 10, 100);
    // The uplink sends the five oldest; the control plane may store them, the ack is not back yet.
    const inFlight = buffer.peekStream(Stream.STREAM_INFERENCE, 0, 5);
    await buffer.markSent(inFlight);
    await produce(buffer, clock, Stream.STREAM_INFERENCE, 5, 100);
    // Five had to go: the five oldest that were not in flight (seq 6..10), not seq 1..5.
    expect(seqs(buffer, Stream.STREAM_INFERENCE)).toEqual([1, 2, 3, 4, 5, 11, 12, 13, 14, 15]);
    expect(buffer.dropped()[Stream.STREAM_INFERENCE]!.budget).toBe(5);
    // Once acknowledged they leave, and the budget takes the oldest of the rest again.
    expect(buffer.acknowledge([{ boot: buffer.boot, first: 1, last: 5 }])).toBe(5);
    await produce(buffer, clock, Stream.STREAM_INFERENCE, 5, 100);
    expect(seqs(buffer, Stream.STREAM_INFERENCE)).toEqual([11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    // Stored (acknowledged) + dropped + buffered == produced.
    expect(5 + buffer.droppedTotal() + buffer.depth()).toBe(20);
    await buffer.close();
  });

  it('disk full, whole agent - buffer.maxFileBytes caps buffer.db; offline inference fills it, every request is answered, and stored + dropped == produced', async () => {
    const device = 'edge-full-disk';
    const { cp, api } = await startTestControlPlane(dir, { name: 'cp-disk' });
    const proxy = await startTcpProxy(Number(new URL(cp.addresses.mqtt).port));
    const agent = await startEnrolledAgent(
      cp,
      api,
      device,
      join(dir, 'agent-disk'),
      {
        mqtt: { url: `mqtt://${proxy.address}`, keepalive: '1s', reconnectMin: '50ms', reconnectMax: '300ms', connectTimeout: '1s' },
        // The "disk": buffer.db may not grow past this; the byte budget is far away.
        buffer: { maxFileBytes: '96KiB', maxBytes: '1GiB' },
        uplink: { ackTimeout: '1s' },
        schedule: { uplinkCheck: '* * * * * *' },
      },
      { byHand: ['bufferMaintenance', 'heartbeat', 'system', 'driftWindow'] },
    );
    try {
      await api.uploadModel('vibration', buildDemoModel({}).bytes);
      await api.deploy('vibration', [device]);
      await waitFor(
        () => inferOnce(agent.localApiUrl, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
        (s) => s === 200,
        { what: 'model active on the agent' },
      );
      let ok = 1;
      await waitFor(
        () => agent.stats(),
        (s) => s.bufferDepth === 0,
        { what: 'caught up before going offline' },
      );
      proxy.setMode('drop');
      await waitFor(
        () => fetch(`${agent.localApiUrl}/healthz`).then((r) => r.json() as Promise<{ details: { uplinkConnected: boolean } }>),
        (h) => !h.details.uplinkConnected,
        { what: 'the agent sees the link down' },
      );
      const next = vibrationRowSampler(11);
      // About 1,500 inference records do not fit in 96 KiB with SQLite's pages and WAL.
      const failures: unknown[] = [];
      for (let i = 0; i < 1500; i++) {
        const r = await inferOnce(agent.localApiUrl, next().features);
        if (r.status === 200) ok++;
        else if (failures.length < 3) failures.push({ status: r.status, body: r.body });
      }
      expect(failures).toEqual([]);
      expect(ok).toBe(1501);
      proxy.setMode('pass');
      await waitFor(
        () => agent.stats(),
        (s) => s.bufferDepth === 0,
        { what: 'buffer drained' },
      );
      await agent.shutdown();
      const buffer = new Database(join(dir, 'agent-disk', 'buffer.db'), { readonly: true });
      const drops = JSON.parse((buffer.prepare(`SELECT value FROM agent_state WHERE key = 'buffer.drops'`).get() as { value: string }).value) as Record<
        string,
        Record<string, number>
      >;
      buffer.close();
      const inferenceDrops = Object.values(drops[Stream.STREAM_INFERENCE] ?? {}).reduce((a, b) => a + b, 0);
      expect(inferenceDrops).toBeGreaterThan(0);
      const store = new Database(join(dir, 'cp-disk', 'control-plane.db'), { readonly: true });
      const rows = store
        .prepare(`SELECT count(*) AS n, count(DISTINCT seq) AS d FROM telemetry_records WHERE device_id = ? AND kind = 'inference'`)
        .get(device) as { n: number; d: number };
      store.close();
      // Each answered request made one inference record: stored once, or counted as dropped.
      expect(rows.n).toBe(rows.d);
      expect(rows.n + inferenceDrops).toBe(ok);
    } finally {
      await agent.shutdown();
      await proxy.close();
      api.close();
      await cp.shutdown();
    }
  });

  it('budget full - an offline agent drops its oldest inference records, reports the drops upstream, and stored + dropped == produced', async () => {
    const device = 'edge-full-budget';
    const { cp, api } = await startTestControlPlane(dir);
    const proxy = await startTcpProxy(Number(new URL(cp.addresses.mqtt).port));
    const agentDir = join(dir, 'agent');
    const committedSeq = (): number => {
      const db = new Database(join(agentDir, 'buffer.db'), { readonly: true });
      try {
        return (db.prepare(`SELECT seq FROM sqlite_sequence WHERE name = 'outbox'`).get() as { seq: number }).seq;
      } finally {
        db.close();
      }
    };
    const dropReportsBuffered = (): number => {
      const db = new Database(join(agentDir, 'buffer.db'), { readonly: true });
      try {
        const bodies = db.prepare('SELECT body FROM outbox WHERE stream = ?').all(Stream.STREAM_EVENTS) as Array<{ body: Buffer }>;
        return bodies.filter(({ body }) => {
          const b = TelemetryRecord.decode(body).body;
          return b?.$case === 'event' && b.value.kind === 'buffer.dropped';
        }).length;
      } finally {
        db.close();
      }
    };
    const agent = await startEnrolledAgent(
      cp,
      api,
      device,
      agentDir,
      {
        mqtt: { url: `mqtt://${proxy.address}`, keepalive: '1s', reconnectMin: '50ms', reconnectMax: '300ms', connectTimeout: '1s' },
        // Room for a hundred or so inference records.
        buffer: { maxBytes: 12 * 1024 },
        // At most 10 records in flight: the budget always finds inference records it may drop, so the
        // events stream never has to give (records in flight stay, retention.ts), however the sends race.
        uplink: { ackTimeout: '1s', maxBatchRecords: 10, maxInflightBatches: 1 },
        // Maintenance every second reports the drop counts as an event.
        schedule: { uplinkCheck: '* * * * * *', bufferMaintenance: '* * * * * *' },
      },
      { byHand: ['heartbeat', 'system', 'driftWindow'] },
    );
    try {
      await api.uploadModel('vibration', buildDemoModel({}).bytes);
      await api.deploy('vibration', [device]);
      let ok = 0;
      await waitFor(
        () => inferOnce(agent.localApiUrl, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
        (s) => s === 200,
        { what: 'model active on the agent' },
      );
      ok++;
      await waitFor(
        () => agent.stats(),
        (s) => s.bufferDepth === 0,
        { what: 'caught up before going offline' },
      );

      // Offline: the link refuses every connection while inference goes on.
      proxy.setMode('drop');
      await waitFor(
        () => fetch(`${agent.localApiUrl}/healthz`).then((r) => r.json() as Promise<{ details: { uplinkConnected: boolean } }>),
        (h) => !h.details.uplinkConnected,
        { what: 'the agent sees the link down' },
      );
      const lastSeqOnline = committedSeq();
      const next = vibrationRowSampler(9);
      for (let i = 0; i < 400; i++) if ((await inferOnce(agent.localApiUrl, next().features)).status === 200) ok++;
      expect(ok).toBe(401);
      // The drop report, an event (the most important stream), is buffered while still offline.
      await waitFor(dropReportsBuffered, (n) => n > 0, { what: 'a buffer.dropped event in the buffer' });
      expect(agent.stats().recordsDropped).toBeGreaterThan(0);
      proxy.setMode('pass');
      await waitFor(
        () => agent.stats(),
        (s) => s.bufferDepth === 0,
        { what: 'buffer drained' },
      );
      // A clean stop drains and sends a last state report.
      await agent.shutdown();
      const final = agent.stats();
      const { recordsDropped } = final;

      // Upstream: the reported state carries the drop count, as the fleet API shows it.
      await waitFor(
        () => api.summary(device),
        (s) => s.devices[0]?.droppedRecords === recordsDropped,
        { what: 'drops in the reported state' },
      );

      const buffer = new Database(join(agentDir, 'buffer.db'), { readonly: true });
      const drops = JSON.parse((buffer.prepare(`SELECT value FROM agent_state WHERE key = 'buffer.drops'`).get() as { value: string }).value) as Record<
        string,
        Record<string, number>
      >;
      buffer.close();
      const committed = committedSeq();
      // Only inference records went, all to the budget.
      expect(drops).toMatchObject({ [Stream.STREAM_EVENTS]: { budget: 0 }, [Stream.STREAM_INFERENCE]: { quota: 0, budget: recordsDropped, ttl: 0 } });

      const store = new Database(join(dir, 'cp', 'control-plane.db'), { readonly: true });
      const rows = store.prepare('SELECT seq, kind, record FROM telemetry_records WHERE device_id = ? ORDER BY seq').all(device) as Array<{
        seq: number;
        kind: string;
        record: Buffer;
      }>;
      store.close();
      // Exact accounting: every record produced is stored once or counted as dropped.
      expect(final.recordsEnqueued).toBe(committed);
      expect(rows.length + recordsDropped).toBe(final.recordsEnqueued);
      expect(new Set(rows.map((r) => r.seq)).size).toBe(rows.length);
      expect(rows.filter((r) => r.kind === 'inference').length + recordsDropped).toBe(ok);
      // The oldest went: the first record made offline is missing, the newest inference record is stored.
      const stored = new Set(rows.map((r) => r.seq));
      const missing = Array.from({ length: committed }, (_, i) => i + 1).filter((s) => !stored.has(s));
      expect(missing).toHaveLength(recordsDropped);
      expect(missing[0]).toBe(lastSeqOnline + 1);
      expect(missing.at(-1)!).toBeLessThan(Math.max(...rows.filter((r) => r.kind === 'inference').map((r) => r.seq)));
      // And the drop report itself arrived, with the final counts.
      const reports = rows
        .filter((r) => r.kind === 'event')
        .map((r) => TelemetryRecord.decode(r.record).body)
        .filter((b) => b?.$case === 'event' && b.value.kind === 'buffer.dropped');
      expect(reports.length).toBeGreaterThan(0);
      // (Each report is itself a record, so it can push one more inference record out: counts lag by at most that.)
      const reportedCounts = reports.map((r) => (r?.$case === 'event' ? Number(r.value.attributes['inference.budget']) : 0));
      expect(reportedCounts.every((n, i) => n > 0 && n <= recordsDropped && (i === 0 || n > reportedCounts[i - 1]!))).toBe(true);
    } finally {
      await agent.shutdown();
      await proxy.close();
      api.close();
      await cp.shutdown();
    }
  });
});
