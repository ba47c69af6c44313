import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { REPO_ROOT, startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
/** driftline-agent run --help documents it: 4 the device was decommissioned. */
const AGENT_EXIT_DECOMMISSIONED = 4;

describe('driftline-agent - a decommissioned device', () => {
  let dir: string;
  let controlPlane: RunningProcess;
  let agent: RunningProcess | undefined;
  let api: FleetApi;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-decommissioned-'));
    controlPlane = await startProcess(
      'bin/driftline.js',
      ['serve', '--data-dir', join(dir, 'cp'), '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0'],
      LISTENING,
    );
    api = fleetApi(controlPlane.ready[1]!, controlPlane.ready[4]!);
  });
  afterAll(async () => {
    api?.close();
    await stopProcess(agent, 'SIGKILL');
    await stopProcess(controlPlane);
    rmSync(dir, { recursive: true, force: true });
  });

  it('says it was decommissioned and exits with code 4 instead of reconnecting forever', async () => {
    const grpc = controlPlane.ready[1]!;
    const token = await api.createEnrollmentToken('edge-gone-1', {});
    agent = await startProcess(
      'bin/driftline-agent.js',
      ['run', '--device-id', 'edge-gone-1', '--enroll-token', token, '--server', grpc, '--data-dir', join(dir, 'agent'), '--local-port', '0'],
      AGENT_READY,
    );
    await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.online === true,
      { what: 'device online' },
    );

    const adminToken = readFileSync(controlPlane.ready[4]!, 'utf8').trim();
    const decommission = await new Promise<number>((resolve) =>
      execFile(
        process.execPath,
        ['bin/driftline.js', '--server', grpc, '--token', adminToken, 'devices', 'decommission', 'edge-gone-1'],
        { cwd: REPO_ROOT },
        (error) => resolve(error ? Number(error.code) : 0),
      ),
    );
    expect(decommission).toBe(0);

    expect(await agent.exited).toBe(AGENT_EXIT_DECOMMISSIONED);
    expect(agent.stderr()).toContain('error [DEVICE_DECOMMISSIONED]');
  });
});
