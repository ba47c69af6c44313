import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnrollmentServiceClient, EnrollRequest } from '../common/proto/driftline/v1/fleet.js';
import { rpc } from './helpers/grpc-calls.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { generateVibrationData, toCsv, VIBRATION_CLASSES } from '../demo/model/vibration-data.js';
import { echoModelBytes } from './fixtures/models.js';
import { REPO_ROOT, startProcess, stopProcess, type RunningProcess } from './helpers/processes.js';

const BIN = join(REPO_ROOT, 'bin/driftline.js');
const EXIT = { ok: 0, usage: 2, conflict: 6, notFound: 4 };
const cwd = mkdtempSync(join(tmpdir(), 'driftline-cli-push-'));
let plane: RunningProcess;
let server: string;
let token: string;
const csv = join(cwd, 'reference.csv');

beforeAll(async () => {
  plane = await startProcess(
    BIN,
    ['serve', '--data-dir', join(cwd, 'cp'), '--grpc-port', '0', '--mqtt-port', '0', '--http-port', '0'],
    /^driftline: listening grpc=(\S+) .* token-file=(\S+)$/,
    {
      env: { DRIFTLINE_LOG_LEVEL: 'error' },
    },
  );
  server = plane.ready[1]!;
  token = readFileSync(plane.ready[2]!, 'utf8').trim();
  // Name labels, and rows whose first label is not the model's first class.
  const data = generateVibrationData({ rows: 200, seed: 7 });
  writeFileSync(csv, toCsv(data));
});
afterAll(async () => {
  await stopProcess(plane);
  rmSync(cwd, { recursive: true, force: true });
});

function driftline(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.DRIFTLINE_TOKEN;
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, '--server', server, '--token', token, ...args], { cwd, env }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}
const codeOf = (stderr: string): string | undefined => /^error \[([A-Z_]+)\]/m.exec(stderr)?.[1];
/** Enrolls a device as its agent would (no agent runs here: its desired set is what is looked at). */
async function enrollDevice(deviceId: string, token: string): Promise<void> {
  const client = new EnrollmentServiceClient(server, credentials.createInsecure());
  try {
    await rpc((cb) => client.enroll(EnrollRequest.fromPartial({ token, deviceId, firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb));
  } finally {
    client.close();
  }
}
function modelFile(name: string, bytes: Uint8Array): string {
  const file = join(cwd, name);
  writeFileSync(file, bytes);
  return file;
}

describe('models push - the same bytes again', () => {
  it('says unchanged and exits 0 when nothing new comes with them', async () => {
    const file = modelFile('same.onnx', buildDemoModel({ seed: 11 }).bytes);
    expect((await driftline('models', 'push', file, '--name', 'same')).code).toBe(EXIT.ok);
    const again = await driftline('models', 'push', file, '--name', 'same');
    expect(again.code).toBe(EXIT.ok);
    expect(again.stdout).toMatch(/^unchanged: same@v1 already has these bytes/);
  });

  it('refuses with MODEL_UNCHANGED naming the options it would ignore', async () => {
    const file = modelFile('same2.onnx', buildDemoModel({ seed: 12 }).bytes);
    expect((await driftline('models', 'push', file, '--name', 'same2')).code).toBe(EXIT.ok);
    const again = await driftline('models', 'push', file, '--name', 'same2', '--description', 'new words', '--reference', csv);
    expect([again.code, codeOf(again.stderr)]).toEqual([EXIT.conflict, 'MODEL_UNCHANGED']);
    expect(again.stderr).toContain('--description');
    expect(again.stderr).toContain('--reference');
    const versions = JSON.parse((await driftline('--json', 'models', 'get', 'same2')).stdout) as { versions: unknown[] };
    expect(versions.versions).toHaveLength(1);
  });
});

describe('models amend - correcting a version', () => {
  it('makes the next version from the same bytes with the corrected reference, recording the version it amends', async () => {
    const file = modelFile('amend.onnx', buildDemoModel({ seed: 21 }).bytes);
    const pushed = await driftline('--json', 'models', 'push', file, '--name', 'amend', '--description', 'first cut');
    expect(pushed.code, pushed.stderr).toBe(EXIT.ok);
    const amended = await driftline('--json', 'models', 'amend', 'amend@v1', file, '--reference', csv);
    expect(amended.code, amended.stderr).toBe(EXIT.ok);
    const v1 = JSON.parse(pushed.stdout) as { sha256: string };
    const v2 = JSON.parse(amended.stdout) as { version: number; amendsVersion: number; sha256: string; description: string; metadata: Record<string, string> };
    expect(v2).toMatchObject({ version: 2, amendsVersion: 1, sha256: v1.sha256, description: 'first cut' });
    expect(JSON.parse(v2.metadata['driftline.reference']!)).toMatchObject({ classes: { names: [...VIBRATION_CLASSES] } });

    const versions = JSON.parse((await driftline('--json', 'models', 'get', 'amend')).stdout) as { versions: Array<{ metadata?: Record<string, string> }> };
    expect(versions.versions.map((v) => v.metadata?.['driftline.reference'] !== undefined)).toEqual([false, true]);
    expect((await driftline('models', 'get', 'amend')).stdout).toContain('amends v1: first cut');
  });

  it('names the command from the refusal of the same bytes with new options', async () => {
    const file = modelFile('amend-hint.onnx', buildDemoModel({ seed: 22 }).bytes);
    expect((await driftline('models', 'push', file, '--name', 'amend-hint')).code).toBe(EXIT.ok);
    const again = await driftline('models', 'push', file, '--name', 'amend-hint', '--reference', csv);
    expect(codeOf(again.stderr)).toBe('MODEL_UNCHANGED');
    expect(again.stderr).toContain(`driftline models amend amend-hint@v1 ${file}`);
  });

  it("refuses other bytes than the version's, an amendment that changes nothing, and a version that does not exist", async () => {
    const file = modelFile('amend-refused.onnx', buildDemoModel({ seed: 23 }).bytes);
    const other = modelFile('amend-other.onnx', buildDemoModel({ seed: 24 }).bytes);
    expect((await driftline('models', 'push', file, '--name', 'amend-refused', '--description', 'same')).code).toBe(EXIT.ok);
    const results = await Promise.all([
      driftline('models', 'amend', 'amend-refused@v1', other, '--reference', csv),
      driftline('models', 'amend', 'amend-refused@v1', '--description', 'same'),
      driftline('models', 'amend', 'amend-refused@v7', '--description', 'new'),
      driftline('models', 'amend', 'amend-refused', '--description', 'new'),
    ]);
    expect(results.map((r) => [r.code, codeOf(r.stderr)])).toEqual([
      [EXIT.usage, 'MODEL_CHECKSUM_MISMATCH'],
      [EXIT.conflict, 'MODEL_UNCHANGED'],
      [4, 'MODEL_NOT_FOUND'],
      [EXIT.usage, 'USAGE'],
    ]);
    const versions = JSON.parse((await driftline('--json', 'models', 'get', 'amend-refused')).stdout) as { versions: unknown[] };
    expect(versions.versions).toHaveLength(1);
  });
});

describe('models push --reference - the order of name labels', () => {
  it('takes the class order from the model, not from the order labels appear in', async () => {
    const file = modelFile('ordered.onnx', buildDemoModel({ seed: 13 }).bytes);
    const pushed = await driftline('--json', 'models', 'push', file, '--name', 'ordered', '--reference', csv);
    expect(pushed.code, pushed.stderr).toBe(EXIT.ok);
    const version = JSON.parse(pushed.stdout) as { metadata: Record<string, string> };
    const reference = JSON.parse(version.metadata['driftline.reference']!) as { classes: { names: string[] } };
    expect(reference.classes.names).toEqual([...VIBRATION_CLASSES]);
  });

  it('refuses name labels for a model that does not record its classes, asking for --classes', async () => {
    const file = modelFile('anonymous.onnx', echoModelBytes());
    const pushed = await driftline('models', 'push', file, '--name', 'anonymous', '--reference', csv);
    expect([pushed.code, codeOf(pushed.stderr)]).toEqual([EXIT.usage, 'DRIFT_REFERENCE_INVALID']);
    expect(pushed.stderr).toContain('--classes');
  });
});

describe('models deploy - a target that matches no device', () => {
  it('refuses with DEPLOY_NO_TARGETS instead of "deployed to 0 device(s)"', async () => {
    const file = modelFile('nobody.onnx', buildDemoModel({ seed: 14 }).bytes);
    expect((await driftline('models', 'push', file, '--name', 'nobody')).code).toBe(EXIT.ok);
    const deployed = await driftline('models', 'deploy', 'nobody', '--selector', 'site=nowhere');
    expect([deployed.code, codeOf(deployed.stderr)]).toEqual([EXIT.usage, 'DEPLOY_NO_TARGETS']);
    expect(deployed.stderr).toContain('site=nowhere');
  });
});

describe('models undeploy - one model out of a set', () => {
  it("removes one model from a device's set, shows the rest in devices get, and refuses a second undeploy with MODEL_NOT_DEPLOYED", async () => {
    const created = JSON.parse((await driftline('--json', 'devices', 'token', 'edge-set')).stdout) as { token: string };
    await enrollDevice('edge-set', created.token);
    for (const [name, seed] of [
      ['detector', 21],
      ['classifier', 22],
    ] as const) {
      expect((await driftline('models', 'push', modelFile(`${name}.onnx`, buildDemoModel({ seed }).bytes), '--name', name)).code).toBe(EXIT.ok);
      expect((await driftline('models', 'deploy', name, '--device', 'edge-set')).code).toBe(EXIT.ok);
    }
    const both = await driftline('devices', 'get', 'edge-set');
    expect(both.stdout).toMatch(/detector\s+v1\s+-\s+pending/);
    expect(both.stdout).toMatch(/classifier\s+v1\s+-\s+pending/);

    const removed = await driftline('models', 'undeploy', 'detector', '--device', 'edge-set');
    expect([removed.code, removed.stdout.trim()]).toEqual([EXIT.ok, 'removed detector from 1 device(s)']);
    const device = JSON.parse((await driftline('--json', 'devices', 'get', 'edge-set')).stdout) as { desiredModels: Array<{ name: string }> };
    expect(device.desiredModels.map((m) => m.name)).toEqual(['classifier']);
    expect((await driftline('devices', 'get', 'edge-set')).stdout).not.toContain('detector');

    const again = await driftline('models', 'undeploy', 'detector', '--device', 'edge-set');
    expect([again.code, codeOf(again.stderr)]).toEqual([EXIT.notFound, 'MODEL_NOT_DEPLOYED']);
    expect(again.stderr).toContain('nothing to undeploy');
  });
});
