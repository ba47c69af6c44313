/**
 * FederatedService against a real `driftline serve` in process (gRPC, SQLite, artifact server,
 * embedded MQTT broker), with the devices played by real MQTT clients holding the credentials
 * they enrolled with: invitations arrive on down/federated, the head is downloaded from the
 * artifact server with the device credential, reports go up on up/federated.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { downTopic, upTopic } from '../common/device-protocol/topics.js';
import { decodeHead, headLength } from '../common/federated/head-vector.js';
import { FederatedInvitation, FederatedInvitation_Kind as Kind, ReportedState } from '../common/proto/driftline/v1/device_link.js';
import { FederatedServiceService, type FederatedTask } from '../common/proto/driftline/v1/federated.js';
import { DeviceServiceService, EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import { startRequest, evaluateReport, trainReport } from './helpers/federated.js';
import { rpc } from './helpers/grpc-calls.js';
import { connectClient } from './helpers/mqtt.js';
import { waitFor } from './helpers/processes.js';
import { startTrainingApi, type TrainingApiRig } from './helpers/training-api.js';

interface Device {
  id: string;
  password: string;
  client: MqttClient;
  invitations: FederatedInvitation[];
}

describe('FederatedService over gRPC with devices on MQTT', () => {
  let dir: string;
  let rig: TrainingApiRig;
  let enrollment: EnrollmentServiceClient;
  const devices: Device[] = [];

  async function enroll(id: string, servesBase: boolean): Promise<Device> {
    const devicesApi = rig.admin.service(DeviceServiceService);
    const { token } = await devicesApi.createEnrollmentToken({ deviceId: id, labels: {}, ttlSeconds: 600 });
    const res = await rpc<EnrollResponse>((cb) =>
      enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId: id, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
    );
    const client = await connectClient(rig.cp.addresses.mqtt, { clientId: id, username: res.mqttUsername, password: res.mqttPassword });
    const device: Device = { id, password: res.mqttPassword, client, invitations: [] };
    client.on('message', (topic, payload) => {
      if (topic === downTopic(id, 'federated')) device.invitations.push(FederatedInvitation.decode(payload));
    });
    await client.subscribeAsync(downTopic(id, 'federated'), { qos: 1 });
    const state = ReportedState.fromPartial({
      agentVersion: 'test',
      firmwareProfile: 'generic-x86_64-cpu',
      activeModels: servesBase ? [{ name: 'vibration', version: 1, state: 'serving' }] : [],
    });
    await client.publishAsync(upTopic(id, 'state'), Buffer.from(ReportedState.encode(state).finish()), { qos: 1 });
    await waitFor(
      () => devicesApi.listDevices({ selector: '', includeDecommissioned: false }),
      (r) => r.devices.some((d) => d.id === id && d.reported !== undefined),
      { what: `${id}'s reported state` },
    );
    devices.push(device);
    return device;
  }

  const download = (device: Device, path: string) =>
    fetch(`${rig.cp.addresses.http}${path}`, { headers: { authorization: `Basic ${Buffer.from(`${device.id}:${device.password}`).toString('base64')}` } });
  const publish = (device: Device, payload: Uint8Array) => device.client.publishAsync(upTopic(device.id, 'federated'), Buffer.from(payload), { qos: 1 });
  const get = (id: string): Promise<FederatedTask> => rig.viewer.service(FederatedServiceService).getFederatedTask({ id });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-federated-api-'));
    rig = await startTrainingApi(dir);
    enrollment = new EnrollmentServiceClient(rig.cp.addresses.grpc, credentials.createInsecure());
    for (const id of ['fl-a', 'fl-b', 'fl-c']) await enroll(id, true);
    await enroll('fl-outsider', false);
  });

  afterAll(async () => {
    for (const d of devices) d.client.end(true);
    enrollment?.close();
    await rig?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('api - a viewer may read but not start; start validates fields (FEDERATED_TASK_INVALID) and is idempotent by client_request_id', async () => {
    const viewer = rig.viewer.service(FederatedServiceService);
    const operator = rig.operator.service(FederatedServiceService);
    expect(await viewer.startFederatedTask(startRequest()).catch((e: unknown) => e)).toMatchObject({ code: 'ROLE_INSUFFICIENT' });
    expect(await operator.startFederatedTask(startRequest({ rounds: 0 })).catch((e: unknown) => e)).toMatchObject({ code: 'FEDERATED_TASK_INVALID' });
    expect(await viewer.getFederatedTask({ id: 'fl_missing' }).catch((e: unknown) => e)).toMatchObject({ code: 'FEDERATED_TASK_NOT_FOUND' });
    const first = await operator.startFederatedTask(startRequest({ clientRequestId: 'api-1', rounds: 1, clientsPerRound: 1, minClients: 1 }));
    const again = await operator.startFederatedTask(startRequest({ clientRequestId: 'api-1', rounds: 1, clientsPerRound: 1, minClients: 1 }));
    expect(again.id).toBe(first.id);
    expect(await operator.startFederatedTask(startRequest({ clientRequestId: 'api-1', rounds: 2 })).catch((e: unknown) => e)).toMatchObject({
      code: 'REQUEST_ID_REUSED',
    });
    const cancelled = await operator.cancelFederatedTask({ id: first.id, reason: 'test' });
    expect(cancelled.state).toBe('cancelled');
    expect(await operator.cancelFederatedTask({ id: first.id, reason: '' }).catch((e: unknown) => e)).toMatchObject({ code: 'FEDERATED_STATE_INVALID' });
    const listed = await viewer.listFederatedTasks({ model: 'vibration', state: 'cancelled', pageSize: 10, pageToken: '' });
    expect(listed.tasks.map((t) => t.id)).toContain(first.id);
  });

  it('e2e - devices on MQTT train a round: head downloaded with the device credential, NaN and replayed updates refused or counted, watched to the end', async () => {
    const operator = rig.operator.service(FederatedServiceService);
    const started = await operator.startFederatedTask(startRequest({ rounds: 1, clientsPerRound: 3, minClients: 2, cohortSelector: '' }));
    expect(started.state).toBe('running');
    const watched: FederatedTask[] = [];
    const watching = (async () => {
      for await (const update of rig.viewer.service(FederatedServiceService).watchFederatedTask({ id: started.id })) watched.push(update.task!);
    })();
    const training = devices.filter((d) => d.id !== 'fl-outsider');
    const invitationOf = async (d: Device, kind: Kind, round: number): Promise<FederatedInvitation> =>
      waitFor(
        () => d.invitations.find((i) => i.taskId === started.id && i.kind === kind && i.round === round),
        (i) => i !== undefined,
        { what: `${d.id}'s invitation` },
      ) as Promise<FederatedInvitation>;

    const [a, b, c] = training;
    const inv = await invitationOf(a!, Kind.KIND_TRAIN, 1);
    // The invited device downloads the head; a device that was not invited may not.
    const head = await download(a!, inv.headArtifactPath);
    expect(head.status).toBe(200);
    const layers = decodeHead(new Uint8Array(await head.arrayBuffer()));
    const length = headLength(layers);
    expect(length).toBeGreaterThan(0);
    const outsider = devices.find((d) => d.id === 'fl-outsider')!;
    expect((await download(outsider, inv.headArtifactPath)).headers.get('driftline-error-code')).toBe('ARTIFACT_FORBIDDEN');

    const nan = new Float32Array(length).fill(0.01);
    nan[0] = Number.NaN;
    await publish(a!, trainReport(inv, nan));
    const invB = await invitationOf(b!, Kind.KIND_TRAIN, 1);
    const good = trainReport(invB, new Float32Array(length).fill(0.01), { sampleCount: 20 });
    await publish(b!, good);
    await publish(b!, good);
    await waitFor(
      () => get(started.id),
      (t) => t.rounds[0]!.duplicates === 1 && t.rounds[0]!.refused.FEDERATED_UPDATE_NOT_FINITE === 1,
      { what: 'the refusal and the duplicate counted' },
    );
    const invC = await invitationOf(c!, Kind.KIND_TRAIN, 1);
    await publish(c!, trainReport(invC, new Float32Array(length).fill(-0.01), { sampleCount: 20 }));
    await waitFor(
      () => get(started.id),
      (t) => t.rounds[0]!.state === 'evaluating',
      { what: 'the round to aggregate' },
    );
    for (const d of [b!, c!]) await publish(d, evaluateReport(await invitationOf(d, Kind.KIND_EVALUATE, 1), 10, 7));
    const final = await waitFor(
      () => get(started.id),
      (t) => t.state === 'evaluating',
      { what: 'the task evaluation' },
    );
    for (const d of training) {
      for (const i of d.invitations.filter((x) => x.taskId === started.id && x.kind === Kind.KIND_EVALUATE && x.round === 0)) {
        // The final and the base heads are both downloadable by an evaluating device.
        expect((await download(d, i.headArtifactPath)).status).toBe(200);
        await publish(d, evaluateReport(i, 10, 8));
      }
    }
    const done = await waitFor(
      () => get(started.id),
      (t) => t.state === 'succeeded',
      { what: 'the task to succeed' },
    );
    expect(done.rounds[0]).toMatchObject({ aggregated: 2, reported: 3, duplicates: 1, refused: { FEDERATED_UPDATE_NOT_FINITE: 1 }, accuracy: 0.7 });
    expect(done.headSha256).toBe(final.headSha256);
    await watching;
    expect(watched.at(-1)!.state).toBe('succeeded');
    expect(watched.length).toBeGreaterThan(2);
    // Once the task ended the head grant is gone.
    expect((await download(a!, inv.headArtifactPath)).status).toBe(403);
  });
});
