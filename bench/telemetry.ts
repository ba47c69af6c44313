/**
 * npm run bench:telemetry: the agent buffer against raw better-sqlite3 at the same
 * durability (WAL, synchronous=FULL) and batch size, then the whole path
 * agent buffer -> MQTT broker -> control-plane store, acknowledged: the agent in the main
 * thread, the control plane (broker, ingest, store) in a worker thread.
 * Prints one JSON line of figures last.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { systemClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { Outcome, Stream, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { TelemetryUploader } from '../agent/telemetry/uploader.js';
import { MqttUplink } from '../agent/uplink/mqtt/mqtt-uplink.js';

const BUFFER_RECORDS = Number(process.env.BENCH_BUFFER_RECORDS ?? 300_000);
const E2E_RECORDS = Number(process.env.BENCH_E2E_RECORDS ?? 200_000);
/** Records enqueued per event-loop turn (one group commit), and per raw transaction. */
const BATCH = Number(process.env.BENCH_BATCH ?? 1000);

const dir = mkdtempSync(join(tmpdir(), 'driftline-bench-telemetry-'));
const log = (line: string): void => void process.stderr.write(`${line}\n`);

function body(i: number): Uint8Array {
  return TelemetryRecord.encode({
    boot: 0,
    seq: 0,
    timeMs: 1_700_000_000_000 + i,
    stream: Stream.STREAM_INFERENCE,
    body: {
      $case: 'inference',
      value: {
        model: 'vibration',
        version: 3,
        provider: 'cpu',
        latencyMs: 0.8 + (i % 7) / 10,
        outcome: Outcome.OUTCOME_OK,
        topClass: i % 4,
        confidence: 0.9,
        errorCode: '',
        batchSize: 1,
      },
    },
  }).finish();
}

function rawRate(bodies: Uint8Array[]): number {
  const db = new Database(join(dir, 'raw.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(
    'CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, boot INTEGER NOT NULL, stream INTEGER NOT NULL, time_ms INTEGER NOT NULL, body BLOB NOT NULL)',
  );
  const insert = db.prepare('INSERT INTO outbox (boot, stream, time_ms, body) VALUES (?, ?, ?, ?)');
  const tx = db.transaction((from: number, to: number) => {
    for (let i = from; i < to; i++) insert.run(1, Stream.STREAM_INFERENCE, 1_700_000_000_000 + i, bodies[i]!);
  });
  const started = performance.now();
  for (let i = 0; i < bodies.length; i += BATCH) tx(i, Math.min(bodies.length, i + BATCH));
  const seconds = (performance.now() - started) / 1000;
  db.close();
  return bodies.length / seconds;
}

async function bufferRate(bodies: Uint8Array[]): Promise<number> {
  const buffer = SqliteBuffer.open({ file: join(dir, 'buffer.db'), synchronous: 'FULL', limits: { maxBytes: 1024 ** 3 } });
  const started = performance.now();
  for (let i = 0; i < bodies.length; i += BATCH) {
    const turn: Promise<void>[] = [];
    for (let j = i; j < Math.min(bodies.length, i + BATCH); j++)
      turn.push(buffer.enqueue({ stream: Stream.STREAM_INFERENCE, timeMs: 1_700_000_000_000 + j, body: bodies[j]!, model: 'vibration' }));
    await Promise.all(turn);
  }
  const seconds = (performance.now() - started) / 1000;
  await buffer.close();
  return bodies.length / seconds;
}

async function endToEnd(bodies: Uint8Array[]): Promise<{ rate: number; lost: number; duplicatesStored: number; resends: number }> {
  const logger = silentLogger();
  const deviceId = 'bench-device';
  // Worker threads do not inherit tsx's loader: the entry registers it, then imports the TypeScript module.
  const entry = new URL('./telemetry-control-plane.ts', import.meta.url).href;
  const controlPlane = new Worker(`import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(entry)}); });`, {
    eval: true,
    workerData: { dir, deviceId },
  });
  const next = (): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      controlPlane.once('message', resolve);
      controlPlane.once('error', reject);
    });
  const { url } = (await next()) as { url: string };
  const buffer = SqliteBuffer.open({ file: join(dir, 'agent-e2e.db'), synchronous: 'FULL', limits: { maxBytes: 1024 ** 3 } });
  for (let i = 0; i < bodies.length; i += BATCH) {
    await Promise.all(
      bodies
        .slice(i, i + BATCH)
        .map((b, j) => buffer.enqueue({ stream: Stream.STREAM_INFERENCE, timeMs: 1_700_000_000_000 + i + j, body: b, model: 'vibration' })),
    );
  }
  const uplink = new MqttUplink({
    url,
    deviceId,
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
    maxBatchRecords: 5000,
    maxInflightBatches: 8,
    batchDelayMs: 5,
    ackTimeoutMs: 60_000,
    compressMinBytes: 0,
  });
  const started = performance.now();
  await uplink.start();
  const drained = await uploader.drain(120_000);
  const seconds = (performance.now() - started) / 1000;
  if (!drained) log(`e2e: not drained, ${buffer.depth()} records left`);
  uploader.stop();
  await uplink.shutdown();
  await buffer.close();
  controlPlane.postMessage('finish');
  const { stored, distinct } = (await next()) as { stored: number; distinct: number };
  await controlPlane.terminate();
  return { rate: bodies.length / seconds, lost: bodies.length - distinct, duplicatesStored: stored - distinct, resends: uploader.stats.resends };
}

async function main(): Promise<void> {
  const bodies = Array.from({ length: BUFFER_RECORDS }, (_, i) => body(i));
  // Warm both paths once (page cache, JIT), then measure raw, buffer, raw again and keep the better raw.
  rawRate(bodies.slice(0, 20_000));
  rmSync(join(dir, 'raw.db'), { force: true });
  await bufferRate(bodies.slice(0, 20_000));
  rmSync(join(dir, 'buffer.db'), { force: true });
  const raw1 = rawRate(bodies);
  rmSync(join(dir, 'raw.db'), { force: true });
  const buffered = await bufferRate(bodies);
  const raw2 = rawRate(bodies);
  const raw = Math.max(raw1, raw2);
  log(`raw better-sqlite3: ${Math.round(raw1)} / ${Math.round(raw2)} records/s; agent buffer: ${Math.round(buffered)} records/s (FULL, WAL, batch ${BATCH})`);
  const e2e = await endToEnd(bodies.slice(0, E2E_RECORDS));
  log(`end to end: ${Math.round(e2e.rate)} records/s, lost ${e2e.lost}, duplicates stored ${e2e.duplicatesStored}, resends ${e2e.resends}`);
  rmSync(dir, { recursive: true, force: true });
  console.log(
    JSON.stringify({
      buffer_vs_raw: Number((buffered / raw).toFixed(3)),
      buffer_records_per_s: Math.round(buffered),
      raw_records_per_s: Math.round(raw),
      e2e_records_per_s: Math.round(e2e.rate),
      lost: e2e.lost,
      duplicates_stored: e2e.duplicatesStored,
      synchronous: 'FULL',
      batch: BATCH,
      buffer_records: BUFFER_RECORDS,
      e2e_records: E2E_RECORDS,
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
