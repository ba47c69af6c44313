import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { generateVibrationData, toCsv, VIBRATION_CLASSES } from '../demo/model/vibration-data.js';
import { REPO_ROOT, startProcess, stopProcess, type RunningProcess } from './helpers/processes.js';

const BIN = join(REPO_ROOT, 'bin/driftline.js');
const EXIT = { usage: 2, auth: 3, unavailable: 5 };
// A directory without ./.driftline/admin.token, so no token is picked up by accident.
const cwd = mkdtempSync(join(tmpdir(), 'driftline-cli-messages-'));
let plane: RunningProcess;
let server: string;
let token: string;

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
});
afterAll(async () => {
  await stopProcess(plane);
  rmSync(cwd, { recursive: true, force: true });
});

function driftline(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.DRIFTLINE_SERVER;
  delete env.DRIFTLINE_TOKEN;
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env }, (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr }));
  });
}
const authed = (...args: string[]) => driftline('--server', server, '--token', token, ...args);
const codeOf = (stderr: string): string | undefined => /^error \[([A-Z_]+)\]/m.exec(stderr)?.[1];

async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as { port: number };
  await new Promise((resolve) => s.close(resolve));
  return port;
}

describe('CLI messages - a missing token', () => {
  it('names --token, DRIFTLINE_TOKEN and the admin.token file it looked for', async () => {
    const { code, stderr } = await driftline('--server', server, 'devices', 'list');
    expect([code, codeOf(stderr)]).toEqual([EXIT.auth, 'AUTH_MISSING']);
    expect(stderr).toContain('--token');
    expect(stderr).toContain('DRIFTLINE_TOKEN');
    expect(stderr).toContain(join(cwd, '.driftline', 'admin.token'));
  });
});

// Runs before anything is pushed: the control plane of this file starts empty.
describe('CLI messages - empty results say so', () => {
  it.each([
    [['devices', 'list'], 'No devices found'],
    [['devices', 'list', '--selector', 'site=nowhere'], 'No devices found matching site=nowhere'],
    [['devices', 'tokens'], 'No usable enrollment tokens found'],
    [['models', 'list'], 'No models found'],
    [['rollout', 'list'], 'No rollouts found'],
    [['telemetry', 'summary'], 'No telemetry found'],
    [['telemetry', 'rollups'], 'No telemetry rollups found'],
    [['drift', 'events'], 'No drift events found'],
  ])('%j prints "%s" instead of a bare header', async (args, message) => {
    const { code, stdout } = await authed(...args);
    expect(code).toBe(0);
    expect(stdout.split('\n')[0]).toContain(message);
    expect(stdout).not.toMatch(/^(ID|NAME|DEVICE|BUCKET)\s/m);
  });

  it('keeps the list key of models list --json consistent with the other lists (models)', async () => {
    const { code, stdout } = await authed('--json', 'models', 'list');
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toEqual({ models: [] });
  });
});

describe('CLI messages - the --server address', () => {
  it('refuses a URL and says to give host:port', async () => {
    const { code, stderr } = await driftline('--server', `http://${server}`, '--token', 'x', 'devices', 'list');
    expect([code, codeOf(stderr)]).toEqual([EXIT.usage, 'SERVER_ADDRESS_INVALID']);
    expect(stderr).toContain(`--server ${server}`);
  });

  it('refuses a host without a port and suggests the default port', async () => {
    const { code, stderr } = await driftline('--server', '127.0.0.1', '--token', 'x', 'devices', 'list');
    expect([code, codeOf(stderr)]).toEqual([EXIT.usage, 'SERVER_ADDRESS_INVALID']);
    expect(stderr).toContain('127.0.0.1:7443');
  });

  it('says a host name does not resolve, without grpc-js text', async () => {
    const { code, stderr } = await driftline('--server', 'no-such-host.invalid:7443', '--token', 'x', 'devices', 'list');
    expect([code, codeOf(stderr)]).toEqual([EXIT.unavailable, 'SERVER_UNRESOLVABLE']);
    expect(stderr).not.toMatch(/Resolution note|Name resolution failed|dns:/);
  });

  it('says the connection was refused, without grpc-js text', async () => {
    const address = `127.0.0.1:${await closedPort()}`;
    const { code, stderr } = await driftline('--server', address, '--token', 'x', 'devices', 'list');
    expect([code, codeOf(stderr)]).toEqual([EXIT.unavailable, 'UNAVAILABLE']);
    expect(stderr).toContain('connection refused');
    expect(stderr).not.toMatch(/Resolution note|No connection established/);
  });
});

describe('CLI messages - models push of a file that is not a model', () => {
  it('says an empty file is empty', async () => {
    const file = join(cwd, 'empty.onnx');
    writeFileSync(file, '');
    const { code, stderr } = await authed('models', 'push', file, '--name', 'm');
    expect([code, codeOf(stderr)]).toEqual([EXIT.usage, 'MODEL_INVALID']);
    expect(stderr).toContain('empty');
  });

  it('says a file of other bytes is not an ONNX model, naming the file', async () => {
    const file = join(cwd, 'notes.onnx');
    writeFileSync(file, 'these are notes, not a model\n');
    const { code, stderr } = await authed('models', 'push', file, '--name', 'm');
    expect([code, codeOf(stderr)]).toEqual([EXIT.usage, 'MODEL_INVALID']);
    expect(stderr).toContain(`${file} is not an ONNX model`);
  });
});

describe('CLI messages - drift show with nothing to show', () => {
  it('says no version has a reference, and how to push one', async () => {
    const file = join(cwd, 'plain.onnx');
    writeFileSync(file, buildDemoModel({ seed: 1 }).bytes);
    expect((await authed('models', 'push', file, '--name', 'plain')).code).toBe(0);
    const text = await authed('drift', 'show', '--model', 'plain');
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('--reference');
    const json = await authed('--json', 'drift', 'show', '--model', 'plain');
    expect(JSON.parse(json.stdout)).toMatchObject({ statuses: [], note: expect.stringContaining('no version has a drift reference') });
  });

  it('says no device sent sketches in the window when a reference exists', async () => {
    const file = join(cwd, 'referenced.onnx');
    writeFileSync(file, buildDemoModel({ seed: 2 }).bytes);
    const csv = join(cwd, 'reference.csv');
    writeFileSync(csv, toCsv(generateVibrationData({ rows: 200, seed: 7 })));
    const pushed = await authed('models', 'push', file, '--name', 'referenced', '--reference', csv, '--classes', VIBRATION_CLASSES.join(','));
    expect(pushed.code, pushed.stderr).toBe(0);
    const { code, stdout } = await authed('drift', 'show', '--model', 'referenced', '--since', '15m');
    expect(code).toBe(0);
    expect(stdout).toContain('no device sent drift sketches in the last 15m');
  });
});
