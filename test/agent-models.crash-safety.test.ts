import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DesiredState } from '../common/proto/driftline/v1/device_link.js';
import { demoModelBytes } from './fixtures/models.js';
import { REPO_ROOT } from './helpers/processes.js';
import { ArtifactTestServer, desiredFor, makeRelease, testTrust, type TestRelease } from './helpers/releases.js';

const DRIVER = join(REPO_ROOT, 'test', 'helpers', 'model-manager-driver.ts');
let server: ArtifactTestServer;
let v1: TestRelease;
let v2: TestRelease;
let rootFile: string;
let work: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'driftline-crash-'));
  server = new ArtifactTestServer();
  await server.start();
  const trust = testTrust(Date.now());
  rootFile = join(work, 'root.json');
  writeFileSync(rootFile, trust.v1);
  v1 = await makeRelease('vibration', 1, demoModelBytes(1), trust.release.signer);
  v2 = await makeRelease('vibration', 2, demoModelBytes(2), trust.release.signer);
  for (const r of [v1, v2]) server.serve(r.sha256, r.bytes);
});
afterAll(async () => {
  await server.close();
  rmSync(work, { recursive: true, force: true });
});

interface DriverResult {
  signal: NodeJS.Signals | null;
  code: number | null;
  report?: { active: { version: number; sha256: string } | null; state: { active?: { version: number }; install?: unknown }; error: string | null };
  stderr: string;
}

function runDriver(dir: string, desired?: DesiredState, crashAt?: string): Promise<DriverResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', DRIVER], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        DRIVER_DIR: dir,
        DRIVER_ARTIFACT_URL: server.url,
        DRIVER_ROOT: rootFile,
        ...(desired ? { DRIVER_DESIRED: Buffer.from(DesiredState.encode(desired).finish()).toString('base64') } : {}),
        ...(crashAt ? { DRIFTLINE_TEST_CRASH_AT: crashAt } : {}),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      const line = stdout.trim().split('\n').filter(Boolean).at(-1);
      resolve({ code, signal, stderr, ...(line ? { report: JSON.parse(line) as DriverResult['report'] } : {}) });
    });
  });
}

const sha256File = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Exactly one model active, its file complete and matching its sha256. */
function expectOneVerifiedModel(dir: string, result: DriverResult, version: number, sha256: string): void {
  expect(result.code, result.stderr).toBe(0);
  expect(result.report?.active).toMatchObject({ version, sha256 });
  expect(result.report?.state.active).toMatchObject({ version });
  expect(result.report?.state.install).toBeUndefined();
  expect(sha256File(join(dir, 'models', `${sha256}.onnx`))).toBe(sha256);
  expect(readdirSync(join(dir, 'models')).filter((f) => f.endsWith('.part'))).toEqual([]);
}

// Each case starts the driver process three or four times; on a loaded machine each start takes seconds.
describe('agent model manager - kill -9 during an update', { timeout: 300_000 }, () => {
  // An interrupted activation is tried again once (models.activationRetries: the process may
  // have died of a kill -9 or a power cut, not of the model); the case below kills it twice.
  const cases: Array<{ at: string; then: 'resumes' | 'keeps' }> = [
    { at: 'downloading', then: 'resumes' },
    { at: 'verifying', then: 'resumes' },
    { at: 'staged', then: 'resumes' },
    { at: 'activating', then: 'resumes' },
    { at: 'activated', then: 'keeps' },
  ];
  for (const { at, then } of cases) {
    it(`kill -9 at ${at}: the restart ${then === 'keeps' ? 'keeps the new model' : then === 'resumes' ? 'resumes and activates the new model' : 'rolls back to the old model and reports it'}, with exactly one verified model active`, async () => {
      const dir = mkdtempSync(join(work, `${at}-`));
      expectOneVerifiedModel(dir, await runDriver(dir, desiredFor(1, v1)), 1, v1.sha256);

      const killed = await runDriver(dir, desiredFor(2, v2), at);
      expect(killed.signal).toBe('SIGKILL');

      const restarted = await runDriver(dir);
      expectOneVerifiedModel(dir, restarted, 2, v2.sha256);
      expect(restarted.report?.error).toBeNull();
    });
  }

  it('kill -9 at activating, then again in the retried activation: the second restart rolls back to the old model and reports it, so a model that kills the agent cannot crash-loop it', async () => {
    const dir = mkdtempSync(join(work, 'activating-twice-'));
    expectOneVerifiedModel(dir, await runDriver(dir, desiredFor(1, v1)), 1, v1.sha256);
    expect((await runDriver(dir, desiredFor(2, v2), 'activating')).signal).toBe('SIGKILL');
    // The restart tries the activation again, and dies in it again.
    expect((await runDriver(dir, undefined, 'activating')).signal).toBe('SIGKILL');

    const restarted = await runDriver(dir);
    expectOneVerifiedModel(dir, restarted, 1, v1.sha256);
    expect(restarted.report?.error).toBe('RELEASE_ACTIVATION_INTERRUPTED');
    // The next release still goes through.
    expectOneVerifiedModel(dir, await runDriver(dir, desiredFor(3, v2)), 2, v2.sha256);
  });
});
