import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOperatorClient, OperatorCallError, refusedWith, type OperatorClient } from '../client/operator-client.js';
import { DriftlineError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import { DeviceServiceService } from '../common/proto/driftline/v1/fleet.js';
import { ModelServiceService } from '../common/proto/driftline/v1/models.js';
import { RolloutServiceService } from '../common/proto/driftline/v1/rollouts.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { freePort } from './helpers/processes.js';

/** What a call that must fail rejected with. */
async function failureOf(call: Promise<unknown>): Promise<unknown> {
  return call.then(
    () => expect.fail('the call succeeded'),
    (err: unknown) => err,
  );
}

describe('operator client', () => {
  let dir: string;
  let plane: ControlPlane;
  let client: OperatorClient;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-client-'));
    plane = await startControlPlane({ dataDir: dir, grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
    client = createOperatorClient({ address: plane.addresses.grpc, token: readFileSync(plane.adminTokenFile, 'utf8').trim() });
  });
  afterAll(async () => {
    client?.close();
    await plane?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('client - answers typed calls as promises, with the bearer token on each', async () => {
    const devices = client.service(DeviceServiceService);
    const { token } = await devices.createEnrollmentToken({ deviceId: 'client-1', labels: { site: 'a' }, ttlSeconds: 600 });
    expect(token).not.toBe('');
    const { tokens } = await devices.listEnrollmentTokens({ deviceId: 'client-1', includeInactive: false });
    expect(tokens.map((t) => t.deviceId)).toEqual(['client-1']);
  });

  it("client - a refusal is a DriftlineError with the control plane's stable code from the trailer", async () => {
    const err = await failureOf(client.service(DeviceServiceService).getDevice({ deviceId: 'nobody' }));
    expect(err).toBeInstanceOf(OperatorCallError);
    expect(err).toBeInstanceOf(DriftlineError);
    expect(err).toMatchObject({
      code: 'DEVICE_NOT_FOUND',
      trailerCode: 'DEVICE_NOT_FOUND',
      grpcStatus: status.NOT_FOUND,
      method: '/driftline.v1.DeviceService/GetDevice',
    });
    expect(refusedWith(err, 'DEVICE_NOT_FOUND')).toBe(true);
    expect(refusedWith(err, 'MODEL_NOT_FOUND')).toBe(false);
  });

  it('client - without a token the call is refused with AUTH_MISSING', async () => {
    const anonymous = createOperatorClient({ address: plane.addresses.grpc });
    try {
      expect(await failureOf(anonymous.service(DeviceServiceService).listDevices({ selector: '', includeDecommissioned: false }))).toMatchObject({
        code: 'AUTH_MISSING',
      });
    } finally {
      anonymous.close();
    }
  });

  it('client - streams a model upload in chunks and the control plane stores exactly those bytes', async () => {
    const bytes = buildDemoModel().bytes;
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const sent: number[] = [];
    function* smallChunks(): Generator<Uint8Array> {
      for (let offset = 0; offset < bytes.length; offset += 1024) yield bytes.subarray(offset, offset + 1024);
    }
    const header = { name: 'client-model', sizeBytes: bytes.length, sha256, description: 'chunked', metadata: {} };
    const version = await client.uploadModel(header, smallChunks(), { onChunk: (n) => sent.push(n) });
    expect(version).toMatchObject({ name: 'client-model', sha256, sizeBytes: bytes.length });
    expect(sent.length).toBe(Math.ceil(bytes.length / 1024));
    expect(sent.reduce((a, b) => a + b, 0)).toBe(bytes.length);
    const model = await client.service(ModelServiceService).getModel({ name: 'client-model' });
    expect(model.versions.map((v) => v.sha256)).toEqual([sha256]);
    // The in-memory form: size and hash computed, sent in 64 KiB chunks.
    const other = buildDemoModel({ seed: 2 }).bytes;
    expect(await client.uploadModelBytes(other, { name: 'client-model' })).toMatchObject({
      version: 2,
      sha256: createHash('sha256').update(other).digest('hex'),
    });
  });

  it('client - a chunk source that fails cancels the upload and is what rejects', async () => {
    const bytes = buildDemoModel().bytes;
    const broken = new Error('disk went away');
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield bytes.subarray(0, 1024);
      throw broken;
    }
    const header = { name: 'client-broken', sizeBytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), description: '', metadata: {} };
    expect(await failureOf(client.uploadModel(header, failing()))).toBe(broken);
    expect(await failureOf(client.service(ModelServiceService).getModel({ name: 'client-broken' }))).toMatchObject({ code: 'MODEL_NOT_FOUND' });
  });

  it('client - a server stream is an async iterable whose refusal carries the stable code', async () => {
    const watch = async (): Promise<number> => {
      let seen = 0;
      for await (const _ of client.service(RolloutServiceService).watchRollout({ id: 'no-such-rollout' })) seen++;
      return seen;
    };
    expect(await failureOf(watch())).toMatchObject({
      code: 'ROLLOUT_NOT_FOUND',
      grpcStatus: status.NOT_FOUND,
      method: '/driftline.v1.RolloutService/WatchRollout',
    });
  });

  it('client - a control plane that is not there is API_UNAVAILABLE, with no trailer', async () => {
    const nobody = createOperatorClient({ address: `127.0.0.1:${await freePort()}`, timeoutMs: 10_000 });
    try {
      const err = await failureOf(nobody.service(DeviceServiceService).listDevices({ selector: '', includeDecommissioned: false }));
      expect(err).toMatchObject({ code: 'API_UNAVAILABLE', grpcStatus: status.UNAVAILABLE, trailerCode: undefined });
    } finally {
      nobody.close();
    }
  });
});
