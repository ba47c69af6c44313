import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { LOCK_FILE } from '../worker/attempt-files.js';
import { freePort } from './helpers/processes.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));
const cwd = mkdtempSync(join(tmpdir(), 'driftline-worker-cli-'));
afterAll(() => rmSync(cwd, { recursive: true, force: true }));

function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.DRIFTLINE_SERVER;
  delete env.DRIFTLINE_TOKEN;
  return env;
}

function driftline(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, env: cleanEnv() }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}

describe('driftline worker and training - usage', () => {
  it('lists the training job commands beside the policy, and the worker command', async () => {
    const training = await driftline('training', '--help');
    expect(training.code).toBe(0);
    for (const sub of ['start', 'list', 'status', 'cancel', 'logs', 'policy']) expect(training.stdout).toMatch(new RegExp(`^  ${sub}\\b`, 'm'));
    const worker = await driftline('worker', '--help');
    expect(worker.code).toBe(0);
    for (const option of ['--work-dir', '--trainers', '--trainer <name=command>', '--once', '--shutdown-grace', 'tokens create --role worker']) {
      expect(worker.stdout).toContain(option);
    }
    expect((await driftline('--help')).stdout).toMatch(/^  worker\b/m);
  });

  it('refuses to start a worker without a token, naming how to make one (exit 3)', async () => {
    const { code, stderr } = await driftline('worker', '--server', '127.0.0.1:1');
    expect(code).toBe(3);
    expect(stderr).toMatch(/^error \[AUTH_MISSING\]: .*driftline tokens create --role worker/);
  });

  it('refuses unknown built-in trainers, a trainer without a command and a URL for --server (exit 2)', async () => {
    const unknown = await driftline('worker', '--token', 't', '--trainers', 'tensorflow');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--trainer tensorflow=<command>');
    expect((await driftline('worker', '--token', 't', '--trainers', 'a b')).code).toBe(2);
    expect((await driftline('worker', '--token', 't', '--trainer', 'mine=')).code).toBe(2);
    const url = await driftline('worker', '--token', 't', '--server', 'https://cp.example.com:7443');
    expect(url.code).toBe(2);
    expect(url.stderr).toContain('SERVER_ADDRESS_INVALID');
  });

  it('refuses a training start with a dataset that is not a snapshot id or hyperparameters that are not an object (exit 2)', async () => {
    const base = ['training', 'start', '--model', 'vibration', '--base-version', '1', '--trainer', 'typescript'];
    const dataset = await driftline(...base, '--dataset', 'latest');
    expect(dataset.code).toBe(2);
    expect(dataset.stderr).toContain('datasets create');
    const hp = await driftline(...base, '--dataset', 'a'.repeat(64), '--hyperparameters', '[1,2]');
    expect(hp.code).toBe(2);
    writeFileSync(join(cwd, 'hp.json'), '{"epochs": 3}');
    // A valid start reaches the network: nothing listens there (exit 5), so the arguments passed.
    const port = await freePort();
    const reached = await driftline('--server', `127.0.0.1:${port}`, '--token', 't', ...base, '--dataset', 'a'.repeat(64), '--hyperparameters', '@hp.json');
    expect(reached.code).toBe(5);
  });

  it('stops on SIGTERM while the control plane cannot be reached, releasing its work directory (exit 0)', async () => {
    const port = await freePort();
    const workDir = join(cwd, 'work');
    const child = spawn(process.execPath, [BIN, 'worker', '--server', `127.0.0.1:${port}`, '--work-dir', workDir, '--trainers', 'typescript'], {
      cwd,
      env: { ...cleanEnv(), DRIFTLINE_TOKEN: 'not-checked-yet', DRIFTLINE_LOG_FORMAT: 'json' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    const retried = new Promise<void>((resolve) =>
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (stderr.includes('registering failed; retrying')) resolve();
      }),
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await retried;
    expect(existsSync(join(workDir, LOCK_FILE))).toBe(true);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(readdirSync(workDir)).toEqual(['attempts']);
  });
});
