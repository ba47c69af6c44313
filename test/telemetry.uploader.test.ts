import { mkdtempSync, rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { TelemetryUploader } from '../agent/telemetry/uploader.js';
import { MqttUplink } from '../agent/uplink/mqtt/mqtt-uplink.js';
import { systemClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { Stream, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { EmbeddedMqttLink } from '../control-plane/device-link/embedded-mqtt/embedded-mqtt-link.js';
import { parseControlPlaneConfig } from '../control-plane/config.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { TelemetryIngest } from '../control-plane/telemetry/ingest.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';
import { waitFor } from './helpers/processes.js';
import { walCommits } from './helpers/sqlite-wal.js';
import { defaultBrokerLimits } from './helpers/mqtt.js';

/**
 * The uploader against the real embedded device link and ingest, no faults: a backlog drains by
 * priority, live records overtake it, and nothing is sent twice.
 */
const DEVICE = 'edge-uploader';
const logger = silentLogger();

describe('telemetry uploader draining a backlog', () => {
  let dir: string;
  let link: EmbeddedMqttLink;
  let ingest: TelemetryIngest;
  let db: ReturnType<typeof openDatabase>;
  /** (seq, stream) of every record as it reached the control plane, in arrival order. */
  const arrivals: Array<{ seq: number; stream: Stream }> = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-uploader-'));
    link = new EmbeddedMqttLink({
      host: '127.0.0.1',
      port: 0,
      maxPacketBytes: 1024 * 1024,
      ...defaultBrokerLimits(),
      verifyDeviceCredential: (id) => (id.startsWith(DEVICE) ? 'ok' : 'unknown'),
      logger,
    });
    db = openDatabase(join(dir, 'control-plane.db'));
    ingest = new TelemetryIngest({
      repository: new SqliteTelemetryRepository(db),
      devices: { recordSeen: async () => undefined, saveReported: async () => undefined, getDesired: async () => undefined },
      downlink: link,
      clock: systemClock,
      logger,
      // The configured ingest limits without the per-device rate limit: one device sends as fast as it can here.
      limits: { ...parseControlPlaneConfig({ dataDir: dir }).ingest, deviceRate: undefined },
    });
    await link.start((id, channel, payload) => {
      if (channel === 'telemetry') for (const r of TelemetryBatch.decode(payload).records) arrivals.push({ seq: r.seq, stream: r.stream });
      return ingest.handle(id, channel, payload);
    });
  });

  afterAll(async () => {
    await link?.shutdown();
    db?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('drains events first, lets live records overtake the backlog, and sends no record twice', async () => {
    const buffer = SqliteBuffer.open({ file: join(dir, 'buffer.db'), synchronous: 'NORMAL' });
    const enqueue = (stream: Stream, n: number) =>
      Promise.all(
        Array.from({ length: n }, (_, i) => {
          const timeMs = Date.now();
          const body = TelemetryRecord.encode({
            boot: 0,
            seq: 0,
            timeMs,
            stream,
            body: { $case: 'event', value: { kind: 'test', message: String(i), attributes: {} } },
          }).finish();
          return buffer.enqueue({ stream, timeMs, body });
        }),
      );
    // The backlog of an outage: samples and inference records first, events last.
    await enqueue(Stream.STREAM_SAMPLES, 300);
    await enqueue(Stream.STREAM_INFERENCE, 1500);
    await enqueue(Stream.STREAM_EVENTS, 40);
    const backlogEnd = buffer.depth();
    const uplink = new MqttUplink({
      url: link.deviceUrl,
      deviceId: DEVICE,
      password: 'x',
      keepaliveSeconds: 30,
      reconnectMinMs: 100,
      reconnectMaxMs: 1000,
      connectTimeoutMs: 5000,
      publishTimeoutMs: 30_000,
      logger,
    });
    const uploader = new TelemetryUploader({
      buffer,
      uplink,
      clock: systemClock,
      logger,
      maxBatchRecords: 50,
      maxInflightBatches: 2,
      batchDelayMs: 1,
      ackTimeoutMs: 60_000,
      compressMinBytes: 0,
      liveEvery: 4,
    });
    await uplink.start();
    // Live records arrive while the backlog drains.
    await waitFor(
      async () => arrivals.length,
      (n) => n >= 200,
      { what: 'the drain under way' },
    );
    await enqueue(Stream.STREAM_INFERENCE, 20);
    uploader.notify();
    expect(await uploader.drain(60_000)).toBe(true);
    uploader.stop();
    await uplink.shutdown();
    await buffer.close();

    const total = backlogEnd + 20;
    const stored = db.prepare(`SELECT count(*) AS n, count(DISTINCT seq) AS d FROM telemetry_records WHERE device_id = ?`).get(DEVICE) as {
      n: number;
      d: number;
    };
    expect(stored).toEqual({ n: total, d: total });
    // Nothing went twice: not stored twice, not even sent twice.
    expect(arrivals).toHaveLength(total);
    expect(ingest.stats.duplicates).toBe(0);
    expect(uploader.stats.resends).toBe(0);
    // Priority: every event before any sample; the live records before the backlog's last inference record.
    const index = (pred: (a: { seq: number; stream: Stream }) => boolean) => arrivals.findIndex(pred);
    const lastEvent = arrivals.map((a) => a.stream).lastIndexOf(Stream.STREAM_EVENTS);
    expect(lastEvent).toBeLessThan(index((a) => a.stream === Stream.STREAM_SAMPLES));
    const lastBacklogInference = arrivals.map((a) => a.stream === Stream.STREAM_INFERENCE && a.seq <= backlogEnd).lastIndexOf(true);
    expect(index((a) => a.seq > backlogEnd)).toBeLessThan(lastBacklogInference);
  });

  it('under steady traffic, with live batches on, sends every record exactly once', async () => {
    arrivals.length = 0;
    const buffer = SqliteBuffer.open({ file: join(dir, 'buffer-steady.db'), synchronous: 'NORMAL' });
    const uplink = new MqttUplink({
      url: link.deviceUrl,
      deviceId: `${DEVICE}-steady`,
      password: 'x',
      keepaliveSeconds: 30,
      reconnectMinMs: 100,
      reconnectMaxMs: 1000,
      connectTimeoutMs: 5000,
      publishTimeoutMs: 30_000,
      logger,
    });
    const uploader = new TelemetryUploader({
      buffer,
      uplink,
      clock: systemClock,
      logger,
      maxBatchRecords: 20,
      maxInflightBatches: 4,
      batchDelayMs: 1,
      ackTimeoutMs: 60_000,
      compressMinBytes: 0,
      liveEvery: 4,
    });
    await uplink.start();
    const duplicatesBefore = ingest.stats.duplicates;
    let enqueued = 0;
    // Bursts of records as inference traffic makes them, each burst handed to the uploader at once.
    for (let burst = 0; burst < 150; burst++) {
      await Promise.all(
        Array.from({ length: 7 }, () => {
          const timeMs = Date.now();
          const body = TelemetryRecord.encode({
            boot: 0,
            seq: 0,
            timeMs,
            stream: Stream.STREAM_INFERENCE,
            body: { $case: 'event', value: { kind: 'test', message: '', attributes: {} } },
          }).finish();
          enqueued++;
          return buffer.enqueue({ stream: Stream.STREAM_INFERENCE, timeMs, body });
        }),
      );
      uploader.notify();
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(await uploader.drain(60_000)).toBe(true);
    uploader.stop();
    await uplink.shutdown();
    await buffer.close();
    // Before the fix, batches sent between CONNACK and SUBACK and records a live batch had
    // carried went a second time (7-10 % of a demo's telemetry).
    expect(new Set(arrivals.map((a) => a.seq)).size).toBe(enqueued);
    expect(arrivals).toHaveLength(enqueued);
    expect(ingest.stats.duplicates - duplicatesBefore).toBe(0);
  });
  it("group commit - sent marks and ack deletes ride in the records' commits: one fsync'd transaction per window, not one each", async () => {
    arrivals.length = 0;
    const file = join(dir, 'buffer-commits.db');
    // The test decides when each commit window closes.
    const windows: Array<() => void> = [];
    const buffer = SqliteBuffer.open({
      file,
      synchronous: 'FULL',
      commitDelayMs: 20,
      scheduleCommit: (commit) => {
        windows.push(commit);
        return () => undefined;
      },
    });
    const closeWindow = () => {
      for (const commit of windows.splice(0)) commit();
    };
    const enqueue = (n: number) =>
      Promise.all(
        Array.from({ length: n }, () => {
          const timeMs = Date.now();
          const body = TelemetryRecord.encode({
            boot: 0,
            seq: 0,
            timeMs,
            stream: Stream.STREAM_INFERENCE,
            body: { $case: 'event', value: { kind: 'test', message: '', attributes: {} } },
          }).finish();
          return buffer.enqueue({ stream: Stream.STREAM_INFERENCE, timeMs, body });
        }),
      );
    /** The rows in the file, from another connection, and which of them are marked sent. */
    const fileRows = () => {
      const db = new Database(file, { readonly: true });
      try {
        return db.prepare('SELECT seq, sent FROM outbox ORDER BY seq').all() as Array<{ seq: number; sent: number }>;
      } finally {
        db.close();
      }
    };
    const range = (first: number, last: number) => Array.from({ length: last - first + 1 }, (_, i) => first + i);
    const uplink = new MqttUplink({
      url: link.deviceUrl,
      deviceId: `${DEVICE}-commits`,
      password: 'x',
      keepaliveSeconds: 30,
      reconnectMinMs: 100,
      reconnectMaxMs: 1000,
      connectTimeoutMs: 5000,
      publishTimeoutMs: 30_000,
      logger,
    });
    const uploader = new TelemetryUploader({
      buffer,
      uplink,
      clock: systemClock,
      logger,
      maxBatchRecords: 500,
      maxInflightBatches: 4,
      batchDelayMs: 1,
      ackTimeoutMs: 60_000,
      compressMinBytes: 0,
      liveEvery: 0,
    });
    await uplink.start();
    await waitFor(
      () => uplink.connected,
      (c) => c,
      { what: 'the uplink connected' },
    );
    const base = walCommits(file);
    const commits = () => walCommits(file) - base;

    // Window 1: ten inference records, one commit.
    const first = enqueue(10);
    closeWindow();
    await first;
    expect(commits()).toBe(1);

    // The uploader takes them: their mark waits for the next window, and nothing goes out before it is durable.
    uploader.notify();
    await waitFor(
      () => windows.length,
      (n) => n === 1,
      { what: 'the sent mark waiting for a window' },
    );
    expect(commits()).toBe(1);
    expect(arrivals).toHaveLength(0);
    // Window 2: the next records and the mark, one commit; then the batch goes.
    const second = enqueue(10);
    closeWindow();
    await second;
    expect(commits()).toBe(2);
    expect(
      fileRows()
        .filter((r) => r.sent === 1)
        .map((r) => r.seq),
    ).toEqual(range(1, 10));
    // Stored and acknowledged: gone from the buffer at once, the rows' delete waits for a window.
    await waitFor(
      () => buffer.depth(),
      (d) => d === 10,
      { what: 'the ack of the first batch' },
    );
    expect(arrivals.map((a) => a.seq)).toEqual(range(1, 10));
    expect(buffer.peek(100, 0).map((r) => r.seq)).toEqual(range(11, 20));
    expect(commits()).toBe(2);
    expect(fileRows()).toHaveLength(20);

    // Window 3: the deletes, the second batch's mark and ten new records, one commit.
    await waitFor(
      () => uploader.stats.batchesSent,
      (n) => n === 2,
      { what: 'the second batch taken' },
    );
    const third = enqueue(10);
    closeWindow();
    await third;
    expect(commits()).toBe(3);
    expect(fileRows()).toEqual(range(11, 30).map((seq) => ({ seq, sent: seq <= 20 ? 1 : 0 })));

    // Three windows cost three transactions where the records, two marks and an ack used to cost six.
    await waitFor(
      () => buffer.depth(),
      (d) => d === 10,
      { what: 'the ack of the second batch' },
    );
    uploader.stop();
    await uplink.shutdown();
    await buffer.close();
    expect(arrivals.map((a) => a.seq)).toEqual(range(1, 20));
    expect(fileRows().map((r) => r.seq)).toEqual(range(21, 30));
  });
});
