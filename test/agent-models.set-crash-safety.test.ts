import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Persisted } from '../agent/models/model-manager.js';
import { DesiredState } from '../common/proto/driftline/v1/device_link.js';
import { demoModelBytes } from './fixtures/models.js';
import { desiredSet } from './helpers/model-set-device.js';
import { REPO_ROOT } from './helpers/processes.js';
import { ArtifactTestServer, makeRelease, testTrust, type TestRelease } from './helpers/releases.js';

const DRIVER = join(REPO_ROOT, 'test', 'helpers', 'model-set-driver.ts');
const NAMES = ['detector', 'classifier', 'recognizer'];
let server: ArtifactTestServer;
const r: Record<string, TestRelease> = {};
let rootFile: string;
let work: string;
/** A data folder where the three models v1 were installed by a driver process that then exited. */
let installed: string;

interface Report {
  served: Array<{ name: string; version: number; sha256: string; answeredBy: { model: string; version: number } }>;
  entries: Array<{ name: string; version: number; state: string; error: string | null }>;
  slots: Record<string, Persisted | null>;
  record: { appliedRevision: number; pending?: unknown };
  revision: number;
  error: string | null;
}
interface DriverResult {
  signal: NodeJS.Signals | null;
  code: number | null;
  report?: Report;
  stderr: string;
}

function runDriver(dir: string, options: { desired?: DesiredState; crashAt?: string; crashModel?: string } = {}): Promise<DriverResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', DRIVER], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        DRIVER_DIR: dir,
        DRIVER_ARTIFACT_URL: server.url,
        DRIVER_ROOT: rootFile,
        ...(options.desired ? { DRIVER_DESIRED: Buffer.from(DesiredState.encode(options.desired).finish()).toString('base64') } : {}),
        ...(options.crashAt ? { DRIFTLINE_TEST_CRASH_AT: options.crashAt, DRIFTLINE_TEST_CRASH_MODEL: options.crashModel ?? 'classifier' } : {}),
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
      resolve({ code, signal, stderr, ...(line ? { report: JSON.parse(line) as Report } : {}) });
    });
  });
}

const sha256File = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/**
 * The three models consistent: each served at the version of its slot's active record, answering
 * requests; no install left in flight; the set's revision applied; on disk exactly the files the
 * slots keep (active and previous of each), each matching its sha256, and no partial download.
 */
function expectConsistent(dir: string, result: DriverResult, versions: Record<string, TestRelease>): void {
  expect(result.code, result.stderr).toBe(0);
  const report = result.report!;
  expect(report.served.map((m) => [m.name, m.version, m.sha256])).toEqual(NAMES.map((n) => [n, versions[n]!.manifest.version, versions[n]!.sha256]));
  for (const m of report.served) expect(m.answeredBy).toEqual({ model: m.name, version: m.version });
  expect(report.entries.map((e) => [e.name, e.version, e.state])).toEqual(NAMES.map((n) => [n, versions[n]!.manifest.version, 'serving']));
  for (const name of NAMES) {
    const slot = report.slots[name]!;
    expect({ name, active: slot.active?.sha256, install: slot.install }).toEqual({ name, active: versions[name]!.sha256, install: undefined });
  }
  expect(report.record.pending).toBeUndefined();
  const kept = Object.values(report.slots).flatMap((s) => [s?.active?.sha256, s?.previous?.sha256].filter((sha): sha is string => !!sha));
  const files = readdirSync(join(dir, 'models')).sort();
  expect(files).toEqual([...new Set(kept)].map((sha) => `${sha}.onnx`).sort());
  for (const sha of kept) expect(sha256File(join(dir, 'models', `${sha}.onnx`))).toBe(sha);
}

const v1 = (): Record<string, TestRelease> => ({ detector: r.detector1!, classifier: r.classifier1!, recognizer: r.recognizer1! });
const update = (revision: number): DesiredState => desiredSet(revision, [r.detector1!, r.classifier2!, r.recognizer1!]);

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'driftline-set-crash-'));
  server = new ArtifactTestServer();
  await server.start();
  const trust = testTrust(Date.now());
  rootFile = join(work, 'root.json');
  writeFileSync(rootFile, trust.v1);
  const sign = trust.release.signer;
  r.detector1 = await makeRelease('detector', 1, demoModelBytes(1), sign);
  r.classifier1 = await makeRelease('classifier', 1, demoModelBytes(2), sign);
  r.classifier2 = await makeRelease('classifier', 2, demoModelBytes(3), sign);
  r.recognizer1 = await makeRelease('recognizer', 1, demoModelBytes(4), sign);
  for (const release of Object.values(r)) server.serve(release.sha256, release.bytes);
  installed = mkdtempSync(join(work, 'installed-'));
  const first = await runDriver(installed, { desired: desiredSet(1, [r.detector1!, r.classifier1!, r.recognizer1!]) });
  expectConsistent(installed, first, v1());
}, 120_000);
afterAll(async () => {
  await server.close();
  rmSync(work, { recursive: true, force: true });
});

/** A copy of the data folder with the three models v1 installed. */
function deviceWithThreeModels(label: string): string {
  const dir = mkdtempSync(join(work, `${label}-`));
  cpSync(installed, dir, { recursive: true });
  return dir;
}

// Each case starts the driver process two or three times; on a loaded machine each start takes seconds.
describe('agent model set - kill -9 during the update of one model of three', { timeout: 300_000 }, () => {
  for (const at of ['downloading', 'verifying', 'staged', 'activating', 'activated']) {
    it(`kill -9 at ${at} of the classifier's update: after the restart the detector and the recognizer serve v1 as before, the classifier serves v2, every slot keeps its files and none is left over`, async () => {
      const dir = deviceWithThreeModels(at);
      const killed = await runDriver(dir, { desired: update(2), crashAt: at });
      expect(killed.signal, killed.stderr).toBe('SIGKILL');

      const restarted = await runDriver(dir);
      expectConsistent(dir, restarted, { ...v1(), classifier: r.classifier2! });
      expect(restarted.report!.revision).toBe(2);
      expect(restarted.report!.error).toBeNull();
      // The classifier keeps v1 as its previous version for a local rollback; the others were not touched.
      expect(restarted.report!.slots.classifier!.previous?.sha256).toBe(r.classifier1!.sha256);
      expect(restarted.report!.slots.detector!.active?.revision).toBe(1);
      expect(restarted.report!.slots.recognizer!.active?.revision).toBe(1);
    });
  }

  it('kill -9 at activating, then again in the retried activation: the second restart keeps the classifier on v1 and reports RELEASE_ACTIVATION_INTERRUPTED on it alone; the next revision installs it', async () => {
    const dir = deviceWithThreeModels('activating-twice');
    expect((await runDriver(dir, { desired: update(2), crashAt: 'activating' })).signal).toBe('SIGKILL');
    // The restart tries the activation again, and dies in it again.
    expect((await runDriver(dir, { crashAt: 'activating' })).signal).toBe('SIGKILL');

    const restarted = await runDriver(dir);
    expectConsistent(dir, restarted, v1());
    expect(restarted.report!.error).toBe('RELEASE_ACTIVATION_INTERRUPTED');
    expect(restarted.report!.entries.map((e) => [e.name, e.error])).toEqual([
      ['detector', null],
      ['classifier', 'RELEASE_ACTIVATION_INTERRUPTED'],
      ['recognizer', null],
    ]);
    expect(restarted.report!.revision).toBe(2);

    const next = await runDriver(dir, { desired: update(3) });
    expectConsistent(dir, next, { ...v1(), classifier: r.classifier2! });
    expect(next.report!.error).toBeNull();
  });
});
