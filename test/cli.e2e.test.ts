import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../common/hashing.js';
import { buildDemoModel } from '../demo/model/demo-model.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));
// The data dir is ./.driftline of the directory the CLI runs in, so the admin token is found without flags.
const root = mkdtempSync(join(tmpdir(), 'driftline-cli-e2e-'));
const dataDir = join(root, '.driftline');

interface Listening {
  grpc: string;
  mqtt: string;
  http: string;
  tokenFile: string;
}

let serve: ChildProcess;
let listening: Listening;
let serveStderr = '';

function driftline(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env };
  delete env.DRIFTLINE_SERVER;
  delete env.DRIFTLINE_TOKEN;
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, '--server', listening.grpc, ...args], { cwd: root, env }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}

/** Resolves with the addresses from serve's one stdout line, or fails with its stderr if it exits first. */
function waitForListening(child: ChildProcess): Promise<Listening> {
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => reject(new Error(`serve exited with ${code} before listening:\n${serveStderr}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = /^driftline: listening grpc=(\S+) mqtt=(\S+) http=(\S+) token-file=(.+)$/.exec(line);
      if (m) resolve({ grpc: m[1]!, mqtt: m[2]!, http: m[3]!, tokenFile: m[4]! });
    });
  });
}

beforeAll(async () => {
  serve = spawn(process.execPath, [BIN, 'serve', '--data-dir', dataDir, '--grpc-port', '0', '--http-port', '0', '--mqtt-port', '0', '--log-level', 'warn'], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  serve.stderr!.on('data', (chunk: Buffer) => (serveStderr += chunk.toString()));
  listening = await waitForListening(serve);
});

afterAll(() => {
  if (serve.exitCode === null && serve.signalCode === null) serve.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

describe('driftline CLI against a running control plane', () => {
  it('announces its addresses and the admin token file in one line', () => {
    expect(listening.grpc).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(listening.mqtt).toMatch(/^mqtt:\/\/127\.0\.0\.1:\d+$/);
    expect(listening.http).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(existsSync(listening.tokenFile)).toBe(true);
  });

  it('creates an operator token with the admin token found in ./.driftline', async () => {
    const created = await driftline('--json', 'tokens', 'create', '--name', 'ci', '--role', 'operator');
    expect(created.code).toBe(0);
    const { id, token, role } = JSON.parse(created.stdout) as { id: string; token: string; role: string };
    expect(token).toBeTruthy();
    expect(role).toBe('ROLE_OPERATOR');

    const listed = await driftline('tokens', 'list');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(id);
    expect(listed.stdout).not.toContain(token);
  });

  it('creates an enrollment token and prints the agent command that uses it', async () => {
    const { code, stdout } = await driftline('devices', 'token', 'cam-1', '--label', 'site=plant-3', '--ttl', '1h');
    expect(code).toBe(0);
    expect(stdout).toMatch(/driftline-agent run --enroll-token \S+ --device-id cam-1 --server 127\.0\.0\.1:\d+/);
  });

  it('lists devices as one JSON document', async () => {
    const { code, stdout } = await driftline('--json', 'devices', 'list', '--all');
    expect(code).toBe(0);
    expect(Array.isArray((JSON.parse(stdout) as { devices: unknown }).devices)).toBe(true);
  });

  it('exits 4 for a device that does not exist', async () => {
    const { code, stderr } = await driftline('devices', 'get', 'no-such-device');
    expect(code).toBe(4);
    expect(stderr).toMatch(/^error \[DEVICE_NOT_FOUND\]: /);
  });

  it('pushes a real ONNX model and lists it with the hash computed locally', async () => {
    const bytes = buildDemoModel().bytes;
    const file = join(root, 'vibration.onnx');
    writeFileSync(file, bytes);

    const pushed = await driftline('--json', 'models', 'push', file, '--name', 'vibration', '--description', 'first cut');
    expect(pushed.code).toBe(0);
    expect(JSON.parse(pushed.stdout)).toMatchObject({ name: 'vibration', version: 1, sha256: sha256Hex(bytes), sizeBytes: bytes.length });

    const listed = await driftline('models', 'list');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/^NAME\s+VERSION/);
    expect(listed.stdout).toMatch(/vibration\s+1\s/);
  });

  it('exits 3 for a token the control plane does not know', async () => {
    const { code, stderr } = await driftline('--token', 'dl_not-a-real-token', 'devices', 'list');
    expect(code).toBe(3);
    expect(stderr).toMatch(/^error \[AUTH_INVALID\]: /);
  });

  it('exits 3 when a viewer token asks for an admin-only call', async () => {
    const created = await driftline('--json', 'tokens', 'create', '--name', 'dashboard', '--role', 'viewer');
    const { token } = JSON.parse(created.stdout) as { token: string };
    const tokenFile = join(root, 'viewer.token');
    writeFileSync(tokenFile, `${token}\n`);

    expect((await driftline('--token-file', tokenFile, 'devices', 'list')).code).toBe(0);
    const refused = await driftline('--token-file', tokenFile, 'tokens', 'list');
    expect(refused.code).toBe(3);
    expect(refused.stderr).toMatch(/^error \[ROLE_INSUFFICIENT\]: /);
  });

  it('creates a worker token that tokens list shows as worker and that no operator call takes (exit 3)', async () => {
    const created = await driftline('--json', 'tokens', 'create', '--name', 'gpu-host', '--role', 'worker');
    expect(created.code, created.stderr).toBe(0);
    const { id, token, role } = JSON.parse(created.stdout) as { id: string; token: string; role: string };
    expect(role).toBe('ROLE_WORKER');
    const listed = await driftline('tokens', 'list');
    expect(listed.stdout).toMatch(new RegExp(`${id}\\s+gpu-host\\s+worker\\s`));
    const refused = await driftline('--token', token, 'devices', 'list');
    expect(refused.code).toBe(3);
    expect(refused.stderr).toMatch(/^error \[ROLE_INSUFFICIENT\]: /);
  });

  it('shuts down on SIGTERM and exits 0', async () => {
    const exited = once(serve, 'exit');
    serve.kill('SIGTERM');
    const [code] = await exited;
    expect(code).toBe(0);
  });
});
