/**
 * Work an enrolled device can make the control plane do, bounded before it is done: a
 * deflated batch that inflates to tens of MiB of empty records, a batch with more records
 * than a batch may hold, one that inflates past the ceiling, oversized reported states and
 * command results, and a device that sends faster than its rate limit. Every device is
 * enrolled through the gRPC API and talks over real MQTT to the embedded broker; refusals
 * are asserted by their codes, counted per device in the telemetry summary.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { deflateSync } from 'node:zlib';
import { credentials } from '@grpc/grpc-js';
import type { MqttClient } from 'mqtt';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { TelemetryUploader } from '../agent/telemetry/uploader.js';
import { MqttUplink } from '../agent/uplink/mqtt/mqtt-uplink.js';
import { ManualClock, systemClock } from '../common/clock.js';
import { silentLogger, type Logger } from '../common/logger.js';
import { ActiveModel, CommandResult, ReportedState, Stream, TelemetryAck, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import type { DeviceTelemetry, TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { downTopic, upTopic, type UpChannel } from '../common/device-protocol/topics.js';
import type { ControlPlaneConfigInput } from '../control-plane/config.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { rpc } from './helpers/grpc-calls.js';
import { connectClient } from './helpers/mqtt.js';
import { waitFor } from './helpers/processes.js';
import { inferenceRecord } from './helpers/telemetry-records.js';

const BOOT = 1;
const MAX_RECORDS_PER_BATCH = 1000;
const MAX_INFLATED_BYTES = 1024 * 1024;
/** An empty TelemetryRecord inside a batch: field 1, length 0. Two bytes each. */
const EMPTY_RECORD = Buffer.from([0x0a, 0x00]);
/** Twenty MB of empty records, ten million of them; deflated, a few tens of KiB. */
const EMPTY_RECORDS = 10_000_000;

const inference = (seq: number): TelemetryRecord =>
  inferenceRecord({ seq, boot: BOOT, timeMs: 1_700_000_000_000 + seq }, { latencyMs: 4.2, topClass: 1, confidence: 0.9 });
const event = (seq: number, message: string): TelemetryRecord =>
  TelemetryRecord.fromPartial({
    boot: BOOT,
    seq,
    timeMs: 1_700_000_000_000 + seq,
    stream: Stream.STREAM_EVENTS,
    body: { $case: 'event', value: { kind: 'log', message, attributes: {} } },
  });
const batch = (...records: TelemetryRecord[]): Buffer =>
  Buffer.from(TelemetryBatch.encode(TelemetryBatch.fromPartial({ records, sentAtMs: 1_700_000_000_000 })).finish());
const deflated = (inner: Buffer): Buffer =>
  Buffer.from(TelemetryBatch.encode(TelemetryBatch.fromPartial({ deflated: deflateSync(inner, { level: 9 }), sentAtMs: 1_700_000_000_000 })).finish());

/** A device enrolled through the gRPC API, connected over MQTT, collecting its acks. */
interface TestDevice {
  id: string;
  client: MqttClient;
  credential: EnrollResponse;
  acks: TelemetryAck[];
  publish(channel: UpChannel, payload: Buffer): Promise<unknown>;
  /** Sends one valid record and waits for its ack. */
  sendValid(seq: number): Promise<TelemetryAck>;
}

async function enrollDevice(cp: ControlPlane, api: FleetApi, id: string): Promise<TestDevice> {
  const enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
  const token = await api.createEnrollmentToken(id);
  const credential = await rpc<EnrollResponse>((cb) =>
    enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId: id, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
  );
  enrollment.close();
  const client = await connectClient(cp.addresses.mqtt, { clientId: id, username: credential.mqttUsername, password: credential.mqttPassword });
  const acks: TelemetryAck[] = [];
  client.on('message', (topic, payload) => {
    if (topic === downTopic(id, 'ack')) acks.push(TelemetryAck.decode(payload));
  });
  await client.subscribeAsync(downTopic(id, 'ack'), { qos: 1 });
  const publish = (channel: UpChannel, payload: Buffer): Promise<unknown> => client.publishAsync(upTopic(id, channel), payload, { qos: 1 });
  return {
    id,
    client,
    credential,
    acks,
    publish,
    async sendValid(seq) {
      await publish('telemetry', batch(inference(seq)));
      return waitFor(
        () => acks.find((a) => a.ranges.some((r) => r.first <= seq && seq <= r.last)),
        (a) => a !== undefined,
        { what: `the ack for ${id} seq ${seq}` },
      ) as Promise<TelemetryAck>;
    },
  };
}

const deviceRow = (summary: TelemetrySummary, id: string): DeviceTelemetry | undefined => summary.devices.find((d) => d.deviceId === id);
const refused = (summary: TelemetrySummary, id: string, code: string): number => deviceRow(summary, id)?.refusals.find((r) => r.code === code)?.count ?? 0;

async function startWith(
  dir: string,
  ingest: ControlPlaneConfigInput['ingest'],
  deps: { clock?: ManualClock; logger?: Logger } = {},
): Promise<{ cp: ControlPlane; api: FleetApi }> {
  const cp = await startControlPlane(
    { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, ingest },
    { logger: deps.logger ?? silentLogger(), clock: deps.clock },
  );
  return { cp, api: fleetApi(cp.addresses.grpc, cp.adminTokenFile) };
}

describe('ingest limits - batches that would cost more than they are worth', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let attacker: TestDevice;
  let bystander: TestDevice;
  let nextSeq = 1;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-ingest-limits-'));
    ({ cp, api } = await startWith(dir, {
      maxRecordsPerBatch: MAX_RECORDS_PER_BATCH,
      maxInflatedBytes: MAX_INFLATED_BYTES,
      maxStateBytes: '4KiB',
      maxStateWarnings: 4,
      maxStateModels: 3,
      maxResultBytes: '4KiB',
      maxResultOutputs: 4,
    }));
    attacker = await enrollDevice(cp, api, 'edge-amplifier');
    bystander = await enrollDevice(cp, api, 'edge-bystander');
  });

  afterAll(async () => {
    attacker?.client.end(true);
    bystander?.client.end(true);
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('ingest - refuses a deflated batch that inflates to tens of MiB of empty records with PAYLOAD_TOO_MANY_ENTRIES, inflating only as far as the record limit, and keeps serving another device', async () => {
    const bomb = deflated(Buffer.alloc(EMPTY_RECORDS * EMPTY_RECORD.length, EMPTY_RECORD));
    expect(bomb.length).toBeLessThan(64 * 1024);
    const before = await api.summary();
    const inflatedBefore = cp.ingest.stats.inflatedBytes;
    const seq = nextSeq++;

    await attacker.publish('telemetry', bomb);
    // Another device is served meanwhile, and the attacker's next valid batch is stored and acknowledged alone.
    const bystanderAck = await bystander.sendValid(seq);
    expect(bystanderAck).toEqual({ ranges: [{ boot: BOOT, first: seq, last: seq }], stored: 1, duplicates: 0 });
    expect(await attacker.sendValid(seq)).toEqual({ ranges: [{ boot: BOOT, first: seq, last: seq }], stored: 1, duplicates: 0 });
    expect(attacker.acks).toHaveLength(1);

    const after = await api.summary();
    expect(refused(after, attacker.id, 'PAYLOAD_TOO_MANY_ENTRIES')).toBe(refused(before, attacker.id, 'PAYLOAD_TOO_MANY_ENTRIES') + 1);
    expect(refused(after, bystander.id, 'PAYLOAD_TOO_MANY_ENTRIES')).toBe(0);
    expect(after.rejectedBatches).toBe(before.rejectedBatches + 1);
    expect(after.recordsStored).toBe(before.recordsStored + 2);
    // Inflation stopped near the record limit: a few KiB of the 20 MB, not all of it.
    expect(cp.ingest.stats.inflatedBytes - inflatedBefore).toBeLessThan(256 * 1024);
    expect(cp.state).toBe('running');
  });

  it('ingest - refuses a plain batch holding more records than ingest.maxRecordsPerBatch with PAYLOAD_TOO_MANY_ENTRIES and stores none of it', async () => {
    const before = await api.summary(attacker.id);
    const seq = nextSeq;
    nextSeq += MAX_RECORDS_PER_BATCH + 2;
    await attacker.publish('telemetry', batch(...Array.from({ length: MAX_RECORDS_PER_BATCH + 1 }, (_, i) => inference(seq + i))));
    expect(await attacker.sendValid(seq + MAX_RECORDS_PER_BATCH + 1)).toMatchObject({ stored: 1 });
    const after = await api.summary(attacker.id);
    expect(refused(after, attacker.id, 'PAYLOAD_TOO_MANY_ENTRIES')).toBe(refused(before, attacker.id, 'PAYLOAD_TOO_MANY_ENTRIES') + 1);
    expect(after.recordsStored).toBe(before.recordsStored + 1);
  });

  it('ingest - refuses a deflated batch of few records that inflates past ingest.maxInflatedBytes with PAYLOAD_TOO_LARGE, inflating no further than the limit', async () => {
    const before = await api.summary(attacker.id);
    const inflatedBefore = cp.ingest.stats.inflatedBytes;
    const seq = nextSeq;
    nextSeq += 102;
    // A hundred 40 KiB events: 4 MB inflated, four times the ceiling, far below the record limit.
    await attacker.publish('telemetry', deflated(batch(...Array.from({ length: 100 }, (_, i) => event(seq + i, 'x'.repeat(40 * 1024))))));
    expect(await attacker.sendValid(seq + 101)).toMatchObject({ stored: 1 });
    const after = await api.summary(attacker.id);
    expect(refused(after, attacker.id, 'PAYLOAD_TOO_LARGE')).toBe(refused(before, attacker.id, 'PAYLOAD_TOO_LARGE') + 1);
    expect(after.recordsStored).toBe(before.recordsStored + 1);
    expect(cp.ingest.stats.inflatedBytes - inflatedBefore).toBeLessThanOrEqual(MAX_INFLATED_BYTES + 64 * 1024);
  });

  it('ingest - refuses reported states and command results above their size or list limits, and keeps the last good state', async () => {
    const before = await api.summary(attacker.id);
    const state = (fields: Partial<ReportedState>): Buffer =>
      Buffer.from(ReportedState.encode(ReportedState.fromPartial({ agentVersion: '0.1.0', firmwareProfile: 'generic-x86_64-cpu', ...fields })).finish());
    await attacker.publish('state', state({ bufferDepth: 7 }));
    await attacker.publish('state', state({ bufferDepth: 8, lastError: 'e'.repeat(8 * 1024) }));
    await attacker.publish('state', state({ bufferDepth: 9, warnings: ['a', 'b', 'c', 'd', 'e'] }));
    await attacker.publish(
      'state',
      state({ bufferDepth: 10, activeModels: Array.from({ length: 4 }, (_, i) => ActiveModel.fromPartial({ name: `m${i}`, version: 1 })) }),
    );
    await attacker.publish(
      'result',
      Buffer.from(CommandResult.encode(CommandResult.fromPartial({ id: 'c1', ok: true, message: 'm'.repeat(8 * 1024) })).finish()),
    );
    const outputs = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`k${i}`, 'v']));
    await attacker.publish('result', Buffer.from(CommandResult.encode(CommandResult.fromPartial({ id: 'c2', ok: true, output: outputs })).finish()));
    await attacker.sendValid(nextSeq++);

    const after = await api.summary(attacker.id);
    expect(refused(after, attacker.id, 'PAYLOAD_TOO_LARGE')).toBe(refused(before, attacker.id, 'PAYLOAD_TOO_LARGE') + 2);
    expect(refused(after, attacker.id, 'PAYLOAD_TOO_MANY_ENTRIES')).toBe(refused(before, attacker.id, 'PAYLOAD_TOO_MANY_ENTRIES') + 3);
    // Not telemetry: not counted as rejected batches.
    expect(after.rejectedBatches).toBe(before.rejectedBatches);
    expect(deviceRow(after, attacker.id)?.bufferDepth).toBe(7);
  });
});

describe('ingest limits - per-device rate limit', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let flooder: TestDevice;
  let neighbour: TestDevice;
  const clock = new ManualClock();
  const logLines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'info' },
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        logLines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    }),
  );
  const rateLogLines = (deviceId: string) => logLines.filter((l) => l.deviceId === deviceId && JSON.stringify(l).includes('DEVICE_RATE_LIMITED'));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-ingest-rate-'));
    ({ cp, api } = await startWith(dir, { deviceRate: { messagesPerSecond: 1, burst: 3 }, refusalLogInterval: '1m' }, { clock, logger }));
    flooder = await enrollDevice(cp, api, 'edge-flooder');
    neighbour = await enrollDevice(cp, api, 'edge-neighbour');
  });

  afterAll(async () => {
    flooder?.client.end(true);
    neighbour?.client.end(true);
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("ingest - refuses a device's messages over its rate with DEVICE_RATE_LIMITED before decoding them, acknowledges none, counts them and logs once per interval", async () => {
    const before = await api.summary();
    for (let seq = 1; seq <= 5; seq++) await flooder.publish('telemetry', batch(inference(seq)));
    // Garbage over the limit is refused for the rate, never decoded: not a rejected (malformed) batch.
    for (let i = 0; i < 3; i++) await flooder.publish('telemetry', Buffer.from([0xff, 0xff, 0xff]));
    // Another device has its own bucket.
    expect(await neighbour.sendValid(1)).toMatchObject({ stored: 1 });

    // A second later the bucket holds one more token.
    clock.advance(1000);
    expect(await flooder.sendValid(6)).toMatchObject({ stored: 1 });
    expect(flooder.acks.flatMap((a) => a.ranges.map((r) => r.first))).toEqual([1, 2, 3, 6]);

    const after = await api.summary();
    expect(refused(after, flooder.id, 'DEVICE_RATE_LIMITED')).toBe(5);
    expect(refused(after, neighbour.id, 'DEVICE_RATE_LIMITED')).toBe(0);
    expect(deviceRow(after, flooder.id)?.records).toBe(4);
    expect(after.rejectedBatches).toBe(before.rejectedBatches);
    expect(rateLogLines(flooder.id)).toHaveLength(1);

    // Past the log interval, the next refusal logs again, with what was refused since the last line.
    clock.advance(60_000);
    for (let seq = 7; seq <= 11; seq++) await flooder.publish('telemetry', batch(inference(seq)));
    await neighbour.sendValid(2);
    await waitFor(
      () => rateLogLines(flooder.id).length,
      (n) => n === 2,
      { what: 'the second rate-limit log line' },
    );
    expect(refused(await api.summary(flooder.id), flooder.id, 'DEVICE_RATE_LIMITED')).toBe(7);
  });

  it('ingest - a real uploader whose batches are refused for rate resends them until each record is stored exactly once', async () => {
    const records = 200;
    const device = await enrollDevice(cp, api, 'edge-uploader');
    device.client.end(true);
    const buffer = SqliteBuffer.open({ file: join(dir, 'buffer.db'), synchronous: 'NORMAL' });
    for (let i = 0; i < records; i++) {
      const body = TelemetryRecord.encode({
        boot: 0,
        seq: 0,
        timeMs: 1_700_000_000_000 + i,
        stream: Stream.STREAM_EVENTS,
        body: { $case: 'event', value: { kind: 'test', message: String(i), attributes: {} } },
      }).finish();
      await buffer.enqueue({ stream: Stream.STREAM_EVENTS, timeMs: 1_700_000_000_000 + i, body });
    }
    const uplink = new MqttUplink({
      url: cp.addresses.mqtt,
      deviceId: device.id,
      password: device.credential.mqttPassword,
      keepaliveSeconds: 30,
      reconnectMinMs: 100,
      reconnectMaxMs: 1000,
      connectTimeoutMs: 5000,
      publishTimeoutMs: 30_000,
      logger: silentLogger(),
    });
    // Four batches in flight against a bucket of three with a manual refill: some are refused, none acknowledged.
    const uploader = new TelemetryUploader({
      buffer,
      uplink,
      clock: systemClock,
      logger: silentLogger(),
      maxBatchRecords: 10,
      maxInflightBatches: 4,
      batchDelayMs: 1,
      ackTimeoutMs: 200,
      compressMinBytes: 0,
      liveEvery: 0,
    });
    await uplink.start();
    // The agent checks for missing acks periodically; the control plane's bucket refills a token each round.
    const ticker = setInterval(() => {
      clock.advance(1000);
      uploader.checkTimeouts();
    }, 100);
    try {
      expect(await uploader.drain(120_000)).toBe(true);
    } finally {
      clearInterval(ticker);
      uploader.stop();
      await uplink.shutdown();
      await buffer.close();
    }
    const summary = await api.summary(device.id);
    expect(refused(summary, device.id, 'DEVICE_RATE_LIMITED')).toBeGreaterThan(0);
    expect(uploader.stats.resends).toBeGreaterThan(0);
    // Every buffered record, each stored once.
    expect(deviceRow(summary, device.id)?.records).toBe(records);
  });
});
