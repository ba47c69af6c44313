/**
 * Bad telemetry from an authenticated device: a device with its real credential (enrolled
 * through the gRPC API) publishes malformed protobuf and oversized payloads on its own
 * up/telemetry topic, deflated batches that are not zlib or inflate past the ingest's ceiling
 * included. The control plane must keep running, count each malformed batch as
 * rejected, acknowledge none of them, store nothing from them, and still store and
 * acknowledge the device's next valid batch. The broker itself disconnects a device that
 * sends a payload above the packet limit.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { credentials } from '@grpc/grpc-js';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { ReportedState, Stream, TelemetryAck, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import { downTopic, upTopic, type UpChannel } from '../common/device-protocol/topics.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { rpc } from './helpers/grpc-calls.js';
import { closed, connectClient } from './helpers/mqtt.js';
import { waitFor } from './helpers/processes.js';
import { inferenceRecord } from './helpers/telemetry-records.js';

const DEVICE = 'edge-bad-telemetry';
const MAX_PACKET_BYTES = 256 * 1024;
/** The ingest's default ceiling for an inflated batch (control-plane/telemetry/ingest.ts). */
const MAX_INFLATED_BYTES = 64 * 1024 * 1024;
const MAX_RECORDS_PER_BATCH = 50;
const BOOT = 1;

const inference = (seq: number, latencyMs = 4.2): TelemetryRecord =>
  inferenceRecord({ seq, boot: BOOT, timeMs: 1_700_000_000_000 + seq }, { latencyMs, topClass: 1, confidence: 0.9 });
const batch = (...records: TelemetryRecord[]): Buffer =>
  Buffer.from(TelemetryBatch.encode(TelemetryBatch.fromPartial({ records, sentAtMs: 1_700_000_000_000 })).finish());

const deflated = (bytes: Buffer): Buffer =>
  Buffer.from(TelemetryBatch.encode(TelemetryBatch.fromPartial({ deflated: bytes, sentAtMs: 1_700_000_000_000 })).finish());

/** Each malformed batch, built around the seq that the valid batch after it then uses. */
const malformed: Array<[string, (seq: number) => Buffer]> = [
  ['bytes that are not protobuf', () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])],
  ['a length prefix pointing past the end', () => Buffer.from([0x0a, 0xf4, 0x03, 0x08, 0x01])],
  ['a valid batch cut short', (seq) => batch(inference(seq), inference(seq + 1)).subarray(0, 40)],
  ['a record with seq 0 next to a valid one', (seq) => batch(inference(seq), inference(0))],
  ['a record with a NaN latency', (seq) => batch(inference(seq, Number.NaN))],
  ['a record with an infinite latency', (seq) => batch(inference(seq, Number.POSITIVE_INFINITY))],
  ['a record with boot 0', (seq) => batch({ ...inference(seq), boot: 0 })],
  ['a record without a body', (seq) => batch({ ...inference(seq), body: undefined })],
  ['more records than a batch may hold', (seq) => batch(...Array.from({ length: MAX_RECORDS_PER_BATCH + 1 }, (_, i) => inference(seq + i)))],
  ['text that protobuf reads as an empty batch', () => Buffer.from('this is not protobuf')],
  ['a deflated batch that is not zlib', () => deflated(Buffer.from('not zlib at all'))],
  ['a deflated batch that inflates to bytes that are not protobuf', () => deflated(deflateSync(Buffer.alloc(64, 0xff)))],
  // A few hundred kilobytes on the wire, more than the ceiling once inflated.
  ['a deflated batch that inflates beyond the limit', () => deflated(deflateSync(Buffer.alloc(MAX_INFLATED_BYTES + 1024), { level: 9 }))],
];

describe('bad inputs - telemetry from an authenticated device', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let enrollment: EnrollmentServiceClient;
  let credential: EnrollResponse;
  let device: MqttClient;
  const acks: TelemetryAck[] = [];
  const clients: MqttClient[] = [];
  let nextSeq = 1;

  const connectDevice = async (): Promise<MqttClient> => {
    const client = await connectClient(cp.addresses.mqtt, { clientId: DEVICE, username: credential.mqttUsername, password: credential.mqttPassword });
    clients.push(client);
    client.on('message', (topic, payload) => {
      if (topic === downTopic(DEVICE, 'ack')) acks.push(TelemetryAck.decode(payload));
    });
    await client.subscribeAsync(downTopic(DEVICE, 'ack'), { qos: 1 });
    return client;
  };
  const publish = (channel: UpChannel, payload: Buffer): Promise<unknown> => device.publishAsync(upTopic(DEVICE, channel), payload, { qos: 1 });

  /** Sends one valid record and waits for its ack; every ack that came since `from` is returned. */
  const sendValid = async (seq: number, from: number): Promise<TelemetryAck[]> => {
    await publish('telemetry', batch(inference(seq)));
    await waitFor(
      () => acks.length,
      (n) => n > from,
      { what: `the ack for seq ${seq}` },
    );
    return acks.slice(from);
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-bad-telemetry-'));
    cp = await startControlPlane(
      {
        dataDir: join(dir, 'cp'),
        grpc: { port: 0 },
        http: { port: 0 },
        mqtt: { port: 0, maxPacketBytes: MAX_PACKET_BYTES },
        ingest: { maxRecordsPerBatch: MAX_RECORDS_PER_BATCH },
      },
      { logger: silentLogger() },
    );
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
    const token = await api.createEnrollmentToken(DEVICE);
    credential = await rpc<EnrollResponse>((cb) =>
      enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId: DEVICE, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
    );
    device = await connectDevice();
  });

  afterAll(async () => {
    for (const client of clients) client.end(true);
    enrollment?.close();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.each(malformed)('bad inputs - rejects %s without an ack or a stored record, then stores and acknowledges the next valid batch', async (_, build) => {
    const seq = nextSeq;
    nextSeq += MAX_RECORDS_PER_BATCH + 2;
    const before = await api.summary(DEVICE);
    const ackCount = acks.length;

    await publish('telemetry', build(seq));
    // The device's messages are handled in order, so the valid batch's ack comes after the bad one was dealt with.
    const received = await sendValid(seq, ackCount);

    // Exactly one ack, naming only the valid record, which was new: nothing of the bad batch was stored.
    expect(received).toEqual([{ ranges: [{ boot: BOOT, first: seq, last: seq }], stored: 1, duplicates: 0 }]);
    const after = await api.summary(DEVICE);
    expect(after.rejectedBatches).toBe(before.rejectedBatches + 1);
    expect(after.recordsStored).toBe(before.recordsStored + 1);
    expect(after.devices[0]!.records).toBe((before.devices[0]?.records ?? 0) + 1);
    expect(cp.ingest.stats.rejectedBatches).toBe(after.rejectedBatches);
    expect(cp.state).toBe('running');
  });

  it('bad inputs - ignores garbage on the state and result channels and keeps ingesting', async () => {
    const before = await api.summary(DEVICE);
    const ackCount = acks.length;
    const garbage = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    await publish('state', garbage);
    await publish('result', garbage);
    const state = ReportedState.encode(ReportedState.fromPartial({ agentVersion: '0.1.0', firmwareProfile: 'generic-x86_64-cpu', bufferDepth: 3 })).finish();
    await publish('state', Buffer.from(state).subarray(0, state.length - 4));
    const seq = nextSeq++;
    expect(await sendValid(seq, ackCount)).toEqual([{ ranges: [{ boot: BOOT, first: seq, last: seq }], stored: 1, duplicates: 0 }]);
    const after = await api.summary(DEVICE);
    // Not telemetry, so not counted as rejected batches, and nothing stored from them.
    expect(after.rejectedBatches).toBe(before.rejectedBatches);
    expect(after.recordsStored).toBe(before.recordsStored + 1);
  });

  it('bad inputs - the broker disconnects a device that publishes an oversized payload; nothing of it is stored', async () => {
    const before = await api.summary(DEVICE);
    const refusedBefore = await refusedPublishes();
    const ackCount = acks.length;
    const seq = nextSeq++;
    // A well-formed batch, just too large: one event whose message alone passes the packet limit.
    const oversized = batch(
      TelemetryRecord.fromPartial({
        boot: BOOT,
        seq,
        timeMs: 1,
        stream: Stream.STREAM_EVENTS,
        body: { $case: 'event', value: { kind: 'log', message: 'x'.repeat(MAX_PACKET_BYTES + 1024), attributes: {} } },
      }),
    );
    expect(oversized.length).toBeGreaterThan(MAX_PACKET_BYTES);
    const gone = closed(device);
    void publish('telemetry', oversized).catch(() => undefined);
    await gone;
    expect(await refusedPublishes()).toBe(refusedBefore + 1);

    // The device comes back with the same credential; the same seq, sent small, is new to the store.
    device = await connectDevice();
    expect(await sendValid(seq, ackCount)).toEqual([{ ranges: [{ boot: BOOT, first: seq, last: seq }], stored: 1, duplicates: 0 }]);
    const after = await api.summary(DEVICE);
    expect(after.recordsStored).toBe(before.recordsStored + 1);
    expect(after.rejectedBatches).toBe(before.rejectedBatches);
  });

  it('bad inputs - a resent valid batch is acknowledged again but stored once', async () => {
    const before = await api.summary(DEVICE);
    const ackCount = acks.length;
    const seq = nextSeq++;
    await sendValid(seq, ackCount);
    const received = await sendValid(seq, ackCount + 1);
    expect(received).toEqual([{ ranges: [{ boot: BOOT, first: seq, last: seq }], stored: 0, duplicates: 1 }]);
    const after = await api.summary(DEVICE);
    expect(after.recordsStored).toBe(before.recordsStored + 1);
    expect(after.duplicatesDropped).toBe(before.duplicatesDropped + 1);
  });

  async function refusedPublishes(): Promise<number> {
    const text = await (
      await fetch(`${cp.addresses.http}/metrics`, { headers: { authorization: `Bearer ${readFileSync(cp.adminTokenFile, 'utf8').trim()}` } })
    ).text();
    return Number(/^driftline_broker_refused_publishes_total (\d+)$/m.exec(text)?.[1] ?? Number.NaN);
  }
});
