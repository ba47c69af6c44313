import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { driveInferences, inferOnce } from './helpers/agent-traffic.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const AGENT_STOPPED = /^driftline-agent: stopped device=(\S+) enqueued=(\d+) acknowledged=(\d+) buffered=(\d+) dropped=(\d+)$/;

describe('the fleet loop, control plane and agent as processes', () => {
  let dir: string;
  let controlPlane: RunningProcess;
  let agent: RunningProcess | undefined;
  let api: FleetApi;
  let grpc: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-e2e-'));
    controlPlane = await startProcess(
      'bin/driftline.js',
      ['serve', '--data-dir', join(dir, 'cp'), '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0'],
      LISTENING,
    );
    grpc = controlPlane.ready[1]!;
    api = fleetApi(grpc, controlPlane.ready[4]!);
  });

  afterAll(async () => {
    api?.close();
    await stopProcess(agent, 'SIGKILL');
    await stopProcess(controlPlane);
    rmSync(dir, { recursive: true, force: true });
  });

  it('enrolls an agent, serves the deployed model on its local API and stores every telemetry record once', async () => {
    const token = await api.createEnrollmentToken('edge-e2e-1', { site: 'lab' });
    const agentDir = join(dir, 'agent');
    agent = await startProcess(
      'bin/driftline-agent.js',
      ['run', '--device-id', 'edge-e2e-1', '--enroll-token', token, '--server', grpc, '--data-dir', agentDir, '--local-port', '0'],
      AGENT_READY,
    );
    const localApi = agent.ready[2]!;
    expect(existsSync(join(agentDir, 'identity.json'))).toBe(true);

    const enrolled = await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.online === true,
      { what: 'device online' },
    );
    expect(enrolled.map((d) => [d.id, d.labels.site, d.labels.profile])).toEqual([['edge-e2e-1', 'lab', 'generic-x86_64-cpu']]);

    const model = await api.uploadModel('vibration', buildDemoModel({}).bytes);
    expect((await api.deploy('vibration')).devices).toBe(1);
    await waitFor(
      () => inferOnce(localApi, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
      (s) => s === 200,
      { what: 'model active on the agent' },
    );
    const reported = await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.reported?.activeModel?.version === model.version,
      { what: 'reported model' },
    );
    expect(reported[0]!.reported!.activeModel).toMatchObject({ name: 'vibration', sha256: model.sha256, provider: 'cpu' });

    expect(await driveInferences(localApi, 25)).toBe(25);
    await waitFor(
      () => api.summary('edge-e2e-1'),
      (s) => (s.devices[0]?.inferences ?? 0) >= 26,
      { what: 'inference telemetry stored' },
    );

    // A clean stop drains the buffer: everything the agent enqueued is acknowledged and stored once.
    await stopProcess(agent);
    expect(await agent.exited).toBe(0);
    const [, , enqueued, acknowledged, buffered, dropped] = (await agent.line(AGENT_STOPPED)).map(Number);
    expect({ buffered, dropped, acknowledged }).toEqual({ buffered: 0, dropped: 0, acknowledged: enqueued });
    const summary = await api.summary('edge-e2e-1');
    expect(summary.devices[0]!.records).toBe(enqueued);
    expect(summary.devices[0]!.inferenceErrors).toBe(0);
  });
});
