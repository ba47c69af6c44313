import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials } from '@grpc/grpc-js';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CreateEnrollmentTokenRequest,
  DeviceServiceClient,
  EnrollmentServiceClient,
  EnrollRequest,
  ListEnrollmentTokensRequest,
  type CreateEnrollmentTokenResponse,
  type EnrollResponse,
  type ListEnrollmentTokensResponse,
} from '../common/proto/driftline/v1/fleet.js';
import type { ControlPlane } from '../control-plane/server.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { bearer, refusalOf, rpc } from './helpers/grpc-calls.js';
import { closed, connectClient } from './helpers/mqtt.js';
import { startTestControlPlane } from './helpers/wired-agent.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));
/** A generous outer bound: each CLI call starts a process (tsx), slow on a loaded machine. */
const CLI_TEST_TIMEOUT_MS = 240_000;

describe('enrollment tokens: listed, revocable, single use per device identity', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let enrollment: EnrollmentServiceClient;
  let devices: DeviceServiceClient;
  const clients: MqttClient[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-enrollment-tokens-'));
    ({ cp, api } = await startTestControlPlane(dir));
    enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
    devices = new DeviceServiceClient(cp.addresses.grpc, credentials.createInsecure());
  });

  afterAll(async () => {
    for (const client of clients) client.end(true);
    enrollment?.close();
    devices?.close();
    api?.close();
    await cp?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The operator CLI as a process, with the admin token and --json. */
  const driftline = (...args: string[]): Promise<{ code: number; json: any; stderr: string }> =>
    new Promise((resolve) => {
      execFile(process.execPath, [BIN, '--server', cp.addresses.grpc, '--token-file', cp.adminTokenFile, '--json', ...args], (error, stdout, stderr) =>
        resolve({ code: error ? Number(error.code) : 0, json: stdout.trim() ? JSON.parse(stdout) : undefined, stderr }),
      );
    });
  const admin = () => bearer(readFileSync(cp.adminTokenFile, 'utf8').trim());
  const listTokens = (req: Partial<ListEnrollmentTokensRequest>) =>
    rpc<ListEnrollmentTokensResponse>((cb) => devices.listEnrollmentTokens(ListEnrollmentTokensRequest.fromPartial(req), admin(), cb)).then((r) => r.tokens);
  const enroll = (token: string, deviceId: string) =>
    rpc<EnrollResponse>((cb) =>
      enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
    );
  const connect = async (deviceId: string, password: string): Promise<MqttClient> => {
    const client = await connectClient(cp.addresses.mqtt, { clientId: deviceId, username: deviceId, password });
    clients.push(client);
    return client;
  };

  it(
    'access - `devices tokens` lists usable tokens by id without the token, and a revoked token no longer enrolls',
    async () => {
      const created = await rpc<CreateEnrollmentTokenResponse>((cb) =>
        devices.createEnrollmentToken(CreateEnrollmentTokenRequest.fromPartial({ deviceId: 'edge-tok-1', labels: { site: 'lab' } }), admin(), cb),
      );
      const { id, token } = created;
      expect(id).toMatch(/^enr_[0-9a-f]{16}$/);

      const listed = await driftline('devices', 'tokens');
      expect(listed.json.tokens).toEqual([expect.objectContaining({ id, deviceId: 'edge-tok-1', state: 'active', labels: { site: 'lab' } })]);
      expect(JSON.stringify(listed.json)).not.toContain(token);

      expect(await driftline('devices', 'revoke-token', id)).toMatchObject({ code: 0, json: { id, state: 'revoked' } });
      expect(await refusalOf(enroll(token, 'edge-tok-1'))).toMatchObject({ code: 'ENROLLMENT_TOKEN_REVOKED' });
      expect(await listTokens({})).toEqual([]);
      expect(await listTokens({ deviceId: 'edge-tok-1', includeInactive: true })).toEqual([expect.objectContaining({ id, state: 'revoked' })]);
      expect(await refusalOf(rpc((cb) => devices.revokeEnrollmentToken({ id: 'enr_0000000000000000' }, admin(), cb)))).toMatchObject({
        code: 'TOKEN_NOT_FOUND',
      });
    },
    CLI_TEST_TIMEOUT_MS,
  );

  it(
    'access - a second token for an enrolled device is refused with DEVICE_ALREADY_ENROLLED and the device keeps its secret',
    async () => {
      const spare = await api.createEnrollmentToken('edge-tok-2');
      const enrolled = await enroll(await api.createEnrollmentToken('edge-tok-2'), 'edge-tok-2');
      const live = await connect('edge-tok-2', enrolled.mqttPassword);

      const second = await driftline('devices', 'token', 'edge-tok-2');
      expect(second.code).toBe(6);
      expect(second.stderr).toContain('error [DEVICE_ALREADY_ENROLLED]');
      expect(await refusalOf(enroll(spare, 'edge-tok-2'))).toMatchObject({ code: 'DEVICE_ALREADY_ENROLLED' });
      expect(live.connected).toBe(true);
      await connect('edge-tok-2', enrolled.mqttPassword).then((again) => again.end(true));
    },
    CLI_TEST_TIMEOUT_MS,
  );

  it(
    'access - `devices reenroll` issues a token that replaces the secret and disconnects the session still using the old one',
    async () => {
      const first = await enroll(await api.createEnrollmentToken('edge-tok-3'), 'edge-tok-3');
      const old = await connect('edge-tok-3', first.mqttPassword);

      const grant = await driftline('devices', 'reenroll', 'edge-tok-3');
      expect(grant).toMatchObject({ code: 0, json: { deviceId: 'edge-tok-3', reenroll: true } });
      expect(old.connected).toBe(true);

      const gone = closed(old);
      const second = await enroll(grant.json.token, 'edge-tok-3');
      await gone;
      await expect(connect('edge-tok-3', first.mqttPassword)).rejects.toThrow();
      const fresh = await connect('edge-tok-3', second.mqttPassword);
      expect(fresh.connected).toBe(true);
      expect((await listTokens({ deviceId: 'edge-tok-3', includeInactive: true })).map((t) => [t.state, t.reenroll])).toEqual([
        ['used', true],
        ['used', false],
      ]);
    },
    CLI_TEST_TIMEOUT_MS,
  );
});
