/**
 * Captured samples at the control plane, through the real ingest path (TelemetryIngest over the
 * telemetry repository and its routes) into a real SQLite file: request ids, labels joined
 * whichever comes first, exactly once, retention and the disk budget counted, bad samples
 * refused by code with the batch still acknowledged.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { TelemetryBatch, TelemetryRecord, type TelemetryAck } from '../common/proto/driftline/v1/device_link.js';
import { parseControlPlaneConfig } from '../control-plane/config.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { SqliteSampleRepository, type SampleLimits } from '../control-plane/store/sqlite/sample-repository.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';
import { TelemetryIngest } from '../control-plane/telemetry/ingest.js';
import { labelledSampleCounterOf } from '../control-plane/datasets/wiring.js';
import { labelRecord, sampleRecord, T0 } from './helpers/sample-records.js';

const DAY = 86_400_000;

const batch = (records: TelemetryRecord[], sentAtMs = T0): Buffer =>
  Buffer.from(TelemetryBatch.encode({ records, sentAtMs, deflated: Buffer.alloc(0) }).finish());

describe('captured samples at the control plane', () => {
  let dir: string;
  let db: Database;
  let clock: ManualClock;
  let samples: SqliteSampleRepository;
  let ingest: TelemetryIngest;
  let acks: TelemetryAck[];

  const open = (limits: Partial<SampleLimits> = {}): void => {
    db = openDatabase(join(dir, 'control-plane.db'));
    const config = parseControlPlaneConfig({ dataDir: dir });
    samples = new SqliteSampleRepository(db, {
      maxAgeMs: config.samples.maxAge,
      maxBytes: config.samples.maxBytes,
      maxTensorBytes: config.samples.maxTensorBytes,
      ...limits,
    });
    acks = [];
    ingest = new TelemetryIngest({
      repository: new SqliteTelemetryRepository(db, samples.recordRoutes()),
      devices: { recordSeen: async () => {}, saveReported: async () => {}, getDesired: async () => undefined },
      downlink: {
        sendAck: async (_device, ack) => void acks.push(ack),
        sendDesired: async () => {},
      },
      clock,
      logger: silentLogger(),
      limits: { ...config.ingest, deviceRate: undefined },
    });
  };
  const send = (device: string, records: TelemetryRecord[]): Promise<void> => ingest.handle(device, 'telemetry', batch(records, clock.now()));
  const rows = () =>
    db.prepare('SELECT device_id, boot, seq, request_id, label, top_class, classes, input_shape FROM samples ORDER BY id').all() as Array<{
      device_id: string;
      boot: number;
      seq: number;
      request_id: string;
      label: number | null;
      top_class: number;
      classes: number;
      input_shape: string;
    }>;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-samples-store-'));
    clock = new ManualClock(T0);
    open();
  });
  afterEach(() => {
    if (db.open) db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('stores a sample with its request id and joins the label that comes after it', async () => {
    await send('edge-1', [sampleRecord(1, { requestId: 'req-a' })]);
    expect(rows()).toEqual([
      expect.objectContaining({ device_id: 'edge-1', request_id: 'req-a', label: null, top_class: 1, classes: 3, input_shape: '[1,8]' }),
    ]);
    await send('edge-1', [labelRecord(2, 'req-a', 2)]);
    expect(rows()[0]!.label).toBe(2);
    expect((await samples.stats()).models[0]).toMatchObject({ model: 'vibration', rows: 1, labelled: 1 });
  });

  it('joins a label that arrives before its sample (labels travel on a higher-priority stream)', async () => {
    await send('edge-1', [labelRecord(1, 'req-b', 0)]);
    expect((await samples.stats()).pendingLabels).toBe(1);
    await send('edge-1', [sampleRecord(2, { requestId: 'req-b' })]);
    expect(rows()[0]).toMatchObject({ request_id: 'req-b', label: 0 });
    expect((await samples.stats()).pendingLabels).toBe(0);
  });

  it('never joins a label across devices, and keeps an old agent sample without a request id unlabelled', async () => {
    await send('edge-2', [sampleRecord(1, { requestId: '' }), sampleRecord(2, { requestId: 'req-c' })]);
    await send('edge-1', [labelRecord(1, 'req-c', 1)]);
    await send('edge-2', [labelRecord(3, '', 1)]);
    expect(rows().map((r) => r.label)).toEqual([null, null]);
  });

  it('counts labelled samples for the retraining triggers: by model, since a time, and only the selected devices', async () => {
    await send('edge-1', [sampleRecord(1, { requestId: 'r1' }), sampleRecord(2, { requestId: 'r2' }), sampleRecord(3, { requestId: 'r3' })]);
    await send('edge-2', [sampleRecord(1, { requestId: 'r4' }), sampleRecord(2, { requestId: 'r5', model: 'acoustic' })]);
    await send('edge-1', [labelRecord(4, 'r1', 1), labelRecord(5, 'r2', 0)]);
    await send('edge-2', [labelRecord(3, 'r4', 2), labelRecord(4, 'r5', 1, 'acoustic')]);
    const counter = labelledSampleCounterOf(samples, { deviceIds: async (selector) => new Set(selector === 'site=north' ? ['edge-1'] : []) });
    expect(await counter.count('vibration', 0)).toBe(3);
    expect(await counter.count('acoustic', 0)).toBe(1);
    expect(await counter.count('vibration', 0, 'site=north')).toBe(2);
    expect(await counter.count('vibration', 0, 'site=nowhere')).toBe(0);
    expect(await counter.count('vibration', clock.now() + 1)).toBe(0);
  });

  it('stores a resent sample once: (device, boot, seq) is its identity', async () => {
    const records = [sampleRecord(1), sampleRecord(2)];
    await send('edge-1', records);
    await send('edge-1', records);
    await send('edge-1', [sampleRecord(1, { boot: 2 })]);
    expect(rows().map((r) => `${r.boot}/${r.seq}`)).toEqual(['1/1', '1/2', '2/1']);
    expect(acks.at(-2)).toMatchObject({ stored: 0, duplicates: 2 });
    expect((await samples.stats()).models[0]!.rows).toBe(3);
  });

  it('keeps no tensor bytes in the raw telemetry row: they count against the sample budget only', async () => {
    await send('edge-1', [sampleRecord(1)]);
    const { record } = db.prepare(`SELECT record FROM telemetry_records WHERE kind = 'sample'`).get() as { record: Buffer };
    const body = TelemetryRecord.decode(record).body;
    expect(body?.$case === 'sample' && body.value.inputs[0]!.data.length).toBe(0);
    expect(body?.$case === 'sample' && body.value.requestId).toBe('req-1');
  });

  it('drops the oldest samples when the kept ones pass the disk budget, and counts the drop', async () => {
    db.close();
    // 8 floats (32 bytes) + 128 overhead + request id and input name: about 175 bytes a sample; room for 5.
    open({ maxBytes: 900, maxTensorBytes: 512 });
    for (let seq = 1; seq <= 8; seq++) await send('edge-1', [sampleRecord(seq)]);
    const kept = rows().map((r) => r.seq);
    expect(kept).toEqual([4, 5, 6, 7, 8]);
    const stats = await samples.stats();
    expect(stats).toMatchObject({ rows: 5, droppedBudget: 3, budgetBytes: 900 });
    expect(stats.bytes).toBeLessThanOrEqual(900);
  });

  it('drops samples and waiting labels older than samples.maxAge, counted', async () => {
    await send('edge-1', [sampleRecord(1, { timeMs: T0 - 40 * DAY }), sampleRecord(2), labelRecord(3, 'never-sampled', 1)]);
    clock.set(T0 + 31 * DAY - 1000);
    await samples.prune(clock.now());
    // The first sample is 71 days old, the rest 31.
    const stats = await samples.stats();
    expect(stats).toMatchObject({ rows: 0, droppedRetention: 2, pendingLabels: 0 });
  });

  it('refuses a sample whose tensor is over samples.maxTensorBytes with SAMPLE_TOO_LARGE, acknowledges the batch and keeps the rest', async () => {
    db.close();
    open({ maxTensorBytes: 64 });
    await send('edge-1', [sampleRecord(1, { features: new Array(100).fill(1) }), sampleRecord(2)]);
    expect(acks.at(-1)).toMatchObject({ stored: 2 });
    expect(rows().map((r) => r.seq)).toEqual([2]);
    expect((await samples.stats()).models[0]!.refused).toEqual({ SAMPLE_TOO_LARGE: 1 });
  });

  it('refuses a sample whose shape does not match its bytes, or whose input is not FP32, with SAMPLE_INVALID', async () => {
    const lying = sampleRecord(1);
    if (lying.body?.$case === 'sample') lying.body.value.inputs[0]!.shape = [1, 1_000_000_000];
    const json = sampleRecord(2);
    if (json.body?.$case === 'sample') json.body.value.inputs[0]!.datatype = 'JSON';
    await send('edge-1', [lying, json]);
    expect(rows()).toEqual([]);
    expect((await samples.stats()).models[0]!.refused).toEqual({ SAMPLE_INVALID: 2 });
  });

  it('refuses the samples of a model marked "no raw capture" with SAMPLE_RAW_CAPTURE_OFF, and keeps them again once it is on', async () => {
    await samples.setRawCapture('vibration', false, clock.now());
    await send('edge-1', [sampleRecord(1)]);
    expect(rows()).toEqual([]);
    expect((await samples.stats()).models[0]).toMatchObject({ rawCapture: false, refused: { SAMPLE_RAW_CAPTURE_OFF: 1 } });
    await samples.setRawCapture('vibration', true, clock.now());
    await send('edge-1', [sampleRecord(2)]);
    expect(rows().map((r) => r.seq)).toEqual([2]);
  });
});
