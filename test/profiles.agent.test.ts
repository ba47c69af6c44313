import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type AgentHandle } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import type { HostFacts } from '../agent/profiles/detect.js';
import { silentLogger } from '../common/logger.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { inferOnce } from './helpers/agent-traffic.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';

const DEVICE = 'edge-gpu-box';
// This CPU-only host, seen as an x86_64 server with an NVIDIA GPU: the profile asks for TensorRT and CUDA, which are not installed.
const gpuServer: HostFacts = { arch: 'x64', platform: 'linux', nvidiaSmi: true };

describe('firmware profile on a fully wired agent', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let agent: AgentHandle;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-profile-agent-'));
    cp = await startControlPlane({ dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    const token = await api.createEnrollmentToken(DEVICE);
    agent = await startAgent(
      loadAgentConfig({
        env: {},
        flags: { deviceId: DEVICE, enrollToken: token, server: cp.addresses.grpc, dataDir: join(dir, 'agent'), localApi: { port: 0 }, schedule: { system: '0 0 1 1 *', driftWindow: '0 0 1 1 *' } },
      }),
      { logger: silentLogger(), hostProbe: { facts: async () => gpuServer } },
    );
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', [DEVICE]);
    await waitFor(() => inferOnce(agent.localApiUrl, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).then((r) => r.status), (s) => s === 200, { what: 'model active on the agent' });
  });

  afterAll(async () => {
    await agent?.shutdown();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('profile agent - detects the GPU profile, serves on CPU, and reports each fallback in the model metadata', async () => {
    const metadata = (await (await fetch(`${agent.localApiUrl}/v2/models/vibration`)).json()) as { provider: string; provider_fallbacks: Array<{ provider: string }>; max_batch_size: number };
    expect(metadata.provider).toBe('cpu');
    expect(metadata.provider_fallbacks.map((f) => f.provider)).toEqual(['tensorrt', 'cuda']);
    expect(metadata.max_batch_size).toBe(64);
  });

  it('profile agent - puts the profile and the missing providers in /healthz and in the state the fleet sees', async () => {
    const health = (await (await fetch(`${agent.localApiUrl}/healthz`)).json()) as { details: { firmwareProfile: string; warnings: string[] } };
    expect(health.details.firmwareProfile).toBe('x86_64-nvidia-cuda12');
    expect(health.details.warnings).toHaveLength(2);
    const device = await waitFor(
      async () => (await api.listDevices()).find((d) => d.id === DEVICE),
      (d) => d?.reported?.activeModel?.name === 'vibration' && d.reported.warnings.length === 2,
      { what: 'reported state with warnings' },
    );
    expect(device!.reported).toMatchObject({ firmwareProfile: 'x86_64-nvidia-cuda12', activeModel: { provider: 'cpu' } });
    expect(device!.reported!.warnings).toEqual(health.details.warnings);
  });
});
