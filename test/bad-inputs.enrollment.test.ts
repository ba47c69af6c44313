/**
 * Enrollment refusals through the real agent process (`driftline-agent run`): a made-up
 * token, a token already spent, an expired token and a token issued for another device
 * each stop the agent with exit code 3 (configuration or enrollment refused) and the
 * stable code on stderr, and leave no identity behind, so the operator's next valid
 * token enrolls the device from the same folder.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { rpc } from './helpers/grpc-calls.js';
import { REPO_ROOT, startProcess, stopProcess } from './helpers/processes.js';

const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const EXIT_DEADLINE_MS = 45_000;
/** AGENT_EXIT.config in agent/main.ts (not imported: importing main runs the CLI). */
const AGENT_EXIT_CONFIG = 3;

/** Runs `driftline-agent run ...` to completion; resolves with its exit code and stderr. */
function runAgent(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/driftline-agent.js', 'run', ...args], {
      cwd: REPO_ROOT,
      env: { ...process.env, DRIFTLINE_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const deadline = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`driftline-agent did not exit within ${EXIT_DEADLINE_MS} ms:\n${stderr}`));
    }, EXIT_DEADLINE_MS);
    child.once('exit', (code) => {
      clearTimeout(deadline);
      resolve({ code, stderr });
    });
  });
}

describe('bad inputs - enrollment through the agent process', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let enrollment: EnrollmentServiceClient;
  const clock = new ManualClock();
  let folders = 0;

  const enrollWith = async (deviceId: string, token: string): Promise<{ code: number | null; stderr: string; dataDir: string }> => {
    const dataDir = join(dir, `agent-${++folders}`);
    const result = await runAgent([
      '--device-id',
      deviceId,
      '--enroll-token',
      token,
      '--server',
      cp.addresses.grpc,
      '--data-dir',
      dataDir,
      '--local-port',
      '0',
    ]);
    return { ...result, dataDir };
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-bad-enroll-'));
    // The control plane's clock is ours: a token expires when we say so, not after a sleep.
    cp = await startControlPlane({ dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger(), clock });
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
  });

  afterAll(async () => {
    enrollment?.close();
    api?.close();
    await cp?.shutdown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const refusals: Array<[string, string, () => Promise<{ deviceId: string; token: string }>]> = [
    [
      'a token the control plane never issued',
      'ENROLLMENT_TOKEN_INVALID',
      async () => ({ deviceId: 'edge-enroll-1', token: 'dle_this-token-was-never-issued' }),
    ],
    [
      'a token that was already used',
      'ENROLLMENT_TOKEN_USED',
      async () => {
        const token = await api.createEnrollmentToken('edge-enroll-2');
        await rpc<EnrollResponse>((cb) =>
          enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId: 'edge-enroll-2', firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
        );
        return { deviceId: 'edge-enroll-2', token };
      },
    ],
    [
      'an expired token',
      'ENROLLMENT_TOKEN_EXPIRED',
      async () => {
        const token = await api.createEnrollmentToken('edge-enroll-3', {}, 1);
        clock.advance(2_000);
        return { deviceId: 'edge-enroll-3', token };
      },
    ],
    [
      'a token issued for another device',
      'ENROLLMENT_TOKEN_INVALID',
      async () => ({ deviceId: 'edge-enroll-4', token: await api.createEnrollmentToken('edge-enroll-5') }),
    ],
  ];

  it.each(refusals)('bad inputs - the agent refuses to start with %s: exit 3, %s on stderr, no identity left behind', async (_, code, prepare) => {
    const { deviceId, token } = await prepare();
    const result = await enrollWith(deviceId, token);
    expect(result.code).toBe(AGENT_EXIT_CONFIG);
    expect(result.stderr).toContain(`error [${code}]`);
    expect(existsSync(join(result.dataDir, 'identity.json'))).toBe(false);
    expect(existsSync(join(result.dataDir, 'identity.json.tmp'))).toBe(false);
  });

  it('bad inputs - after a refused attempt, a fresh token enrolls the device from the same folder', async () => {
    const refused = await enrollWith('edge-enroll-6', 'dle_wrong');
    expect(refused.code).toBe(AGENT_EXIT_CONFIG);
    const token = await api.createEnrollmentToken('edge-enroll-6');
    const agent = await startProcess(
      'bin/driftline-agent.js',
      ['run', '--device-id', 'edge-enroll-6', '--enroll-token', token, '--server', cp.addresses.grpc, '--data-dir', refused.dataDir, '--local-port', '0'],
      AGENT_READY,
    );
    try {
      expect(agent.ready[1]).toBe('edge-enroll-6');
      expect(existsSync(join(refused.dataDir, 'identity.json'))).toBe(true);
    } finally {
      expect(await stopProcess(agent)).toBe(0);
    }
  });
});
