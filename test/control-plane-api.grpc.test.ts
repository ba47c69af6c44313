import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, loadPackageDefinition, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { sha256Hex } from '../common/hashing.js';
import { silentLogger } from '../common/logger.js';
import { ReportedState, type DesiredState } from '../common/proto/driftline/v1/device_link.js';
import {
  AccessServiceClient,
  CreateEnrollmentTokenRequest,
  DeviceServiceClient,
  DeviceStatus,
  EnrollmentServiceClient,
  EnrollRequest,
  ListDevicesRequest,
  Role,
  type CreateEnrollmentTokenResponse,
  type CreateTokenResponse,
  type Device,
  type EnrollResponse,
  type ListDevicesResponse,
  type ListTokensResponse,
} from '../common/proto/driftline/v1/fleet.js';
import {
  DeployModelRequest,
  ModelServiceClient,
  UndeployModelRequest,
  UploadModelHeader,
  type UndeployModelResponse,
  type DeployModelResponse,
  type ListModelsResponse,
  type Model,
  type ModelVersion,
} from '../common/proto/driftline/v1/models.js';
import { TelemetryServiceClient, TelemetrySummary, type TelemetrySummary as Summary } from '../common/proto/driftline/v1/telemetry.js';
import { RolloutServiceClient, StartRolloutRequest } from '../common/proto/driftline/v1/rollouts.js';
import { ERROR_CODE_METADATA_KEY } from '../control-plane/api/grpc-errors.js';
import { startGrpcServer, type GrpcServer } from '../control-plane/api/grpc-server.js';
import type { DeviceLink } from '../control-plane/device-link/ports.js';
import { DesiredStates } from '../control-plane/fleet/desired-states.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import { SqliteOperatorTokenRepository } from '../control-plane/store/sqlite/operator-token-repository.js';
import { ensureAdminToken, OperatorTokenStore } from '../control-plane/fleet/operator-tokens.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { ModelRegistry } from '../control-plane/registry/model-registry.js';
import { SqliteModelVersionRepository } from '../control-plane/store/sqlite/model-version-repository.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { bearer, rpc } from './helpers/grpc-calls.js';

const MAX_MODEL_BYTES = 64 * 1024;
const TOKEN_TTL_MS = 3_600_000;

class RecordingDeviceLink implements Pick<DeviceLink, 'sendDesired' | 'disconnect'> {
  readonly published: Array<{ deviceId: string; desired: DesiredState }> = [];
  readonly disconnected: string[] = [];
  async sendDesired(deviceId: string, desired: DesiredState): Promise<void> {
    this.published.push({ deviceId, desired });
  }
  disconnect(deviceId: string): void {
    this.disconnected.push(deviceId);
  }
}

/** The stable code from the trailer, which is what clients branch on. */
async function errorOf(promise: Promise<unknown>): Promise<{ status: status; code: string }> {
  const err = (await promise.then(
    () => expect.fail('the call succeeded'),
    (e: unknown) => e,
  )) as ServiceError;
  return { status: err.code, code: String(err.metadata.get(ERROR_CODE_METADATA_KEY)[0]) };
}

describe('control-plane gRPC API', () => {
  let dir: string;
  let db: Database;
  let fleet: FleetStore;
  let registry: ModelRegistry;
  let server: GrpcServer;
  let link: RecordingDeviceLink;
  let clock: ManualClock;
  let admin: Metadata;
  let operator: Metadata;
  let viewer: Metadata;
  let devices: DeviceServiceClient;
  let enrollment: EnrollmentServiceClient;
  let models: ModelServiceClient;
  let access: AccessServiceClient;
  let address: string;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-api-'));
    db = openDatabase(join(dir, 'control-plane.db'));
    clock = new ManualClock();
    fleet = new FleetStore(new SqliteFleetRepository(db));
    const tokens = new OperatorTokenStore(new SqliteOperatorTokenRepository(db));
    registry = new ModelRegistry({
      versions: new SqliteModelVersionRepository(db),
      artifacts: new ArtifactStore(join(dir, 'artifacts')),
      clock,
      maxModelBytes: MAX_MODEL_BYTES,
    });
    link = new RecordingDeviceLink();
    admin = bearer((await ensureAdminToken(tokens, dir, clock)).token!);
    operator = bearer((await tokens.create('ci', 'operator', clock.now())).secret);
    viewer = bearer((await tokens.create('dashboard', 'viewer', clock.now())).secret);
    server = await startGrpcServer({
      host: '127.0.0.1',
      port: 0,
      fleet,
      tokens,
      registry,
      deviceLink: link,
      desiredStates: new DesiredStates({ fleet, link, logger: silentLogger() }),
      telemetry: { summary: async () => TelemetrySummary.fromPartial({ recordsStored: 7 }) },
      advertisedMqttUrl: () => 'mqtt://127.0.0.1:1883',
      advertisedHttpUrl: () => 'http://127.0.0.1:7480',
      config: { enrollmentTokenTtl: TOKEN_TTL_MS, onlineWindow: 90_000, rollout: { tickInterval: 5_000, watchInterval: 1_000, rollbackTtl: 7 * 86_400_000 } },
      clock,
      logger: silentLogger(),
    });
    address = `127.0.0.1:${server.port}`;
    devices = new DeviceServiceClient(address, credentials.createInsecure());
    enrollment = new EnrollmentServiceClient(address, credentials.createInsecure());
    models = new ModelServiceClient(address, credentials.createInsecure());
    access = new AccessServiceClient(address, credentials.createInsecure());
  });

  afterEach(async () => {
    for (const client of [devices, enrollment, models, access]) client.close();
    await server.shutdown(1000);
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const createToken = (deviceId: string, extra: Partial<CreateEnrollmentTokenRequest> = {}, md = operator) =>
    rpc<CreateEnrollmentTokenResponse>((cb) => devices.createEnrollmentToken(CreateEnrollmentTokenRequest.fromPartial({ deviceId, ...extra }), md, cb));
  const enroll = (token: string, deviceId: string) =>
    rpc<EnrollResponse>((cb) =>
      enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId, firmwareProfile: 'generic-x86_64-cpu', agentVersion: '0.1.0' }), cb),
    );
  const enrollDevice = async (deviceId: string, labels: Record<string, string> = {}) => enroll((await createToken(deviceId, { labels })).token, deviceId);
  const getDevice = (deviceId: string) => rpc<Device>((cb) => devices.getDevice({ deviceId }, viewer, cb));
  const upload = (bytes: Uint8Array, header: Partial<UploadModelHeader>, md = operator, chunkSize = 512) =>
    rpc<ModelVersion>((cb) => {
      const stream = models.uploadModel(md, cb);
      stream.write({ part: { $case: 'header', value: UploadModelHeader.fromPartial({ sizeBytes: bytes.length, sha256: sha256Hex(bytes), ...header }) } });
      for (let i = 0; i < bytes.length; i += chunkSize) stream.write({ part: { $case: 'chunk', value: Buffer.from(bytes.subarray(i, i + chunkSize)) } });
      stream.end();
    });

  describe('authorization', () => {
    it('refuses a call without a bearer token with AUTH_MISSING', async () => {
      const err = await errorOf(rpc<ListDevicesResponse>((cb) => devices.listDevices(ListDevicesRequest.fromPartial({}), cb)));
      expect(err).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_MISSING' });
    });

    it('refuses an unknown token with AUTH_INVALID', async () => {
      const err = await errorOf(rpc<ListDevicesResponse>((cb) => devices.listDevices(ListDevicesRequest.fromPartial({}), bearer('dlt_nope'), cb)));
      expect(err).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_INVALID' });
    });

    it('lets a viewer list devices but not upload a model', async () => {
      await expect(rpc<ListDevicesResponse>((cb) => devices.listDevices(ListDevicesRequest.fromPartial({}), viewer, cb))).resolves.toEqual({ devices: [] });
      const err = await errorOf(upload(buildDemoModel({ seed: 1 }).bytes, { name: 'vibration' }, viewer));
      expect(err).toEqual({ status: status.PERMISSION_DENIED, code: 'ROLE_INSUFFICIENT' });
    });

    it('lets an operator create enrollment tokens but not operator tokens', async () => {
      await expect(createToken('edge-1')).resolves.toMatchObject({ deviceId: 'edge-1', expiresAtMs: clock.now() + TOKEN_TTL_MS });
      const err = await errorOf(rpc<CreateTokenResponse>((cb) => access.createToken({ name: 'x', role: Role.ROLE_VIEWER }, operator, cb)));
      expect(err).toEqual({ status: status.PERMISSION_DENIED, code: 'ROLE_INSUFFICIENT' });
    });

    it('lets an admin mint, list and revoke tokens, and a revoked token stops working', async () => {
      const minted = await rpc<CreateTokenResponse>((cb) => access.createToken({ name: 'grafana', role: Role.ROLE_VIEWER }, admin, cb));
      const md = bearer(minted.token);
      await rpc<ListDevicesResponse>((cb) => devices.listDevices(ListDevicesRequest.fromPartial({}), md, cb));
      const listed = await rpc<ListTokensResponse>((cb) => access.listTokens({}, admin, cb));
      expect(listed.tokens.map((t) => t.name)).toEqual(['bootstrap-admin', 'ci', 'dashboard', 'grafana']);
      await rpc((cb) => access.revokeToken({ id: minted.id }, admin, cb));
      const err = await errorOf(rpc<ListDevicesResponse>((cb) => devices.listDevices(ListDevicesRequest.fromPartial({}), md, cb)));
      expect(err.code).toBe('AUTH_INVALID');
      expect((await errorOf(rpc((cb) => access.revokeToken({ id: 'tok_missing' }, admin, cb)))).code).toBe('TOKEN_NOT_FOUND');
    });

    it('refuses a token request with an unspecified role', async () => {
      const err = await errorOf(rpc<CreateTokenResponse>((cb) => access.createToken({ name: 'x', role: Role.ROLE_UNSPECIFIED }, admin, cb)));
      expect(err).toEqual({ status: status.INVALID_ARGUMENT, code: 'REQUEST_INVALID' });
    });
  });

  describe('enrollment', () => {
    it('enrolls a device once and hands it its MQTT credential, URLs and labels', async () => {
      const res = await enrollDevice('edge-1', { site: 'plant-3' });
      expect(res).toMatchObject({
        deviceId: 'edge-1',
        mqttUsername: 'edge-1',
        mqttUrl: 'mqtt://127.0.0.1:1883',
        artifactBaseUrl: 'http://127.0.0.1:7480',
        labels: { site: 'plant-3', profile: 'generic-x86_64-cpu' },
      });
      expect(await fleet.verifyDeviceCredential('edge-1', res.mqttPassword)).toBe('ok');
      expect(await getDevice('edge-1')).toMatchObject({
        status: DeviceStatus.DEVICE_STATUS_ENROLLED,
        labels: { site: 'plant-3', profile: 'generic-x86_64-cpu' },
      });
    });

    it('refuses a token that was already used', async () => {
      const { token } = await createToken('edge-1');
      await enroll(token, 'edge-1');
      expect(await errorOf(enroll(token, 'edge-1'))).toEqual({ status: status.UNAUTHENTICATED, code: 'ENROLLMENT_TOKEN_USED' });
    });

    it('refuses an expired token', async () => {
      const { token } = await createToken('edge-1', { ttlSeconds: 60 });
      clock.advance(60_000);
      expect((await errorOf(enroll(token, 'edge-1'))).code).toBe('ENROLLMENT_TOKEN_EXPIRED');
    });

    it('refuses a token presented for another device id, and an unknown token, as invalid', async () => {
      const { token } = await createToken('edge-1');
      expect((await errorOf(enroll(token, 'edge-2'))).code).toBe('ENROLLMENT_TOKEN_INVALID');
      expect((await errorOf(enroll('dle_unknown', 'edge-1'))).code).toBe('ENROLLMENT_TOKEN_INVALID');
      // The refused attempt did not spend the token.
      await expect(enroll(token, 'edge-1')).resolves.toMatchObject({ deviceId: 'edge-1' });
    });

    it('refuses device ids that could escape a topic or an object key', async () => {
      for (const id of ['+', '#', '$SYS', '__proto__', 'a/b', '']) {
        expect((await errorOf(createToken(id))).code).toBe('ID_INVALID');
      }
    });

    it('refuses token lifetimes beyond the bound', async () => {
      expect((await errorOf(createToken('edge-1', { ttlSeconds: 365 * 86_400 }))).code).toBe('REQUEST_INVALID');
    });

    it('refuses to enroll a decommissioned device, and disconnects it when decommissioned', async () => {
      await enrollDevice('edge-1');
      const { token } = await rpc<CreateEnrollmentTokenResponse>((cb) => devices.reenrollDevice({ deviceId: 'edge-1', ttlSeconds: 0 }, operator, cb));
      const device = await rpc<Device>((cb) => devices.decommissionDevice({ deviceId: 'edge-1' }, operator, cb));
      expect(device.status).toBe(DeviceStatus.DEVICE_STATUS_DECOMMISSIONED);
      expect(link.disconnected).toEqual(['edge-1']);
      expect((await errorOf(enroll(token, 'edge-1'))).code).toBe('DEVICE_DECOMMISSIONED');
      expect((await errorOf(createToken('edge-1'))).code).toBe('DEVICE_DECOMMISSIONED');
    });

    it('refuses a second token for an enrolled device, and one issued before it enrolled, with DEVICE_ALREADY_ENROLLED', async () => {
      const spare = await createToken('edge-1');
      const first = await enrollDevice('edge-1');
      expect(await errorOf(createToken('edge-1'))).toEqual({ status: status.FAILED_PRECONDITION, code: 'DEVICE_ALREADY_ENROLLED' });
      expect((await errorOf(enroll(spare.token, 'edge-1'))).code).toBe('DEVICE_ALREADY_ENROLLED');
      expect(await fleet.verifyDeviceCredential('edge-1', first.mqttPassword)).toBe('ok');
      expect(link.disconnected).toEqual([]);
    });

    it('rotates the secret and disconnects the old session only when the operator asked to re-enroll', async () => {
      const first = await enrollDevice('edge-1');
      const grant = await rpc<CreateEnrollmentTokenResponse>((cb) => devices.reenrollDevice({ deviceId: 'edge-1', ttlSeconds: 0 }, operator, cb));
      expect(grant).toMatchObject({ deviceId: 'edge-1', reenroll: true });
      // Issuing the token changes nothing yet: the device keeps working until the token is spent.
      expect(await fleet.verifyDeviceCredential('edge-1', first.mqttPassword)).toBe('ok');
      const second = await enroll(grant.token, 'edge-1');
      expect(second.mqttPassword).not.toBe(first.mqttPassword);
      expect(await fleet.verifyDeviceCredential('edge-1', first.mqttPassword)).toBe('bad_secret');
      expect(await fleet.verifyDeviceCredential('edge-1', second.mqttPassword)).toBe('ok');
      expect(link.disconnected).toEqual(['edge-1']);
      expect((await errorOf(rpc((cb) => devices.reenrollDevice({ deviceId: 'edge-never', ttlSeconds: 0 }, operator, cb)))).code).toBe('DEVICE_NOT_FOUND');
    });
  });

  describe('devices', () => {
    it('lists devices by label selector and relabels them', async () => {
      await enrollDevice('edge-1', { site: 'plant-3' });
      await enrollDevice('edge-2', { site: 'plant-4' });
      const list = (selector: string) =>
        rpc<ListDevicesResponse>((cb) => devices.listDevices(ListDevicesRequest.fromPartial({ selector }), viewer, cb)).then((r) => r.devices.map((d) => d.id));
      expect(await list('site=plant-3')).toEqual(['edge-1']);
      expect(await list('site=plant*')).toEqual(['edge-1', 'edge-2']);
      const relabelled = await rpc<Device>((cb) =>
        devices.labelDevice({ deviceId: 'edge-2', set: { site: 'plant-3', ring: 'canary' }, remove: [] }, operator, cb),
      );
      expect(relabelled.labels).toEqual({ site: 'plant-3', ring: 'canary', profile: 'generic-x86_64-cpu' });
      expect(await list('site=plant-3')).toEqual(['edge-1', 'edge-2']);
      expect((await errorOf(list('site'))).code).toBe('REQUEST_INVALID');
    });

    it('reports a device online only within the online window of its last contact', async () => {
      await enrollDevice('edge-1');
      expect((await getDevice('edge-1')).online).toBe(false);
      await fleet.recordSeen('edge-1', clock.now());
      expect((await getDevice('edge-1')).online).toBe(true);
      clock.advance(90_001);
      expect((await getDevice('edge-1')).online).toBe(false);
    });

    it('answers NOT_FOUND for a device that was never enrolled', async () => {
      expect(await errorOf(getDevice('ghost'))).toEqual({ status: status.NOT_FOUND, code: 'DEVICE_NOT_FOUND' });
    });
  });

  describe('models', () => {
    it('stores a streamed ONNX model and lists and gets it with its signature', async () => {
      const { bytes } = buildDemoModel({ seed: 1 });
      const version = await upload(bytes, { name: 'vibration', description: 'demo', metadata: { dataset: 'synthetic' } });
      expect(version).toMatchObject({
        name: 'vibration',
        version: 1,
        sha256: sha256Hex(bytes),
        sizeBytes: bytes.length,
        description: 'demo',
        metadata: { dataset: 'synthetic' },
      });
      expect(version.opset).toBeGreaterThan(0);
      expect(version.inputs).toEqual([{ name: 'features', type: 'float32', shape: [-1, expect.any(Number)] }]);
      expect(version.outputs.map((o) => o.name)).toEqual(['probabilities', 'label']);

      const next = await upload(buildDemoModel({ seed: 2 }).bytes, { name: 'vibration' });
      expect(next.version).toBe(2);
      const listed = await rpc<ListModelsResponse>((cb) => models.listModels({}, viewer, cb));
      expect(listed.latest.map((m) => [m.name, m.version])).toEqual([['vibration', 2]]);
      const model = await rpc<Model>((cb) => models.getModel({ name: 'vibration' }, viewer, cb));
      expect(model.versions.map((v) => v.version)).toEqual([1, 2]);
    });

    it('returns the latest version again when the same bytes are pushed twice', async () => {
      const { bytes } = buildDemoModel({ seed: 1 });
      const first = await upload(bytes, { name: 'vibration' });
      const again = await upload(bytes, { name: 'vibration' });
      expect(again).toEqual(first);
    });

    it('refuses bytes that do not match the declared sha256', async () => {
      const { bytes } = buildDemoModel({ seed: 1 });
      expect(await errorOf(upload(bytes, { name: 'vibration', sha256: sha256Hex('something else') }))).toEqual({
        status: status.INVALID_ARGUMENT,
        code: 'MODEL_CHECKSUM_MISMATCH',
      });
    });

    it('refuses bytes that are not ONNX', async () => {
      expect((await errorOf(upload(randomBytes(2000), { name: 'vibration' }))).code).toBe('MODEL_INVALID');
    });

    it('refuses a model larger than the configured limit', async () => {
      const err = await errorOf(upload(randomBytes(MAX_MODEL_BYTES + 1), { name: 'vibration' }));
      expect(err).toEqual({ status: status.RESOURCE_EXHAUSTED, code: 'PAYLOAD_TOO_LARGE' });
    });

    it('refuses a stream shorter than its header declared', async () => {
      const { bytes } = buildDemoModel({ seed: 1 });
      expect((await errorOf(upload(bytes.subarray(0, 1000), { name: 'vibration', sizeBytes: bytes.length, sha256: sha256Hex(bytes) }))).code).toBe(
        'UPLOAD_INCOMPLETE',
      );
    });

    it('refuses a model name that is not a valid id', async () => {
      expect((await errorOf(upload(buildDemoModel({ seed: 1 }).bytes, { name: '../etc' }))).code).toBe('ID_INVALID');
    });

    it('records no version after a failed upload', async () => {
      await errorOf(upload(randomBytes(2000), { name: 'vibration' }));
      expect((await errorOf(rpc<Model>((cb) => models.getModel({ name: 'vibration' }, viewer, cb)))).code).toBe('MODEL_NOT_FOUND');
    });

    it('deploys the latest version to every enrolled device and publishes a new revision each time', async () => {
      await enrollDevice('edge-1');
      await enrollDevice('edge-2');
      await enrollDevice('edge-3');
      await rpc<Device>((cb) => devices.decommissionDevice({ deviceId: 'edge-3' }, operator, cb));
      const v1 = await upload(buildDemoModel({ seed: 1 }).bytes, { name: 'vibration' });

      const res = await rpc<DeployModelResponse>((cb) => models.deployModel(DeployModelRequest.fromPartial({ name: 'vibration' }), operator, cb));
      expect(res).toEqual({ model: v1, devices: 2 });
      const expectedModel = {
        name: 'vibration',
        version: 1,
        sha256: v1.sha256,
        sizeBytes: v1.sizeBytes,
        artifactPath: `artifacts/sha256/${v1.sha256}`,
        driftReference: '',
        envelope: Buffer.alloc(0),
        rollback: Buffer.alloc(0),
      };
      // The set, and the single-model fields an agent from before reads, filled from its first entry.
      const unsigned = { rootChain: [], rollback: Buffer.alloc(0), models: [expectedModel] };
      expect(link.published).toEqual([
        { deviceId: 'edge-1', desired: { revision: 1, model: expectedModel, ...unsigned } },
        { deviceId: 'edge-2', desired: { revision: 1, model: expectedModel, ...unsigned } },
      ]);
      expect(await fleet.getDesired('edge-1')).toEqual({ revision: 1, model: expectedModel, ...unsigned });
      expect((await getDevice('edge-1')).desiredModel).toEqual(expectedModel);
      expect((await getDevice('edge-1')).desiredModels).toEqual([expectedModel]);

      await rpc<DeployModelResponse>((cb) =>
        models.deployModel(DeployModelRequest.fromPartial({ name: 'vibration', version: 1, deviceIds: ['edge-2'] }), operator, cb),
      );
      expect(link.published.at(-1)).toEqual({ deviceId: 'edge-2', desired: { revision: 2, model: expectedModel, ...unsigned } });
    });

    it("adds a model to each device's set, replaces the entry of the same name, and an undeploy removes one model leaving the others as they were", async () => {
      await enrollDevice('edge-1');
      await enrollDevice('edge-2');
      const detector = await upload(buildDemoModel({ seed: 1 }).bytes, { name: 'detector' });
      await upload(buildDemoModel({ seed: 2 }).bytes, { name: 'classifier' });
      const classifier2 = await upload(buildDemoModel({ seed: 3 }).bytes, { name: 'classifier' });
      await upload(buildDemoModel({ seed: 4 }).bytes, { name: 'recognizer' });
      const deploy = (req: Partial<DeployModelRequest>) =>
        rpc<DeployModelResponse>((cb) => models.deployModel(DeployModelRequest.fromPartial(req), operator, cb));
      const undeploy = (req: Partial<UndeployModelRequest>) =>
        rpc<UndeployModelResponse>((cb) => models.undeployModel(UndeployModelRequest.fromPartial(req), operator, cb));
      const set = async (id: string) => (await getDevice(id)).desiredModels.map((m) => `${m.name}@v${m.version}`);

      // Concurrent deploys of different models to the same devices lose none of each other's entries.
      await Promise.all([deploy({ name: 'detector' }), deploy({ name: 'classifier', version: 1 }), deploy({ name: 'recognizer', deviceIds: ['edge-1'] })]);
      expect((await set('edge-1')).sort()).toEqual(['classifier@v1', 'detector@v1', 'recognizer@v1']);
      expect((await set('edge-2')).sort()).toEqual(['classifier@v1', 'detector@v1']);
      expect((await fleet.getDesired('edge-1'))?.revision).toBe(3);

      const before = (await fleet.getDesired('edge-1'))!.models;
      await deploy({ name: 'classifier', deviceIds: ['edge-1'] });
      const after = (await fleet.getDesired('edge-1'))!;
      expect(after.revision).toBe(4);
      // In place, by name: the other entries are exactly as they were, in the same order.
      expect(after.models.map((m) => m.name)).toEqual(before.map((m) => m.name));
      expect(after.models.find((m) => m.name === 'classifier')).toMatchObject({ version: 2, sha256: classifier2.sha256 });
      expect(after.models.filter((m) => m.name !== 'classifier')).toEqual(before.filter((m) => m.name !== 'classifier'));

      expect(await undeploy({ name: 'recognizer' })).toEqual({ devices: 1 });
      expect((await set('edge-1')).sort()).toEqual(['classifier@v2', 'detector@v1']);
      expect(link.published.at(-1)).toMatchObject({ deviceId: 'edge-1', desired: { revision: 5 } });
      // edge-2 never held it: its desired state (and revision) did not move.
      expect((await fleet.getDesired('edge-2'))?.revision).toBe(2);

      // Removing the first entry: the single-model fields agents from before read follow the new first one.
      await undeploy({ name: detector.name, deviceIds: ['edge-1'] });
      const last = (await fleet.getDesired('edge-1'))!;
      expect(last.models.map((m) => m.name)).toEqual(['classifier']);
      expect(last.model).toEqual(last.models[0]);

      await undeploy({ name: 'classifier', deviceIds: ['edge-1'] });
      expect(await fleet.getDesired('edge-1')).toMatchObject({ revision: 7, models: [], model: undefined });
      expect((await getDevice('edge-1')).desiredModels).toEqual([]);
    });

    it('refuses an undeploy that would change nothing with MODEL_NOT_DEPLOYED, and a bad name or device with their codes', async () => {
      await enrollDevice('edge-1');
      await upload(buildDemoModel({ seed: 1 }).bytes, { name: 'vibration' });
      const undeploy = (req: Partial<UndeployModelRequest>) =>
        rpc<UndeployModelResponse>((cb) => models.undeployModel(UndeployModelRequest.fromPartial(req), operator, cb));
      expect((await errorOf(undeploy({ name: 'vibration' }))).code).toBe('MODEL_NOT_DEPLOYED');
      expect((await errorOf(undeploy({ name: 'Not A Name!' }))).code).toBe('ID_INVALID');
      expect((await errorOf(undeploy({ name: 'vibration', deviceIds: ['ghost'] }))).code).toBe('DEVICE_NOT_FOUND');
      const err = await errorOf(rpc<UndeployModelResponse>((cb) => models.undeployModel(UndeployModelRequest.fromPartial({ name: 'vibration' }), viewer, cb)));
      expect(err.status).toBe(status.PERMISSION_DENIED);
      expect(link.published).toEqual([]);
    });

    it('reads a device that reports the single-model shape of before as a set of one', async () => {
      await enrollDevice('edge-1');
      await fleet.saveReported(
        'edge-1',
        ReportedState.fromPartial({ activeModel: { name: 'vibration', version: 3, sha256: 'ab', provider: 'cpu' }, desiredRevision: 1 }),
        1000,
      );
      const device = await getDevice('edge-1');
      expect(device.reported?.activeModels).toEqual([expect.objectContaining({ name: 'vibration', version: 3, provider: 'cpu', state: 'serving' })]);
      // The single-model field stays as it came, for clients from before.
      expect(device.reported?.activeModel).toMatchObject({ name: 'vibration', version: 3 });
    });

    it('refuses to deploy an unknown version or to an unknown device', async () => {
      await enrollDevice('edge-1');
      await upload(buildDemoModel({ seed: 1 }).bytes, { name: 'vibration' });
      const deploy = (req: Partial<DeployModelRequest>) =>
        rpc<DeployModelResponse>((cb) => models.deployModel(DeployModelRequest.fromPartial(req), operator, cb));
      expect((await errorOf(deploy({ name: 'vibration', version: 9 }))).code).toBe('MODEL_NOT_FOUND');
      expect((await errorOf(deploy({ name: 'vibration', deviceIds: ['ghost'] }))).code).toBe('DEVICE_NOT_FOUND');
      expect(link.published).toEqual([]);
    });
  });

  it('answers telemetry summaries for viewers from the telemetry port', async () => {
    const client = new TelemetryServiceClient(address, credentials.createInsecure());
    const summary = await rpc<Summary>((cb) => client.getSummary({ deviceId: '', sinceMs: 0 }, viewer, cb));
    expect(summary.recordsStored).toBe(7);
    expect((await errorOf(rpc<Summary>((cb) => client.getSummary({ deviceId: '#', sinceMs: 0 }, viewer, cb)))).code).toBe('ID_INVALID');
    client.close();
  });

  it('answers UNIMPLEMENTED for services that are not served yet', async () => {
    const client = new RolloutServiceClient(address, credentials.createInsecure());
    const err = (await rpc((cb) => client.startRollout(StartRolloutRequest.fromPartial({}), admin, cb)).catch((e: unknown) => e)) as ServiceError;
    expect(err.code).toBe(status.UNIMPLEMENTED);
    client.close();
  });

  it('lists the served services through server reflection', async () => {
    const reflectionProto = fileURLToPath(new URL('../node_modules/@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto', import.meta.url));
    const pkg = loadPackageDefinition(loadSync(reflectionProto)) as any;
    const client = new pkg.grpc.reflection.v1.ServerReflection(address, credentials.createInsecure());
    const services = await new Promise<string[]>((resolve, reject) => {
      const call = client.ServerReflectionInfo();
      call.on('data', (res: { listServicesResponse: { service: Array<{ name: string }> } }) => {
        resolve(res.listServicesResponse.service.map((s) => s.name));
        call.end();
      });
      call.on('error', reject);
      call.write({ listServices: '' });
    });
    expect(services).toEqual(
      expect.arrayContaining([
        'driftline.v1.DeviceService',
        'driftline.v1.EnrollmentService',
        'driftline.v1.ModelService',
        'driftline.v1.TelemetryService',
        'driftline.v1.AccessService',
      ]),
    );
    expect(services).not.toContain('driftline.v1.RolloutService');
    client.close();
  });
});
