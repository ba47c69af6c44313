/**
 * Operator authentication on the composed control plane (startControlPlane, not the bare
 * gRPC server that test/control-plane-api.grpc.test.ts covers in depth): the bootstrap
 * admin token from the token file works, and a missing, malformed, unknown or too-weak
 * token is refused with its stable code in the `driftline-error-code` trailer, for unary
 * and client-streaming calls alike, and a refused call changes nothing.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import {
  AccessServiceClient,
  CreateEnrollmentTokenRequest,
  DeviceServiceClient,
  ListDevicesRequest,
  Role,
  type CreateEnrollmentTokenResponse,
  type CreateTokenResponse,
  type ListDevicesResponse,
} from '../common/proto/driftline/v1/fleet.js';
import { ModelServiceClient, type ListModelsResponse, type ModelVersion } from '../common/proto/driftline/v1/models.js';
import { TelemetryServiceClient, type TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { bearer, refusalOf, rpc } from './helpers/grpc-calls.js';

describe('bad inputs - operator authentication on the running control plane', () => {
  let dir: string;
  let cp: ControlPlane;
  let devices: DeviceServiceClient;
  let models: ModelServiceClient;
  let telemetry: TelemetryServiceClient;
  let access: AccessServiceClient;
  let admin: Metadata;
  let viewer: Metadata;

  const createEnrollmentToken = (metadata: Metadata) =>
    rpc<CreateEnrollmentTokenResponse>((cb) =>
      devices.createEnrollmentToken(CreateEnrollmentTokenRequest.fromPartial({ deviceId: 'edge-auth-1' }), metadata, cb),
    );
  const summary = (metadata: Metadata) => rpc<TelemetrySummary>((cb) => telemetry.getSummary({ deviceId: '', sinceMs: 0 }, metadata, cb));
  const listModels = (metadata: Metadata) => rpc<ListModelsResponse>((cb) => models.listModels({}, metadata, cb));
  const upload = (metadata: Metadata) =>
    rpc<ModelVersion>((cb) => {
      const bytes = buildDemoModel({ seed: 3 }).bytes;
      const stream = models.uploadModel(metadata, cb);
      stream.write({
        part: {
          $case: 'header',
          value: { name: 'vibration', sizeBytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), description: '', metadata: {} },
        },
      });
      stream.write({ part: { $case: 'chunk', value: Buffer.from(bytes) } });
      stream.end();
    });

  const withHeader = (value: string): Metadata => {
    const metadata = new Metadata();
    metadata.set('authorization', value);
    return metadata;
  };
  const none = (): Metadata => new Metadata();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-bad-auth-'));
    cp = await startControlPlane({ dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
    const channel = credentials.createInsecure();
    devices = new DeviceServiceClient(cp.addresses.grpc, channel);
    models = new ModelServiceClient(cp.addresses.grpc, channel);
    telemetry = new TelemetryServiceClient(cp.addresses.grpc, channel);
    access = new AccessServiceClient(cp.addresses.grpc, channel);
    admin = bearer(readFileSync(cp.adminTokenFile, 'utf8').trim());
    const minted = await rpc<CreateTokenResponse>((cb) => access.createToken({ name: 'dashboard', role: Role.ROLE_VIEWER }, admin, cb));
    viewer = bearer(minted.token);
  });

  afterAll(async () => {
    for (const client of [devices, models, telemetry, access]) client?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('bad inputs - the bootstrap admin token from the token file is accepted', async () => {
    await expect(rpc<ListDevicesResponse>((cb) => devices.listDevices(ListDevicesRequest.fromPartial({}), admin, cb))).resolves.toEqual({ devices: [] });
  });

  const missing: Array<[string, () => Metadata]> = [
    ['no authorization metadata', none],
    ['an empty bearer', () => withHeader('Bearer ')],
    ['a basic-auth header', () => withHeader(`Basic ${Buffer.from('admin:admin').toString('base64')}`)],
    ['a bare token without the Bearer scheme', () => withHeader(readFileSync(cp.adminTokenFile, 'utf8').trim())],
  ];
  it.each(missing)('bad inputs - answers %s with UNAUTHENTICATED and AUTH_MISSING', async (_, metadata) => {
    expect(await refusalOf(createEnrollmentToken(metadata()))).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_MISSING' });
    expect(await refusalOf(summary(metadata()))).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_MISSING' });
  });

  const invalid: Array<[string, () => Metadata]> = [
    ['a token that was never issued', () => bearer('dlt_this-token-was-never-issued')],
    [
      'the admin token with one character changed',
      () =>
        bearer(
          readFileSync(cp.adminTokenFile, 'utf8')
            .trim()
            .replace(/.$/, (c) => (c === 'a' ? 'b' : 'a')),
        ),
    ],
    ['an enrollment token used as an operator token', () => bearer('dle_not-an-operator-token')],
  ];
  it.each(invalid)('bad inputs - answers %s with UNAUTHENTICATED and AUTH_INVALID', async (_, metadata) => {
    expect(await refusalOf(createEnrollmentToken(metadata()))).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_INVALID' });
    expect(await refusalOf(summary(metadata()))).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_INVALID' });
  });

  it('bad inputs - a viewer may read telemetry but not create enrollment tokens (ROLE_INSUFFICIENT)', async () => {
    await expect(summary(viewer)).resolves.toMatchObject({ recordsStored: 0 });
    expect(await refusalOf(createEnrollmentToken(viewer))).toEqual({ status: status.PERMISSION_DENIED, code: 'ROLE_INSUFFICIENT' });
    expect(await refusalOf(rpc((cb) => access.createToken({ name: 'escalate', role: Role.ROLE_ADMIN }, viewer, cb)))).toEqual({
      status: status.PERMISSION_DENIED,
      code: 'ROLE_INSUFFICIENT',
    });
  });

  it('bad inputs - refuses a streamed model upload without a valid token or role, stores nothing, and still takes an upload from the admin', async () => {
    expect(await refusalOf(upload(none()))).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_MISSING' });
    expect(await refusalOf(upload(bearer('dlt_nope')))).toEqual({ status: status.UNAUTHENTICATED, code: 'AUTH_INVALID' });
    expect(await refusalOf(upload(viewer))).toEqual({ status: status.PERMISSION_DENIED, code: 'ROLE_INSUFFICIENT' });
    expect((await listModels(viewer)).latest).toEqual([]);
    // The control plane is unharmed: the admin can still upload.
    await expect(upload(admin)).resolves.toMatchObject({ version: 1 });
  });
});
