/**
 * Drift events end to end: a real control plane (embedded broker, SQLite) on a ManualClock, the
 * model pushed with a drift reference, and two devices (cohort a, cohort b) that publish drift
 * sketches over MQTT with their own credentials, as the agent does. The test drives the drift
 * watcher with evaluate(): first verdicts become events, a drifted cohort becomes exactly one
 * alert event, an evaluation with nothing new records nothing, and the gRPC List and Watch calls
 * and the CLI serve the events.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, type Metadata, type ServiceError } from '@grpc/grpc-js';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { buildReference, parseReference, REFERENCE_METADATA_KEY, serializeReference, type DriftReference } from '../common/drift/reference.js';
import { SketchBuilder } from '../common/drift/sketch.js';
import { silentLogger } from '../common/logger.js';
import { Stream, TelemetryAck, TelemetryBatch, TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import {
  DriftServiceClient,
  ListDriftEventsRequest,
  WatchDriftEventsRequest,
  type DriftEvent,
  type ListDriftEventsResponse,
} from '../common/proto/driftline/v1/drift.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import { downTopic, upTopic } from '../common/device-protocol/topics.js';
import { ERROR_CODE_METADATA_KEY } from '../control-plane/api/grpc-errors.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { pValueText } from '../cli/commands/drift.js';
import { VIBRATION_CLASSES, VIBRATION_FEATURES, vibrationRowSampler } from '../demo/model/vibration-data.js';
import { demoModelBytes } from './fixtures/models.js';
import { fleetApi } from './helpers/fleet-api.js';
import { bearer, refusalOf, rpc } from './helpers/grpc-calls.js';
import { connectClient } from './helpers/mqtt.js';
import { rolloutApi } from './helpers/rollout-api.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));
const MINUTE = 60_000;
/** Past the default drift window (15m), so each round is judged on its own sketches. */
const NEXT_ROUND = 16 * MINUTE;

const referenceFrom = (seed: number, rows: number): DriftReference => {
  const next = vibrationRowSampler(seed);
  const data = Array.from({ length: rows }, next);
  return buildReference(
    data.map((r) => r.features),
    { featureNames: VIBRATION_FEATURES, classNames: VIBRATION_CLASSES, labels: data.map((r) => r.label) },
  );
};

/** A compact view of events: [cohort, previous, status]. */
const transitions = (events: DriftEvent[]) => events.map((e) => [e.cohort, e.previousStatus, e.status]);

describe('drift events - watcher, gRPC and CLI', () => {
  const clock = new ManualClock(1_790_000_000_000);
  const reference = parseReference(serializeReference(referenceFrom(1, 4000)));
  const devices = new Map<string, { client: MqttClient; seq: number }>();
  let dir: string;
  let cp: ControlPlane;
  let drift: DriftServiceClient;
  let metadata: Metadata;
  let seed = 100;

  const list = (request: Partial<ListDriftEventsRequest>) =>
    rpc<ListDriftEventsResponse>((cb) => drift.listDriftEvents(ListDriftEventsRequest.fromPartial(request), metadata, cb)).then((r) => r.events);

  /** One device publishes one drift sketch of `rows` rows, as the agent's recorder does, and waits for its ack. */
  async function sendSketch(deviceId: string, drifted: boolean, rows = 1000): Promise<void> {
    const device = devices.get(deviceId)!;
    const next = vibrationRowSampler(seed++, { drift: drifted });
    const builder = new SketchBuilder(reference, 'vib', 1, clock.now() - MINUTE);
    for (let i = 0; i < rows; i++) {
      const row = next();
      builder.observeFeatures(row.features, 1, row.features.length);
      builder.observePrediction(row.label, 0.9);
      builder.observeRequest(5, true);
    }
    device.seq++;
    const batch = TelemetryBatch.fromPartial({
      sentAtMs: clock.now(),
      records: [
        TelemetryRecord.fromPartial({
          boot: 1,
          seq: device.seq,
          timeMs: clock.now() - 1000,
          stream: Stream.STREAM_INFERENCE,
          body: { $case: 'drift', value: builder.finish(clock.now()) },
        }),
      ],
    });
    const acked = new Promise<TelemetryAck>((resolve) => {
      const onMessage = (topic: string, payload: Buffer) => {
        if (topic !== downTopic(deviceId, 'ack')) return;
        device.client.off('message', onMessage);
        resolve(TelemetryAck.decode(payload));
      };
      device.client.on('message', onMessage);
    });
    await device.client.publishAsync(upTopic(deviceId, 'telemetry'), Buffer.from(TelemetryBatch.encode(batch).finish()), { qos: 1 });
    await acked;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-drift-events-'));
    // The watcher's own timer is set far beyond the test, which calls evaluate() itself.
    cp = await startControlPlane(
      { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, drift: { evaluateInterval: '24h' } },
      { logger: silentLogger(), clock },
    );
    const api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    const models = rolloutApi(cp.addresses.grpc, cp.adminTokenFile);
    await models.upload('vib', demoModelBytes(1), { [REFERENCE_METADATA_KEY]: serializeReference(reference) });
    models.close();
    const enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
    for (const [deviceId, cohort] of [
      ['dev-a', 'a'],
      ['dev-b', 'b'],
    ] as const) {
      const token = await api.createEnrollmentToken(deviceId, { cohort });
      const credential = await rpc<EnrollResponse>((cb) =>
        enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
      );
      const client = await connectClient(cp.addresses.mqtt, { clientId: deviceId, username: credential.mqttUsername, password: credential.mqttPassword });
      await client.subscribeAsync(downTopic(deviceId, 'ack'), { qos: 1 });
      devices.set(deviceId, { client, seq: 0 });
    }
    enrollment.close();
    api.close();
    drift = new DriftServiceClient(cp.addresses.grpc, credentials.createInsecure());
    metadata = bearer(readFileSync(cp.adminTokenFile, 'utf8').trim());
  });

  afterAll(async () => {
    for (const { client } of devices.values()) client.end(true);
    drift?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('drift events - the first verdicts of the fleet and of each cohort are recorded as changes from no_data', async () => {
    expect(await cp.driftWatcher.evaluate()).toEqual([]);
    await sendSketch('dev-a', false);
    await sendSketch('dev-b', false);
    const events = await cp.driftWatcher.evaluate();
    expect(transitions(events)).toEqual([
      ['', 'no_data', 'ok'],
      ['a', 'no_data', 'ok'],
      ['b', 'no_data', 'ok'],
    ]);
    expect(events.map((e) => [e.model, e.version, e.atMs, e.rows, e.devices])).toEqual([
      ['vib', 1, clock.now(), 2000, 2],
      ['vib', 1, clock.now(), 1000, 1],
      ['vib', 1, clock.now(), 1000, 1],
    ]);
    expect(events[1]!.id).toBeGreaterThan(events[0]!.id);
  });

  it('drift events - drifted sketches from cohort b make exactly one alert event for b, and none for a', async () => {
    clock.advance(NEXT_ROUND);
    await sendSketch('dev-a', false);
    await sendSketch('dev-b', true);
    const events = await cp.driftWatcher.evaluate();
    const b = events.filter((e) => e.cohort === 'b');
    expect(transitions(b)).toEqual([['b', 'ok', 'alert']]);
    expect(b[0]!.driftedShare).toBeGreaterThanOrEqual(0.5);
    expect(b[0]!.driftedFeatures).toContain('temperature_c');
    expect(b[0]!.maxPsi).toBeGreaterThan(0.2);
    expect(events.filter((e) => e.cohort === 'a')).toEqual([]);
  });

  it('drift events - an evaluation with nothing new records nothing', async () => {
    const before = await list({});
    expect(await cp.driftWatcher.evaluate()).toEqual([]);
    clock.advance(MINUTE);
    expect(await cp.driftWatcher.evaluate()).toEqual([]);
    expect(await list({})).toEqual(before);
  });

  it('drift events - ListDriftEvents filters by model, version, cohort, since, after id and limit', async () => {
    const all = await list({});
    expect(all.map((e) => e.id)).toEqual([...all.map((e) => e.id)].sort((x, y) => x - y));
    expect(await list({ model: 'vib', version: 1 })).toEqual(all);
    expect(transitions(await list({ cohort: 'b' }))).toEqual([
      ['b', 'no_data', 'ok'],
      ['b', 'ok', 'alert'],
    ]);
    expect((await list({ cohort: '' })).every((e) => e.cohort === '')).toBe(true);
    expect(await list({ afterId: all[2]!.id })).toEqual(all.slice(3));
    expect(await list({ sinceMs: all.at(-1)!.atMs })).toEqual(all.filter((e) => e.atMs >= all.at(-1)!.atMs));
    expect(await list({ limit: 2 })).toEqual(all.slice(0, 2));
    expect(await list({ model: 'vib', version: 2 })).toEqual([]);
  });

  it('drift events - bad filters are refused with REQUEST_INVALID, an unknown model with MODEL_NOT_FOUND', async () => {
    expect((await refusalOf(list({ version: 1 }))).code).toBe('REQUEST_INVALID');
    expect((await refusalOf(list({ limit: -1 }))).code).toBe('REQUEST_INVALID');
    expect((await refusalOf(list({ limit: 10_001 }))).code).toBe('REQUEST_INVALID');
    expect((await refusalOf(list({ model: 'nope' }))).code).toBe('MODEL_NOT_FOUND');
    const watchRefusal = await new Promise<ServiceError>((resolve) => {
      const stream = drift.watchDriftEvents(WatchDriftEventsRequest.fromPartial({ sinceMs: -5 }), metadata);
      stream.on('data', () => undefined);
      stream.on('error', resolve);
    });
    expect(String(watchRefusal.metadata.get(ERROR_CODE_METADATA_KEY)[0])).toBe('REQUEST_INVALID');
  });

  it('drift events - WatchDriftEvents replays the events after after_id, then streams a new one live', async () => {
    const [first] = await list({ cohort: 'b' });
    const seen: DriftEvent[] = [];
    const stream = drift.watchDriftEvents(WatchDriftEventsRequest.fromPartial({ model: 'vib', cohort: 'b', afterId: first!.id }), metadata);
    const arrived = (n: number) =>
      new Promise<void>((resolve, reject) => {
        const check = () => (seen.length >= n ? resolve() : undefined);
        stream.on('data', (e: DriftEvent) => {
          seen.push(e);
          check();
        });
        stream.on('error', (err: ServiceError) => (err.code === 1 ? undefined : reject(err)));
        check();
      });
    await arrived(1);
    expect(transitions(seen)).toEqual([['b', 'ok', 'alert']]);

    // Cohort b recovers; the watcher records it and the open stream hears it.
    clock.advance(NEXT_ROUND);
    await sendSketch('dev-a', false);
    await sendSketch('dev-b', false);
    const live = new Promise<void>((resolve) => stream.on('data', () => resolve()));
    // Hysteresis (drift.clearAfter, 3): a lower status is recorded on the third evaluation in a row that gives it.
    expect((await cp.driftWatcher.evaluate()).filter((e) => e.cohort === 'b')).toEqual([]);
    clock.advance(MINUTE / 2);
    expect((await cp.driftWatcher.evaluate()).filter((e) => e.cohort === 'b')).toEqual([]);
    clock.advance(MINUTE / 2);
    const recorded = await cp.driftWatcher.evaluate();
    await live;
    stream.cancel();
    expect(transitions(seen)).toEqual([
      ['b', 'ok', 'alert'],
      ['b', 'alert', 'ok'],
    ]);
    expect(seen[1]!.id).toBe(recorded.find((e) => e.cohort === 'b')!.id);
  });

  it('drift events - driftline drift events --json prints the recorded events as one JSON document', async () => {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(
        process.execPath,
        [BIN, '--server', cp.addresses.grpc, '--token-file', cp.adminTokenFile, 'drift', 'events', '--model', 'vib', '--cohort', 'b', '--json'],
        { cwd: dir },
        (error, out, err) => resolve({ code: error ? Number(error.code) : 0, stdout: out, stderr: err }),
      ),
    );
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const { events } = JSON.parse(stdout) as { events: Array<Record<string, unknown>> };
    expect(events.map((e) => [e.cohort ?? '', e.previousStatus, e.status])).toEqual([
      ['b', 'no_data', 'ok'],
      ['b', 'ok', 'alert'],
      ['b', 'alert', 'ok'],
    ]);
    expect(events[1]).toMatchObject({ model: 'vib', version: 1, devices: 1, rows: 1000 });
  });

  it('drift show --json emits every field, defaults included; the long window names what the current one no longer shows; tiny p-values print as < 1e-300', async () => {
    const show = (...args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(
          process.execPath,
          [BIN, '--server', cp.addresses.grpc, '--token-file', cp.adminTokenFile, 'drift', 'show', '--model', 'vib', ...args],
          { cwd: dir },
          (error, out, err) => resolve({ code: error ? Number(error.code) : 0, stdout: out, stderr: err }),
        ),
      );
    const json = await show('--json');
    expect(json.stderr).toBe('');
    const { statuses } = JSON.parse(json.stdout) as { statuses: Array<Record<string, unknown> & { features: Array<Record<string, unknown>> }> };
    const fleet = statuses.find((s) => s.cohort === '');
    expect(fleet).toBeDefined();
    for (const s of statuses) {
      expect(Object.keys(s)).toEqual(expect.arrayContaining(['cohort', 'status', 'driftedShare', 'reason', 'minRows', 'features']));
      for (const f of s.features) expect(Object.keys(f)).toEqual(expect.arrayContaining(['name', 'psi', 'pValue', 'pAdjusted', 'drifted', 'status']));
    }
    // Cohort b is clean now, but the long window (drift.longWindow) still holds its drifted round:
    // significant (p underflows to 0) with the current window's effects below the floors.
    const b = statuses.find((s) => s.cohort === 'b')!;
    expect(b.status).toBe('ok');
    expect(b).toMatchObject({ driftedShare: 0 });
    const remembered = b.features.find((f) => f.name === 'temperature_c')!;
    expect(remembered).toMatchObject({ status: 'below_floor', drifted: false });
    expect(remembered.pAdjusted as number).toBeLessThan(1e-10);
    const table = await show('--features');
    expect(table.code).toBe(0);
    expect(table.stdout).toContain('below_floor');
    // p-values that underflow to 0 read "< 1e-300", not 0.0e+0.
    expect([0, 1e-320, 2e-300, 0.03].map(pValueText)).toEqual(['< 1e-300', '< 1e-300', '2.0e-300', '3.0e-2']);
  });

  it("drift events - the control plane's shutdown ends an open watch stream cleanly", async () => {
    const stream = drift.watchDriftEvents(WatchDriftEventsRequest.fromPartial({}), metadata);
    const outcome = new Promise<string>((resolve) => {
      stream.on('data', () => undefined);
      stream.on('end', () => resolve('end'));
      stream.on('error', (err: ServiceError) => resolve(`error ${err.code}`));
    });
    // The replay's first event shows the call is subscribed.
    await new Promise((resolve) => stream.once('data', resolve));
    await cp.shutdown();
    expect(await outcome).toBe('end');
  });
});
