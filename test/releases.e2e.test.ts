import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createOperatorClient } from '../client/operator-client.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReleaseServiceService, type Release } from '../common/proto/driftline/v1/releases.js';
import type { Device } from '../common/proto/driftline/v1/fleet.js';
import { peekManifest } from '../common/trust/manifest.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { sequenceModelBytes } from './fixtures/inference-models.js';
import { generateVibrationData, toCsv } from '../demo/model/vibration-data.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { REPO_ROOT, startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';

const LISTENING = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(\S+)$/;
const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;

describe('signed releases end to end: keys init, signed push, a device that pins the root', () => {
  let dir: string;
  let keysDir: string;
  let controlPlane: RunningProcess;
  let agent: RunningProcess | undefined;
  let api: FleetApi;
  let grpc: string;
  let tokenFile: string;

  const driftline = (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const env = { ...process.env };
      delete env.DRIFTLINE_SERVER;
      delete env.DRIFTLINE_TOKEN;
      execFile(process.execPath, ['bin/driftline.js', ...args], { cwd: REPO_ROOT, env }, (error, stdout, stderr) =>
        resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
      );
    });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-releases-e2e-'));
    keysDir = join(dir, 'keys');
    const init = await driftline('keys', 'init', '--dir', keysDir, '--root-keys', '3', '--threshold', '2', '--json');
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).not.toContain('PRIVATE KEY');
    controlPlane = await startProcess(
      'bin/driftline.js',
      ['serve', '--data-dir', join(dir, 'cp'), '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0', '--trust-root', join(keysDir, 'root')],
      LISTENING,
    );
    grpc = controlPlane.ready[1]!;
    tokenFile = controlPlane.ready[4]!;
    api = fleetApi(grpc, tokenFile);
  }, 60_000);

  afterAll(async () => {
    api?.close();
    await stopProcess(agent, 'SIGKILL');
    await stopProcess(controlPlane);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a device enrolled with the root runs a signed push, refuses an unsigned one and keeps running, then takes the next signed one', async () => {
    const token = await api.createEnrollmentToken('edge-signed-1');
    const agentDir = join(dir, 'agent');
    agent = await startProcess(
      'bin/driftline-agent.js',
      ['run', '--device-id', 'edge-signed-1', '--enroll-token', token, '--server', grpc, '--data-dir', agentDir, '--local-port', '0'],
      AGENT_READY,
    );
    expect(statSync(join(agentDir, 'trust', 'root.json')).isFile()).toBe(true);
    await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.online === true,
      { what: 'device online' },
    );

    const v1File = join(dir, 'v1.onnx');
    writeFileSync(v1File, buildDemoModel({ seed: 1 }).bytes);
    const csv = join(dir, 'reference.csv');
    writeFileSync(csv, toCsv(generateVibrationData({ rows: 200, seed: 7 })));
    const push = (file: string, ...extra: string[]) =>
      driftline('--server', grpc, '--token-file', tokenFile, '--json', 'models', 'push', file, '--name', 'vibration', ...extra);

    const signed = await push(v1File, '--sign', '--keys-dir', keysDir, '--reference', csv, '--metric', 'accuracy=0.93');
    expect(signed.code, signed.stderr).toBe(0);
    expect(JSON.parse(signed.stdout)).toMatchObject({ version: 1, signedBy: [expect.any(String)] });
    await api.deploy('vibration');
    await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.reported?.activeModel?.version === 1,
      { what: 'signed v1 active', timeoutMs: 30_000 },
    );

    const v2File = join(dir, 'v2.onnx');
    writeFileSync(v2File, buildDemoModel({ seed: 2 }).bytes);
    const unsigned = await push(v2File);
    expect(unsigned.code, unsigned.stderr).toBe(0);
    await api.deploy('vibration');
    const refused = await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.reported?.lastErrorCode === 'RELEASE_UNSIGNED',
      { what: 'unsigned v2 refused', timeoutMs: 30_000 },
    );
    expect(refused[0]!.reported!.activeModel?.version).toBe(1);

    const v3File = join(dir, 'v3.onnx');
    writeFileSync(v3File, buildDemoModel({ seed: 3 }).bytes);
    const resigned = await push(v3File, '--sign', '--keys-dir', keysDir);
    expect(resigned.code, resigned.stderr).toBe(0);
    await api.deploy('vibration');
    const after = await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.reported?.activeModel?.version === 3,
      { what: 'signed v3 active', timeoutMs: 30_000 },
    );
    expect(after[0]!.reported!.lastErrorCode).toBe('');
    expect(readFileSync(join(agentDir, 'trust', 'root.json')).length).toBeGreaterThan(0);

    // Every device would refuse v1 (anti-rollback) and there is no online rollback key: refused here, saying how to roll back.
    const desiredBefore = (await api.listDevices())[0]!.desiredModel;
    const older = await driftline('--server', grpc, '--token-file', tokenFile, 'models', 'deploy', 'vibration', '--version', '1');
    expect(older.code).not.toBe(0);
    expect(older.stderr).toContain('[RELEASE_VERSION_REFUSED]');
    expect(older.stderr).toContain('--rollback-key');
    expect(older.stderr).toContain('models push');
    expect((await api.listDevices())[0]!.desiredModel).toEqual(desiredBefore);
  }, 90_000);

  it('a stateful sequence model that cannot run on a length of 1 is signed and served with the example inputs of its release', async () => {
    const file = join(dir, 'sequence.onnx');
    writeFileSync(file, sequenceModelBytes(48));
    const push = (...extra: string[]) =>
      driftline('--server', grpc, '--token-file', tokenFile, '--json', 'models', 'push', file, '--name', 'sequence', '--sign', '--keys-dir', keysDir, ...extra);
    const guessed = await push();
    expect(guessed.code).not.toBe(0);
    expect(guessed.stderr).toContain('[MODEL_WARMUP_FAILED]');
    expect(guessed.stderr).toContain('cannot be reshaped');
    expect(guessed.stderr).not.toContain('onnxruntime_src');

    const examples = join(dir, 'sequence-examples.json');
    writeFileSync(
      examples,
      JSON.stringify({
        examples: [{ tokens: { type: 'float32', dims: [1, 96] }, step: { type: 'int64', dims: [], data: [1] }, state: { type: 'float32', dims: [1, 48] } }],
      }),
    );
    const signed = await push('--examples', examples);
    expect(signed.code, signed.stderr).toBe(0);
    await api.deploy('sequence');
    const devices = await waitFor(
      () => api.listDevices(),
      (d) => serving(d[0], 'sequence') === 1,
      { what: 'sequence model active', timeoutMs: 30_000 },
    );
    expect(devices[0]!.reported!.activeModels.map((m) => m.lastErrorCode)).toEqual(devices[0]!.reported!.activeModels.map(() => ''));
    const response = await fetch(`${agent!.ready[2]}/v2/models/sequence/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        inputs: [
          { name: 'tokens', datatype: 'FP32', shape: [1, 96], data: new Array(96).fill(1) },
          { name: 'step', datatype: 'INT64', shape: [], data: [0] },
          { name: 'state', datatype: 'FP32', shape: [1, 48], data: new Array(48).fill(0) },
        ],
      }),
    });
    expect(response.status).toBe(200);
  }, 90_000);

  it('amends a signed version as the next signed version with the same bytes, keeping what its release says the model needs, and the device takes it', async () => {
    const file = join(dir, 'sequence.onnx');
    const amend = (...extra: string[]) => driftline('--server', grpc, '--token-file', tokenFile, '--json', 'models', 'amend', 'sequence@v1', file, ...extra);
    const unsigned = await amend('--description', 'corrected');
    expect([unsigned.code, /\[([A-Z_]+)\]/.exec(unsigned.stderr)?.[1]]).toEqual([2, 'USAGE']);
    expect(unsigned.stderr).toContain('--sign');

    const amended = await amend('--description', 'corrected', '--sign', '--keys-dir', keysDir);
    expect(amended.code, amended.stderr).toBe(0);
    expect(JSON.parse(amended.stdout)).toMatchObject({
      name: 'sequence',
      version: 2,
      amendsVersion: 1,
      description: 'corrected',
      signedBy: [expect.any(String)],
    });
    const manifest = peekManifest((await getRelease(grpc, tokenFile, 'sequence', 2)).envelope);
    const original = peekManifest((await getRelease(grpc, tokenFile, 'sequence', 1)).envelope);
    expect(manifest.lineage).toMatchObject({ amendsVersion: 1, parentVersion: original.lineage.parentVersion });
    expect(manifest.artifact).toEqual(original.artifact);
    // Without them the device's warm-up fails (the sequence model cannot run on guessed sizes): carried from v1's release.
    expect(manifest.examples).toEqual(original.examples);

    await api.deploy('sequence');
    const devices = await waitFor(
      () => api.listDevices(),
      (d) => serving(d[0], 'sequence') === 2,
      {
        what: 'amended sequence v2 active',
        timeoutMs: 30_000,
      },
    );
    expect(devices[0]!.reported!.activeModels.find((m) => m.name === 'sequence')?.lastErrorCode).toBe('');
  }, 90_000);
});

/** The version of `model` the device serves (it serves the earlier models of its set beside it), 0 when none. */
function serving(device: Device | undefined, model: string): number {
  return device?.reported?.activeModels.find((m) => m.name === model && m.state === 'serving')?.version ?? 0;
}

async function getRelease(address: string, tokenFile: string, name: string, version: number): Promise<Release> {
  const client = createOperatorClient({ address, token: readFileSync(tokenFile, 'utf8').trim() });
  try {
    return await client.service(ReleaseServiceService).getRelease({ name, version });
  } finally {
    client.close();
  }
}
