import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type AgentHandle } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { silentLogger } from '../common/logger.js';
import { DeviceServiceClient, type ListDevicesResponse } from '../common/proto/driftline/v1/fleet.js';
import { TelemetryServiceClient, type TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { waitFor } from './helpers/processes.js';
import { createTestPki, type TestPki } from './helpers/tls.js';

const bearer = (cp: ControlPlane): Metadata => {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${readFileSync(cp.adminTokenFile, 'utf8').trim()}`);
  return metadata;
};

describe('TLS on the device links and mTLS for operators', () => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-tls-'));
  let pki: TestPki;
  const planes: ControlPlane[] = [];
  let agent: AgentHandle | undefined;

  beforeAll(() => {
    pki = createTestPki(dir);
  });
  afterAll(async () => {
    await agent?.shutdown();
    for (const cp of planes) await cp.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('tls - an agent enrolls over TLS and delivers its telemetry over mqtts', async () => {
    const cp = await startControlPlane(
      {
        dataDir: join(dir, 'cp-tls'),
        grpc: { port: 0, tls: { cert: pki.serverCert, key: pki.serverKey } },
        http: { port: 0 },
        mqtt: { port: 0, tls: { cert: pki.serverCert, key: pki.serverKey } },
      },
      { logger: silentLogger() },
    );
    planes.push(cp);
    expect(cp.addresses.mqtt).toMatch(/^mqtts:\/\/127\.0\.0\.1:\d+$/);
    const channel = credentials.createSsl(readFileSync(pki.ca));
    const devices = new DeviceServiceClient(cp.addresses.grpc, channel);
    const telemetry = new TelemetryServiceClient(cp.addresses.grpc, channel);
    const auth = bearer(cp);
    const { token } = await new Promise<{ token: string }>((resolve, reject) =>
      devices.createEnrollmentToken({ deviceId: 'edge-tls-1', labels: {}, ttlSeconds: 600 }, auth, (e, r) => (e ? reject(e) : resolve(r))),
    );

    agent = await startAgent(
      loadAgentConfig({
        flags: {
          deviceId: 'edge-tls-1',
          enrollToken: token,
          server: cp.addresses.grpc,
          serverCaFile: pki.ca,
          dataDir: join(dir, 'agent'),
          mqtt: { caFile: pki.ca },
          localApi: { port: 0 },
          logLevel: 'silent',
        },
      }),
      { logger: silentLogger() },
    );
    const listed = await waitFor(
      () => new Promise<ListDevicesResponse>((resolve, reject) => devices.listDevices({ selector: '', includeDecommissioned: false }, auth, (e, r) => (e ? reject(e) : resolve(r)))),
      (r) => r.devices[0]?.online === true,
      { what: 'device online over mqtts' },
    );
    expect(listed.devices[0]!.id).toBe('edge-tls-1');
    // The agent's start event travels over mqtts and is acknowledged after commit.
    await waitFor(() => agent!.stats(), (s) => s.recordsAcknowledged >= 1 && s.bufferDepth === 0, { what: 'telemetry acknowledged' });
    const summary = await new Promise<TelemetrySummary>((resolve, reject) => telemetry.getSummary({ deviceId: 'edge-tls-1', sinceMs: 0 }, auth, (e, r) => (e ? reject(e) : resolve(r))));
    expect(summary.devices[0]!.events).toBeGreaterThanOrEqual(1);
    devices.close();
    telemetry.close();
  });

  it('mtls - refuses an operator without a client certificate and serves one with it', async () => {
    const cp = await startControlPlane(
      { dataDir: join(dir, 'cp-mtls'), grpc: { port: 0, tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca } }, http: { port: 0 }, mqtt: { port: 0 } },
      { logger: silentLogger() },
    );
    planes.push(cp);
    const list = (channel: ChannelCredentials): Promise<ServiceError | null> => {
      const client = new DeviceServiceClient(cp.addresses.grpc, channel);
      return new Promise((resolve) =>
        client.listDevices({ selector: '', includeDecommissioned: false }, bearer(cp), { deadline: Date.now() + 10_000 }, (e) => {
          client.close();
          resolve(e);
        }),
      );
    };
    expect(await list(credentials.createSsl(readFileSync(pki.ca)))).not.toBeNull();
    expect(await list(credentials.createSsl(readFileSync(pki.ca), readFileSync(pki.clientKey), readFileSync(pki.clientCert)))).toBeNull();
  });
});
