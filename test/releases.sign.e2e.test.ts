import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import type { Device } from '../common/proto/driftline/v1/fleet.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { REPO_ROOT, startProcess, stopProcess, waitFor, type RunningProcess } from './helpers/processes.js';

const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const PASSPHRASE_ENV = 'DRIFTLINE_AUTOMATION_KEY_PASSPHRASE';

/** The signature status `models get --json` reports for each version. */
interface Signature {
  status: string;
  signedBy?: string;
  audience?: string[];
}

/**
 * The operator's path through the CLI against a real control plane and a real agent process:
 * keys init, an automation key created with its scope (vibration, 1 device per canary), serve
 * with that key; an unsigned push signed later with `models sign`; canaries the control plane
 * signs itself (the port the retraining loop calls), one the device is in the audience of, one
 * it is not, promoted with `models sign` from the control plane's draft.
 */
describe('models sign and automation-signed canaries end to end', () => {
  let dir: string;
  let keysDir: string;
  let cp: ControlPlane;
  let agent: RunningProcess | undefined;
  let api: FleetApi;
  let automationKeyId: string;
  const savedPassphrase = process.env[PASSPHRASE_ENV];

  const driftline = (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const env: NodeJS.ProcessEnv = { ...process.env, [PASSPHRASE_ENV]: 'correct horse battery staple' };
      delete env.DRIFTLINE_SERVER;
      delete env.DRIFTLINE_TOKEN;
      execFile(process.execPath, ['bin/driftline.js', ...args], { cwd: REPO_ROOT, env }, (error, stdout, stderr) =>
        resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
      );
    });
  const operator = (...args: string[]) => driftline('--server', cp.addresses.grpc, '--token-file', cp.adminTokenFile, ...args);
  const codeOf = (stderr: string): string | undefined => /\[([A-Z_]+)\]/.exec(stderr)?.[1];
  const signatures = async (): Promise<Record<number, Signature>> => {
    const got = await operator('--json', 'models', 'get', 'vibration');
    expect(got.code, got.stderr).toBe(0);
    const { versions } = JSON.parse(got.stdout) as { versions: Array<{ version: number; signature: Signature }> };
    return Object.fromEntries(versions.map((v) => [v.version, v.signature]));
  };
  const push = async (seed: number): Promise<string> => {
    const file = join(dir, `v${seed}.onnx`);
    writeFileSync(file, buildDemoModel({ seed }).bytes);
    const pushed = await operator('--json', 'models', 'push', file, '--name', 'vibration');
    expect(pushed.code, pushed.stderr).toBe(0);
    return file;
  };
  const serving = (d: Device | undefined): number => d?.reported?.activeModel?.version ?? 0;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-sign-e2e-'));
    keysDir = join(dir, 'keys');
    const init = await driftline('keys', 'init', '--dir', keysDir, '--root-keys', '3', '--threshold', '2', '--json');
    expect(init.code, init.stderr).toBe(0);
    const created = await driftline('keys', 'create-automation', '--dir', keysDir, '--scope-models', 'vibration', '--scope-max-devices', '1', '--json');
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).not.toContain('PRIVATE KEY');
    const automation = JSON.parse(created.stdout) as { keyId: string; keyFile: string; version: number; scope: unknown };
    automationKeyId = automation.keyId;
    expect(automation).toMatchObject({ version: 2, scope: { models: ['vibration'], maxDevices: 1 } });
    expect(readFileSync(automation.keyFile, 'utf8')).not.toContain('PRIVATE KEY');
    const shown = await driftline('keys', 'show', '--dir', keysDir);
    expect(shown.stdout).toContain('canaries of vibration to at most 1 devices');

    process.env[PASSPHRASE_ENV] = 'correct horse battery staple';
    cp = await startControlPlane(
      {
        dataDir: join(dir, 'cp'),
        grpc: { port: 0 },
        http: { port: 0 },
        mqtt: { port: 0 },
        trust: { root: join(keysDir, 'root'), automationKey: automation.keyFile },
      },
      { logger: silentLogger() },
    );
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    const token = await api.createEnrollmentToken('edge-a');
    agent = await startProcess(
      'bin/driftline-agent.js',
      ['run', '--device-id', 'edge-a', '--enroll-token', token, '--server', cp.addresses.grpc, '--data-dir', join(dir, 'agent'), '--local-port', '0'],
      AGENT_READY,
    );
    await waitFor(
      () => api.listDevices(),
      (d) => d[0]?.online === true,
      { what: 'device online' },
    );
  }, 90_000);

  afterAll(async () => {
    api?.close();
    await stopProcess(agent, 'SIGKILL');
    await cp?.shutdown();
    if (savedPassphrase === undefined) delete process.env[PASSPHRASE_ENV];
    else process.env[PASSPHRASE_ENV] = savedPassphrase;
    rmSync(dir, { recursive: true, force: true });
  });

  it('signs an unsigned pushed version offline from its file, with the rules of push --sign, and the device runs it', async () => {
    const file = await push(1);
    expect((await signatures())[1]).toMatchObject({ status: 'unsigned' });
    const table = await operator('models', 'get', 'vibration');
    expect(table.stdout).toContain('SIGNATURE');
    expect(table.stdout).toContain('unsigned');

    const noDraft = await operator('models', 'sign', 'vibration', '1', '--keys-dir', keysDir);
    expect([noDraft.code, codeOf(noDraft.stderr)]).toEqual([2, 'USAGE']);
    expect(noDraft.stderr).toContain('models sign vibration 1 <file.onnx>');
    const other = join(dir, 'other.onnx');
    writeFileSync(other, buildDemoModel({ seed: 99 }).bytes);
    const wrongFile = await operator('models', 'sign', 'vibration', '1', other, '--keys-dir', keysDir);
    expect(codeOf(wrongFile.stderr)).toBe('MODEL_CHECKSUM_MISMATCH');
    const absent = await operator('models', 'sign', 'vibration', '7', file, '--keys-dir', keysDir);
    expect(codeOf(absent.stderr)).toBe('MODEL_NOT_FOUND');
    const noKeys = await operator('models', 'sign', 'vibration', '1', file, '--keys-dir', join(dir, 'nowhere'));
    expect(noKeys.code).not.toBe(0);
    expect(codeOf(noKeys.stderr)).toBe('TRUST_NOT_CONFIGURED');

    const signed = await operator('--json', 'models', 'sign', 'vibration', '1', file, '--keys-dir', keysDir);
    expect(signed.code, signed.stderr).toBe(0);
    expect(JSON.parse(signed.stdout)).toMatchObject({ name: 'vibration', version: 1, status: 'signed', promoted: false, from: 'file' });
    expect((await signatures())[1]).toMatchObject({ status: 'signed', signedBy: 'release-key' });
    // Signed again differently (a new manifest): the version is already signed.
    const again = await operator('models', 'sign', 'vibration', '1', file, '--keys-dir', keysDir);
    expect(codeOf(again.stderr)).toBe('RELEASE_CONFLICT');

    await api.deploy('vibration');
    await waitFor(
      () => api.listDevices(),
      (d) => serving(d[0]) === 1,
      { what: 'signed v1 active', timeoutMs: 30_000 },
    );
  }, 90_000);

  it('runs a canary the automation key signed for it, is not sent one for another device, and runs that one once a release key promotes it', async () => {
    await push(2);
    const canary = await cp.releaseSigner.signCanary({ model: 'vibration', version: 2, audience: ['edge-a'], manifest: { lineage: { job: 'job-1' } } });
    expect(canary).toMatchObject({ state: 'signed-canary', keyId: automationKeyId });
    expect((await signatures())[2]).toEqual(expect.objectContaining({ status: 'canary', signedBy: 'automation-key', audience: ['edge-a'] }));
    const listed = await operator('models', 'list');
    expect(listed.stdout).toContain('canary (automation key, 1 device)');
    await api.deploy('vibration');
    await waitFor(
      () => api.listDevices(),
      (d) => serving(d[0]) === 2,
      { what: 'automation-signed canary v2 active', timeoutMs: 30_000 },
    );

    await push(3);
    // A canary beyond the key's scope (two devices) is not signed: it waits for a human.
    expect(await cp.releaseSigner.signCanary({ model: 'vibration', version: 3, audience: ['edge-a', 'edge-b'] })).toMatchObject({
      state: 'awaiting-signature',
    });
    expect((await signatures())[3]).toMatchObject({ status: 'awaiting-signature' });
    expect((await operator('models', 'get', 'vibration')).stdout).toContain('awaiting signature');
    expect(await cp.releaseSigner.signCanary({ model: 'vibration', version: 3, audience: ['edge-b'] })).toMatchObject({ state: 'signed-canary' });
    // edge-a would refuse a canary for edge-b (RELEASE_NOT_IN_AUDIENCE): the control plane does not send it.
    const outside = await operator('models', 'deploy', 'vibration', '--device', 'edge-a');
    expect(codeOf(outside.stderr)).toBe('RELEASE_NOT_DEPLOYABLE');
    expect(outside.stderr).toContain('models sign vibration 3');
    expect(serving((await api.listDevices())[0])).toBe(2);

    const promoted = await operator('--json', 'models', 'sign', 'vibration', '3', '--keys-dir', keysDir);
    expect(promoted.code, promoted.stderr).toBe(0);
    expect(JSON.parse(promoted.stdout)).toMatchObject({ version: 3, status: 'signed', promoted: true, from: 'draft' });
    const fleetWide = (await signatures())[3]!;
    expect(fleetWide).toMatchObject({ status: 'signed', signedBy: 'release-key' });
    expect(fleetWide.audience ?? []).toEqual([]);
    // The draft signed again gives the same envelope (Ed25519 is deterministic): a no-op.
    const twice = await operator('--json', 'models', 'sign', 'vibration', '3', '--keys-dir', keysDir);
    expect(twice.code, twice.stderr).toBe(0);
    expect(JSON.parse(twice.stdout)).toMatchObject({ promoted: false });

    await api.deploy('vibration');
    const after = await waitFor(
      () => api.listDevices(),
      (d) => serving(d[0]) === 3,
      { what: 'promoted v3 active', timeoutMs: 30_000 },
    );
    expect(after[0]!.reported!.lastErrorCode).toBe('');
  }, 120_000);
});
