/**
 * Telemetry rollups through the gRPC API and the CLI: three enrolled devices (labels
 * cohort=a, cohort=a, cohort=b) publish known records over MQTT with their own credentials,
 * across two versions of one model and two minute buckets of one hour. The control plane
 * runs on a ManualClock, so bucket boundaries and retention are exact. Every grouping (device,
 * model version, cohort, fleet) and both bucket sizes must give exact sums; bad requests
 * get REQUEST_INVALID.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, Metadata, status } from '@grpc/grpc-js';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { Outcome, Stream, TelemetryAck, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import {
  RollupBucket,
  RollupGroupBy,
  TelemetryRollupsRequest,
  TelemetryServiceClient,
  type TelemetryRollup,
  type TelemetryRollups,
} from '../common/proto/driftline/v1/telemetry.js';
import { downTopic, upTopic } from '../common/device-protocol/topics.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { bearer, refusalOf, rpc } from './helpers/grpc-calls.js';
import { connectClient } from './helpers/mqtt.js';
import { waitFor } from './helpers/processes.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));
const MINUTE = 60_000;
const HOUR = 3_600_000;
/** The start of an hour; the records fall in its minutes 10 and 11. */
const HOUR_START = 472_223 * HOUR;
const M1 = HOUR_START + 10 * MINUTE;
const M2 = HOUR_START + 11 * MINUTE;

type Sent = { version: number; error?: boolean; latencyMs: number };
const inference = ({ version, error = false, latencyMs }: Sent) => ({
  $case: 'inference' as const,
  value: {
    model: 'vib',
    version,
    provider: 'cpu',
    latencyMs,
    outcome: error ? Outcome.OUTCOME_ERROR : Outcome.OUTCOME_OK,
    topClass: 0,
    confidence: 0.9,
    errorCode: '',
    batchSize: 1,
  },
});
const event = () => ({ $case: 'event' as const, value: { kind: 'model_loaded', message: 'vib loaded', attributes: {} } });

/** What each device sends: inferences of vib v1/v2 and events, in minutes M1 and M2. */
const DEVICES: Record<string, { cohort: string; records: Array<{ at: number; body: ReturnType<typeof inference> | ReturnType<typeof event> }> }> = {
  'dev-a1': {
    cohort: 'a',
    records: [
      { at: M1 + 1000, body: inference({ version: 1, latencyMs: 10 }) },
      { at: M1 + 2000, body: inference({ version: 1, latencyMs: 30, error: true }) },
      { at: M2 + 5000, body: inference({ version: 2, latencyMs: 20 }) },
      { at: M2 + 6000, body: event() },
    ],
  },
  'dev-a2': {
    cohort: 'a',
    records: [
      { at: M1 + 3000, body: inference({ version: 1, latencyMs: 20 }) },
      { at: M2 + 1000, body: inference({ version: 2, latencyMs: 40 }) },
    ],
  },
  'dev-b1': {
    cohort: 'b',
    records: [
      { at: M1 + 4000, body: inference({ version: 2, latencyMs: 50, error: true }) },
      { at: M2 + 2000, body: inference({ version: 2, latencyMs: 10 }) },
      { at: M2 + 3000, body: event() },
    ],
  },
};

/** A row's sums in a compact, comparable form: [bucket, key, records, inferences, errors, mean latency, max latency, events]. */
const sums = (rows: TelemetryRollup[]) =>
  rows.map((r) => [r.bucketStartMs, r.key, r.records, r.inferences, r.errors, Number(r.meanLatencyMs.toFixed(3)), r.maxLatencyMs, r.events]);

describe('telemetry rollups - query API and CLI', () => {
  const clock = new ManualClock(HOUR_START + 30 * MINUTE);
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let client: TelemetryServiceClient;
  let metadata: Metadata;
  const devices: MqttClient[] = [];

  const rollups = (request: Partial<TelemetryRollupsRequest>): Promise<TelemetryRollups> =>
    rpc<TelemetryRollups>((cb) => client.getRollups(TelemetryRollupsRequest.fromPartial(request), metadata, cb));
  const by = (groupBy: RollupGroupBy, bucket = RollupBucket.ROLLUP_BUCKET_ONE_MINUTE, extra: Partial<TelemetryRollupsRequest> = {}) =>
    rollups({ groupBy, bucket, ...extra }).then((r) => sums(r.rows));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-rollups-'));
    cp = await startControlPlane({ dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger(), clock });
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    client = new TelemetryServiceClient(cp.addresses.grpc, credentials.createInsecure());
    const enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
    metadata = bearer(readFileSync(cp.adminTokenFile, 'utf8').trim());

    let stored = 0;
    for (const [deviceId, { cohort, records }] of Object.entries(DEVICES)) {
      const token = await api.createEnrollmentToken(deviceId, { cohort });
      const credential = await rpc<EnrollResponse>((cb) =>
        enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
      );
      const device = await connectClient(cp.addresses.mqtt, { clientId: deviceId, username: credential.mqttUsername, password: credential.mqttPassword });
      devices.push(device);
      const acked = new Promise<TelemetryAck>((resolve) =>
        device.on('message', (topic, payload) => topic === downTopic(deviceId, 'ack') && resolve(TelemetryAck.decode(payload))),
      );
      await device.subscribeAsync(downTopic(deviceId, 'ack'), { qos: 1 });
      const batch = TelemetryBatch.fromPartial({
        // sent_at equal to the control plane's clock: no clock offset, so the records keep their times.
        sentAtMs: clock.now(),
        records: records.map((r, i) =>
          TelemetryRecord.fromPartial({
            boot: 1,
            seq: i + 1,
            timeMs: r.at,
            stream: r.body.$case === 'event' ? Stream.STREAM_EVENTS : Stream.STREAM_INFERENCE,
            body: r.body,
          }),
        ),
      });
      await device.publishAsync(upTopic(deviceId, 'telemetry'), Buffer.from(TelemetryBatch.encode(batch).finish()), { qos: 1 });
      await acked;
      stored += records.length;
    }
    enrollment.close();
    await waitFor(
      () => api.summary(),
      (s) => s.recordsStored === stored,
      { what: 'every record stored' },
    );
  });

  afterAll(async () => {
    for (const device of devices) device.end(true);
    client?.close();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('telemetry rollups - sums each device per minute bucket, across its model versions and events', async () => {
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_DEVICE)).toEqual([
      [M1, 'dev-a1', 2, 2, 1, 20, 30, 0],
      [M1, 'dev-a2', 1, 1, 0, 20, 20, 0],
      [M1, 'dev-b1', 1, 1, 1, 50, 50, 0],
      [M2, 'dev-a1', 2, 1, 0, 20, 20, 1],
      [M2, 'dev-a2', 1, 1, 0, 40, 40, 0],
      [M2, 'dev-b1', 2, 1, 0, 10, 10, 1],
    ]);
  });

  it('telemetry rollups - sums each model version per minute bucket, with records that carry no model under ""', async () => {
    const { rows } = await rollups({ groupBy: RollupGroupBy.ROLLUP_GROUP_BY_MODEL_VERSION, bucket: RollupBucket.ROLLUP_BUCKET_ONE_MINUTE });
    expect(sums(rows)).toEqual([
      [M1, 'vib v1', 3, 3, 1, 20, 30, 0],
      [M1, 'vib v2', 1, 1, 1, 50, 50, 0],
      [M2, '', 2, 0, 0, 0, 0, 2],
      [M2, 'vib v2', 3, 3, 0, 23.333, 40, 0],
    ]);
    expect(rows.map((r) => [r.model, r.version, r.bucketMs, r.errorRate])).toEqual([
      ['vib', 1, MINUTE, 1 / 3],
      ['vib', 2, MINUTE, 1],
      ['', 0, MINUTE, 0],
      ['vib', 2, MINUTE, 0],
    ]);
  });

  it('telemetry rollups - sums each cohort (device label "cohort") and the whole fleet per minute bucket', async () => {
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_COHORT)).toEqual([
      [M1, 'a', 3, 3, 1, 20, 30, 0],
      [M1, 'b', 1, 1, 1, 50, 50, 0],
      [M2, 'a', 3, 2, 0, 30, 40, 1],
      [M2, 'b', 2, 1, 0, 10, 10, 1],
    ]);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_FLEET)).toEqual([
      [M1, 'fleet', 4, 4, 2, 27.5, 50, 0],
      [M2, 'fleet', 5, 3, 0, 23.333, 40, 2],
    ]);
  });

  it('telemetry rollups - one hour bucket holds both minutes, for every grouping', async () => {
    const hour = RollupBucket.ROLLUP_BUCKET_ONE_HOUR;
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_FLEET, hour)).toEqual([[HOUR_START, 'fleet', 9, 7, 2, 25.714, 50, 2]]);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_COHORT, hour)).toEqual([
      [HOUR_START, 'a', 6, 5, 1, 24, 40, 1],
      [HOUR_START, 'b', 3, 2, 1, 30, 50, 1],
    ]);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_DEVICE, hour)).toEqual([
      [HOUR_START, 'dev-a1', 4, 3, 1, 20, 30, 1],
      [HOUR_START, 'dev-a2', 2, 2, 0, 30, 40, 0],
      [HOUR_START, 'dev-b1', 3, 2, 1, 30, 50, 1],
    ]);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_MODEL_VERSION, hour)).toEqual([
      [HOUR_START, '', 2, 0, 0, 0, 0, 2],
      [HOUR_START, 'vib v1', 3, 3, 1, 20, 30, 0],
      [HOUR_START, 'vib v2', 4, 4, 1, 30, 50, 0],
    ]);
  });

  it('telemetry rollups - filters by model version, device, label selector and since, and keeps the newest rows under a limit', async () => {
    const hour = RollupBucket.ROLLUP_BUCKET_ONE_HOUR;
    const v2 = await rollups({ groupBy: RollupGroupBy.ROLLUP_GROUP_BY_COHORT, bucket: hour, model: 'vib', version: 2 });
    expect(sums(v2.rows)).toEqual([
      [HOUR_START, 'a', 2, 2, 0, 30, 40, 0],
      [HOUR_START, 'b', 2, 2, 1, 30, 50, 0],
    ]);
    expect(v2.rows.map((r) => [r.model, r.version])).toEqual([
      ['vib', 2],
      ['vib', 2],
    ]);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_FLEET, hour, { deviceId: 'dev-a2' })).toEqual([[HOUR_START, 'fleet', 2, 2, 0, 30, 40, 0]]);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_DEVICE, RollupBucket.ROLLUP_BUCKET_ONE_MINUTE, { selector: 'cohort=b' })).toEqual([
      [M1, 'dev-b1', 1, 1, 1, 50, 50, 0],
      [M2, 'dev-b1', 2, 1, 0, 10, 10, 1],
    ]);
    // since inside minute M2 starts at M2's bucket.
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_FLEET, RollupBucket.ROLLUP_BUCKET_ONE_MINUTE, { sinceMs: M2 + 30_000 })).toEqual([
      [M2, 'fleet', 5, 3, 0, 23.333, 40, 2],
    ]);
    const limited = await rollups({ groupBy: RollupGroupBy.ROLLUP_GROUP_BY_DEVICE, bucket: RollupBucket.ROLLUP_BUCKET_ONE_MINUTE, limit: 2 });
    expect(limited.truncated).toBe(true);
    expect(limited.rows.map((r) => [r.bucketStartMs, r.key])).toEqual([
      [M2, 'dev-a1'],
      [M2, 'dev-a2'],
    ]);
    expect((await rollups({ groupBy: RollupGroupBy.ROLLUP_GROUP_BY_FLEET })).truncated).toBe(false);
  });

  it('telemetry rollups - refuses bad requests with REQUEST_INVALID, a bad device id with ID_INVALID, and callers without a token', async () => {
    const invalid: Array<Partial<TelemetryRollupsRequest>> = [
      { groupBy: 9 as RollupGroupBy },
      { bucket: 7 as RollupBucket },
      { limit: -1 },
      { limit: 1_000_000 },
      { sinceMs: -5 },
      { version: 2 },
      { selector: 'cohort' },
    ];
    for (const request of invalid) {
      expect(await refusalOf(rollups(request)), JSON.stringify(request)).toEqual({ status: status.INVALID_ARGUMENT, code: 'REQUEST_INVALID' });
    }
    expect((await refusalOf(rollups({ deviceId: '+' }))).code).toBe('ID_INVALID');
    const anonymous = rpc((cb) => client.getRollups(TelemetryRollupsRequest.fromPartial({}), new Metadata(), cb));
    expect((await refusalOf(anonymous)).code).toBe('AUTH_MISSING');
  });

  it('telemetry rollups - driftline telemetry rollups --by cohort prints the cohort sums as JSON and as a table', async () => {
    const cli = (...args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(
          process.execPath,
          [BIN, '--server', cp.addresses.grpc, '--token-file', cp.adminTokenFile, 'telemetry', 'rollups', '--by', 'cohort', ...args],
          { cwd: dir },
          (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
        ),
      );
    const json = await cli('--json', '--bucket', '1h');
    expect(json.stderr).toBe('');
    expect(json.code).toBe(0);
    const { rows } = JSON.parse(json.stdout) as { rows: Array<Record<string, unknown>> };
    expect(rows.map((r) => [r.key, r.records, r.inferences, r.errors, r.events])).toEqual([
      ['a', 6, 5, 1, 1],
      ['b', 3, 2, 1, 1],
    ]);
    // The table: one line per bucket and cohort under a heading.
    const table = await cli('--model', 'vib');
    expect(table.code).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^BUCKET\s+COHORT\s+RECORDS\s+INFERENCES\s+ERRORS/);
    expect(lines.slice(1).map((l) => l.split(/\s{2,}/).slice(0, 5))).toEqual([
      [`${new Date(M1).toISOString().slice(0, 16)}Z`, 'a', '3', '3', '1'],
      [`${new Date(M1).toISOString().slice(0, 16)}Z`, 'b', '1', '1', '1'],
      [`${new Date(M2).toISOString().slice(0, 16)}Z`, 'a', '2', '2', '0'],
      [`${new Date(M2).toISOString().slice(0, 16)}Z`, 'b', '1', '1', '0'],
    ]);
  });

  // Last: it moves the clock past the minute buckets' retention.
  it('telemetry rollups - leaves out minute buckets past their retention (48h) while hour buckets (90d) remain', async () => {
    clock.advance(49 * HOUR);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_FLEET)).toEqual([]);
    expect(await by(RollupGroupBy.ROLLUP_GROUP_BY_FLEET, RollupBucket.ROLLUP_BUCKET_ONE_HOUR)).toEqual([[HOUR_START, 'fleet', 9, 7, 2, 25.714, 50, 2]]);
  });
});
