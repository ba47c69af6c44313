import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type AgentHandle } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { silentLogger } from '../common/logger.js';
import { createOperatorClient, type OperatorClientOptions } from '../client/operator-client.js';
import { DeviceServiceService } from '../common/proto/driftline/v1/fleet.js';
import { TelemetryServiceService } from '../common/proto/driftline/v1/telemetry.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { waitFor } from './helpers/processes.js';
import { createTestPki, type TestPki } from './helpers/tls.js';

/** The operator client, as the admin, over TLS trusting the test CA (and presenting `tls`'s client certificate, if any). */
const operator = (cp: ControlPlane, tls: OperatorClientOptions['tls']) =>
  createOperatorClient({ address: cp.addresses.grpc, token: readFileSync(cp.adminTokenFile, 'utf8').trim(), tls, timeoutMs: 10_000 });

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
    const client = operator(cp, { ca: readFileSync(pki.ca) });
    const devices = client.service(DeviceServiceService);
    const { token } = await devices.createEnrollmentToken({ deviceId: 'edge-tls-1', labels: {}, ttlSeconds: 600 });

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
      () => devices.listDevices({ selector: '', includeDecommissioned: false }),
      (r) => r.devices[0]?.online === true,
      { what: 'device online over mqtts' },
    );
    expect(listed.devices[0]!.id).toBe('edge-tls-1');
    // The agent's start event travels over mqtts and is acknowledged after commit.
    await waitFor(
      () => agent!.stats(),
      (s) => s.recordsAcknowledged >= 1 && s.bufferDepth === 0,
      { what: 'telemetry acknowledged' },
    );
    const summary = await client.service(TelemetryServiceService).getSummary({ deviceId: 'edge-tls-1', sinceMs: 0 });
    expect(summary.devices[0]!.events).toBeGreaterThanOrEqual(1);
    client.close();
  });

  it('mtls - refuses an operator without a client certificate and serves one with it', async () => {
    const cp = await startControlPlane(
      {
        dataDir: join(dir, 'cp-mtls'),
        grpc: { port: 0, tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca } },
        http: { port: 0 },
        mqtt: { port: 0 },
      },
      { logger: silentLogger() },
    );
    planes.push(cp);
    const list = async (tls: OperatorClientOptions['tls']): Promise<unknown> => {
      const client = operator(cp, tls);
      try {
        return await client
          .service(DeviceServiceService)
          .listDevices({ selector: '', includeDecommissioned: false })
          .then(
            () => null,
            (e: unknown) => e,
          );
      } finally {
        client.close();
      }
    };
    // Refused in the TLS handshake, before the API layer: no Driftline code, the call is unavailable.
    expect(await list({ ca: readFileSync(pki.ca) })).toMatchObject({ code: 'API_UNAVAILABLE' });
    expect(await list({ ca: readFileSync(pki.ca), key: readFileSync(pki.clientKey), cert: readFileSync(pki.clientCert) })).toBeNull();
  });
});
