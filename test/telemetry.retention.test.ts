import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { Stream, TelemetryRecord as TelemetryRecordCodec } from '../common/proto/driftline/v1/device_link.js';
import { ManualClock } from '../common/clock.js';
import { silentLogger, type Logger } from '../common/logger.js';
import { type TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { DriftlineError } from '../common/errors.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';
import { RetentionPruner, type PrunableStore } from '../control-plane/telemetry/retention-pruner.js';
import { inferenceRecord } from './helpers/telemetry-records.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

const inference = (seq: number, timeMs: number): TelemetryRecord => inferenceRecord({ seq, timeMs });

const retention = { rawMs: DAY, minuteMs: DAY, hourMs: 30 * DAY };

describe('telemetry retention', () => {
  it('telemetry - the retention pruner deletes raw records past their retention and keeps the newer ones', async () => {
    const db = openDatabase(':memory:');
    const clock = new ManualClock();
    const telemetry = new SqliteTelemetryRepository(db);
    await telemetry.commit('edge-1', [inference(1, clock.now())], clock.now());
    clock.advance(2 * DAY);
    await telemetry.commit('edge-1', [inference(2, clock.now())], clock.now());
    const pruner = RetentionPruner.create({ stores: [telemetry], retention, intervalMs: HOUR, clock, logger: silentLogger() });

    await pruner.pruneNow();

    const seqs = (db.prepare('SELECT seq FROM telemetry_records ORDER BY seq').all() as Array<{ seq: number }>).map((r) => r.seq);
    expect(seqs).toEqual([2]);
    db.close();
  });

  it('telemetry - a store whose retention pass fails is logged and the other stores are still pruned', async () => {
    const clock = new ManualClock();
    const warnings: unknown[] = [];
    const logger = { ...silentLogger(), warn: (obj: unknown) => warnings.push(obj) } as unknown as Logger;
    const pruned: number[] = [];
    const failing: PrunableStore = { prune: async () => Promise.reject(new DriftlineError('STORE_FAILED', 'database is locked')) };
    const working: PrunableStore = {
      prune: async (nowMs) => {
        pruned.push(nowMs);
        return 0;
      },
    };
    const pruner = RetentionPruner.create({ stores: [failing, working], retention, intervalMs: HOUR, clock, logger });

    await pruner.pruneNow();

    expect(pruned).toEqual([clock.now()]);
    expect(warnings).toEqual([{ err: expect.objectContaining({ code: 'STORE_FAILED' }) }]);
  });
});

const dir = mkdtempSync(join(tmpdir(), 'driftline-buffer-models-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const bufferFile = (): string => join(dir, `buffer-${++files}.db`);
const encoded = (model: string, i: number): Uint8Array => TelemetryRecordCodec.encode(inferenceRecord({ seq: 0, timeMs: i }, { model })).finish();

async function serve(buffer: SqliteBuffer, model: string, n: number, from = 0): Promise<void> {
  await Promise.all(
    Array.from({ length: n }, (_, i) => buffer.enqueue({ stream: Stream.STREAM_INFERENCE, timeMs: from + i, body: encoded(model, from + i), model })),
  );
}

describe('agent buffer retention between models (SQLite)', () => {
  it("a busy model cannot starve another's records: the busy one loses its oldest, the quiet one keeps all its records", async () => {
    const buffer = SqliteBuffer.open({ file: bufferFile(), synchronous: 'NORMAL', limits: { maxRecords: { [Stream.STREAM_INFERENCE]: 100 } } });
    await serve(buffer, 'classifier', 20);
    for (let turn = 0; turn < 10; turn++) await serve(buffer, 'detector', 500, turn * 500);
    expect(buffer.depthByStream()[Stream.STREAM_INFERENCE]).toBe(100);
    expect(Object.fromEntries(Object.entries(buffer.depthByModel()[Stream.STREAM_INFERENCE]!).map(([m, u]) => [m, u.records]))).toEqual({
      classifier: 20,
      detector: 80,
    });
    // What is left of the detector are its newest records.
    const detector = buffer.peekStream(Stream.STREAM_INFERENCE, 0, 200).filter((r) => r.seq > 20);
    expect(detector[0]!.seq).toBe(20 + 5000 - 80 + 1);
    expect(buffer.droppedByModel()[Stream.STREAM_INFERENCE]).toEqual({ detector: { quota: 4920 } });
    expect(buffer.dropped()[Stream.STREAM_INFERENCE]!.quota).toBe(4920);
    await buffer.close();
  });

  it('two busy models share the byte budget, and the drop counts per model survive a restart', async () => {
    const path = bufferFile();
    const limits = { maxBytes: 200 * (encoded('detector', 0).length + 40) };
    let buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', limits });
    await serve(buffer, 'detector', 300);
    await serve(buffer, 'classifier', 150);
    await buffer.close();
    buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', limits });
    const held = buffer.depthByModel()[Stream.STREAM_INFERENCE]!;
    expect(held.detector!.records + held.classifier!.records).toBeLessThanOrEqual(200);
    // Levelled by bytes: a classifier record is two bytes larger (its name), so it keeps a few records fewer than half.
    expect(Math.abs(held.classifier!.bytes - held.detector!.bytes)).toBeLessThanOrEqual(2 * (encoded('classifier', 0).length + 40));
    expect(held.classifier!.records).toBeGreaterThanOrEqual(90);
    const byModel = buffer.droppedByModel()[Stream.STREAM_INFERENCE]!;
    expect((byModel.detector?.budget ?? 0) + (byModel.classifier?.budget ?? 0)).toBe(buffer.dropped()[Stream.STREAM_INFERENCE]!.budget);
    expect(buffer.depth() + buffer.droppedTotal()).toBe(450);
    await buffer.close();
  });

  it('a buffer file of an agent from before keeps its records and learns their models from their bodies', async () => {
    const path = bufferFile();
    // The outbox as agents before the sent mark and the model column created it.
    const old = new Database(path);
    old.pragma('journal_mode = WAL');
    old.exec(`
      CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, boot INTEGER NOT NULL, stream INTEGER NOT NULL, time_ms INTEGER NOT NULL, body BLOB NOT NULL);
      CREATE INDEX outbox_stream ON outbox (stream);
      CREATE TABLE agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT INTO agent_state (key, value) VALUES ('boot', '4'), ('buffer.drops', '{"2":{"quota":7,"budget":0,"ttl":0}}');
    `);
    const insert = old.prepare('INSERT INTO outbox (boot, stream, time_ms, body) VALUES (4, ?, ?, ?)');
    for (let i = 0; i < 30; i++) insert.run(Stream.STREAM_INFERENCE, i, encoded(i < 25 ? 'detector' : 'classifier', i));
    insert.run(
      Stream.STREAM_EVENTS,
      30,
      TelemetryRecordCodec.encode({
        boot: 0,
        seq: 0,
        timeMs: 30,
        stream: Stream.STREAM_EVENTS,
        body: { $case: 'event', value: { kind: 'k', message: 'm', attributes: {} } },
      }).finish(),
    );
    old.close();

    const buffer = SqliteBuffer.open({ file: path, synchronous: 'FULL', limits: { maxRecords: { [Stream.STREAM_INFERENCE]: 20 } } });
    expect(buffer.boot).toBe(5);
    expect(buffer.depth()).toBe(31);
    expect(buffer.dropped()[Stream.STREAM_INFERENCE]!.quota).toBe(7);
    expect(Object.fromEntries(Object.entries(buffer.depthByModel()[Stream.STREAM_INFERENCE]!).map(([m, u]) => [m, u.records]))).toEqual({
      detector: 25,
      classifier: 5,
    });
    expect(buffer.peek(100, 0).map((r) => r.seq)).toEqual(Array.from({ length: 31 }, (_, i) => i + 1));
    // The next commit applies the fair shares to the old records too: the detector gives.
    await serve(buffer, 'classifier', 1, 100);
    expect(Object.fromEntries(Object.entries(buffer.depthByModel()[Stream.STREAM_INFERENCE]!).map(([m, u]) => [m, u.records]))).toEqual({
      detector: 14,
      classifier: 6,
    });
    await buffer.close();
    // Opening it again migrates nothing more and loses nothing.
    const again = SqliteBuffer.open({ file: path, synchronous: 'FULL' });
    expect(again.depth()).toBe(21);
    await again.close();
  });
});
