import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentHandle } from '../agent/agent.js';
import type { HostFacts } from '../agent/profiles/detect.js';
import type { ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { inferOnce } from './helpers/agent-traffic.js';
import type { FleetApi } from './helpers/fleet-api.js';
import { waitFor } from './helpers/processes.js';
import { startEnrolledAgent, startTestControlPlane } from './helpers/wired-agent.js';

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
    ({ cp, api } = await startTestControlPlane(dir));
    agent = await startEnrolledAgent(cp, api, DEVICE, join(dir, 'agent'), {}, { hostProbe: { facts: async () => gpuServer } });
    await api.uploadModel('vibration', buildDemoModel({}).bytes);
    await api.deploy('vibration', [DEVICE]);
    await waitFor(
      () => inferOnce(agent.localApiUrl, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active on the agent' },
    );
  });

  afterAll(async () => {
    await agent?.shutdown();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('profile agent - detects the GPU profile, serves on CPU, and reports each fallback in the model metadata', async () => {
    const metadata = (await (await fetch(`${agent.localApiUrl}/v2/models/vibration`)).json()) as {
      provider: string;
      provider_fallbacks: Array<{ provider: string }>;
      max_batch_size: number;
    };
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

describe('firmware profile whose onnxruntime library is missing', () => {
  let dir: string;
  let cp: ControlPlane | undefined;
  let agent: AgentHandle | undefined;

  afterAll(async () => {
    await agent?.shutdown();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("profile agent - a Jetson without its JetPack onnxruntime starts on onnxruntime-node's library and says which fact applies", async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-profile-lib-'));
    const emptyLibrary = join(dir, 'onnxruntime-jetpack6');
    mkdirSync(emptyLibrary);
    const started = await startTestControlPlane(dir);
    cp = started.cp;
    // A Jetson Orin Nano as its device tree and /etc/nv_tegra_release describe it.
    const jetson: HostFacts = {
      arch: 'arm64',
      platform: 'linux',
      deviceTreeModel: 'NVIDIA Jetson Orin Nano Developer Kit',
      tegraRelease: '# R36 (release), REVISION: 3.0',
      nvidiaSmi: false,
    };
    agent = await startEnrolledAgent(
      cp,
      started.api,
      'edge-jetson',
      join(dir, 'agent'),
      { inference: { libraryPath: emptyLibrary } },
      { hostProbe: { facts: async () => jetson } },
    );
    started.api.close();
    const health = (await (await fetch(`${agent.localApiUrl}/healthz`)).json()) as {
      details: { firmwareProfile: string; warnings: string[]; bufferBudgetBytes: number; uploadBytesPerSecond: number };
    };
    expect(health.details.firmwareProfile).toMatch(/^jetson-orin-nano/);
    // The profile's buffer disk budget and upload cap, since the configuration sets neither.
    expect(health.details).toMatchObject({ bufferBudgetBytes: 2 * 1024 ** 3, uploadBytesPerSecond: 512 * 1024 });
    // Which fact applies depends on whether this test process already holds onnxruntime: the folder is empty, or it is too late to load one.
    const warning = health.details.warnings.find((w) => w.includes(emptyLibrary));
    expect(warning).toMatch(/no onnxruntime library \(libonnxruntime\.so.*\) in .*|onnxruntime is already loaded in this process/);
    expect(warning).toContain("serving with onnxruntime-node's own library");
  });
});
