import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DesiredState } from '../common/proto/driftline/v1/device_link.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import { generateKey, signerFromPem } from '../common/trust/keys.js';
import { signRollbackDirective } from '../common/trust/rollback.js';
import type { ControlPlane } from '../control-plane/server.js';
import { artifactsGrantedTo, type ArtifactGrantSources } from '../control-plane/registry/artifact-grants.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { rpc } from './helpers/grpc-calls.js';
import { startTestControlPlane } from './helpers/wired-agent.js';

describe('artifact downloads are limited to what a device was told to install', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let enrollment: EnrollmentServiceClient;
  const secrets: Record<string, string> = {};
  const sha: Record<string, string> = {};

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-artifact-access-'));
    ({ cp, api } = await startTestControlPlane(dir));
    enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
    for (const deviceId of ['edge-a', 'edge-b']) {
      const token = await api.createEnrollmentToken(deviceId);
      const res = await rpc<EnrollResponse>((cb) =>
        enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
      );
      secrets[deviceId] = res.mqttPassword;
    }
    for (const [name, seed] of [
      ['deployed-to-a', 1],
      ['deployed-to-b', 2],
      ['never-deployed', 3],
    ] as const) {
      sha[name] = (await api.uploadModel(name, buildDemoModel({ seed }).bytes)).sha256;
    }
    await api.deploy('deployed-to-a', ['edge-a']);
    await api.deploy('deployed-to-b', ['edge-b']);
  });

  afterAll(async () => {
    enrollment?.close();
    api?.close();
    await cp?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  const download = (deviceId: string, sha256: string, method = 'GET') =>
    fetch(`${cp.addresses.http}/artifacts/sha256/${sha256}`, {
      method,
      headers: { authorization: `Basic ${Buffer.from(`${deviceId}:${secrets[deviceId]}`).toString('base64')}` },
    });
  const refusal = async (res: Response) => ({ status: res.status, code: res.headers.get('driftline-error-code'), body: (await res.text()).split(':')[0] });

  it('access - a device downloads the model its desired state names', async () => {
    const res = await download('edge-a', sha['deployed-to-a']!);
    expect(res.status).toBe(200);
    expect((await res.arrayBuffer()).byteLength).toBeGreaterThan(0);
  });

  it("access - a device cannot download another device's model or one never deployed (403 ARTIFACT_FORBIDDEN)", async () => {
    expect(await refusal(await download('edge-a', sha['deployed-to-b']!))).toEqual({ status: 403, code: 'ARTIFACT_FORBIDDEN', body: 'ARTIFACT_FORBIDDEN' });
    expect(await refusal(await download('edge-b', sha['deployed-to-a']!))).toEqual({ status: 403, code: 'ARTIFACT_FORBIDDEN', body: 'ARTIFACT_FORBIDDEN' });
    expect((await refusal(await download('edge-a', sha['never-deployed']!))).code).toBe('ARTIFACT_FORBIDDEN');
    expect((await download('edge-a', sha['never-deployed']!, 'HEAD')).status).toBe(403);
  });

  it('access - a device may download every model of its set, and no longer one removed from it', async () => {
    await api.deploy('never-deployed', ['edge-b']);
    expect((await download('edge-b', sha['never-deployed']!)).status).toBe(200);
    expect((await download('edge-b', sha['deployed-to-b']!)).status).toBe(200);
    await api.undeploy('deployed-to-b', ['edge-b']);
    expect((await refusal(await download('edge-b', sha['deployed-to-b']!))).code).toBe('ARTIFACT_FORBIDDEN');
    expect((await download('edge-b', sha['never-deployed']!)).status).toBe(200);
  });

  it('access - missing device credentials are refused with 401 and a stable code', async () => {
    const res = await fetch(`${cp.addresses.http}/artifacts/sha256/${sha['deployed-to-a']}`);
    expect(await refusal(res)).toMatchObject({ status: 401, code: 'AUTH_MISSING' });
  });

  it('access - /metrics needs an operator token and then lists devices', async () => {
    expect(await refusal(await fetch(`${cp.addresses.http}/metrics`))).toMatchObject({ status: 401, code: 'AUTH_MISSING' });
    const device = await fetch(`${cp.addresses.http}/metrics`, { headers: { authorization: `Bearer ${secrets['edge-a']}` } });
    expect(await refusal(device)).toMatchObject({ status: 401, code: 'AUTH_INVALID' });
    const operator = await fetch(`${cp.addresses.http}/metrics`, { headers: { authorization: `Bearer ${readFileSync(cp.adminTokenFile, 'utf8').trim()}` } });
    expect(operator.status).toBe(200);
    expect(await operator.text()).toContain('driftline_artifact_responses_total{status="403"}');
  });
});

describe('artifact grants', () => {
  const A = 'a'.repeat(64);
  const B = 'b'.repeat(64);
  const C = 'c'.repeat(64);
  const sources = (desired: DesiredState | undefined, rollouts: Awaited<ReturnType<ArtifactGrantSources['activeRollouts']>> = []): ArtifactGrantSources => ({
    desired: async () => desired,
    activeRollouts: async () => rollouts,
    sha256Of: async (model, version) => (model === 'm' && version === 2 ? B : undefined),
  });
  const directive = (deviceIds: string[]) =>
    signRollbackDirective(
      { type: 'driftline-rollback', id: 'r1', model: 'm', toVersion: 1, toSha256: C, deviceIds, issuedAtMs: 0, expiresAtMs: 1 },
      signerFromPem(generateKey().privateKeyPem),
    );

  it('access - a device with no desired state may download nothing', async () => {
    expect([...(await artifactsGrantedTo('edge-1', sources(undefined)))]).toEqual([]);
  });

  it('access - a rollback directive grants its release only to the devices it names', async () => {
    const desired = DesiredState.fromPartial({ model: { sha256: A }, rollback: directive(['edge-1']) });
    expect([...(await artifactsGrantedTo('edge-1', sources(desired)))].sort()).toEqual([A, C]);
    expect([...(await artifactsGrantedTo('edge-2', sources(desired)))]).toEqual([A]);
  });

  it('access - a rollout in flight grants its version to the devices it sent it to, not to those still waiting', async () => {
    const rollouts = [{ model: 'm', version: 2, sentTo: ['edge-1'] }];
    expect([...(await artifactsGrantedTo('edge-1', sources(DesiredState.fromPartial({ model: { sha256: A } }), rollouts)))].sort()).toEqual([A, B]);
    expect([...(await artifactsGrantedTo('edge-2', sources(DesiredState.fromPartial({ model: { sha256: A } }), rollouts)))]).toEqual([A]);
  });
});
