import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { holdPort, REPO_ROOT, startProcess, stopProcess } from './helpers/processes.js';

const DRIFTLINE = join(REPO_ROOT, 'bin/driftline.js');
const AGENT = join(REPO_ROOT, 'bin/driftline-agent.js');
const EXIT_UNAVAILABLE = 5;
const AGENT_EXIT_FAILED = 1;

const dir = mkdtempSync(join(tmpdir(), 'driftline-listen-'));
let held: Awaited<ReturnType<typeof holdPort>>;
let heldPort: number;

beforeAll(async () => {
  // A test socket holds the port, as a system mosquitto holds 1883.
  held = await holdPort();
  heldPort = held.port;
});
afterAll(async () => {
  await held.release();
  rmSync(dir, { recursive: true, force: true });
});

function run(bin: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, DRIFTLINE_LOG_LEVEL: 'error' };
  delete env.DRIFTLINE_TOKEN;
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { cwd: dir, env, timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code ?? error.signal) : 0, stdout, stderr }),
    );
  });
}

const ports = (taken: 'grpc' | 'mqtt' | 'http', port: number): string[] =>
  (['grpc', 'mqtt', 'http'] as const).flatMap((l) => [`--${l}-port`, String(l === taken ? port : 0)]);

describe('serve - a listener port that is taken', () => {
  it.each([
    ['grpc', '--grpc-port'],
    ['mqtt', '--mqtt-port'],
    ['http', '--http-port'],
  ] as const)('exits at once with LISTEN_FAILED naming %s and the flag %s, leaving no data dir behind', async (listener, flag) => {
    const dataDir = join(dir, `fresh-${listener}`);
    const { code, stdout, stderr } = await run(DRIFTLINE, ['serve', '--data-dir', dataDir, ...ports(listener, heldPort)]);
    expect(code).toBe(EXIT_UNAVAILABLE);
    expect(stdout).not.toContain('listening');
    // Our one line, and no raw grpc-js text such as `E No address added out of total 1 resolved`.
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(/^error \[LISTEN_FAILED\]: /)]);
    expect(stderr).toContain(`127.0.0.1:${heldPort}`);
    expect(stderr).toContain(flag);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('keeps an existing data dir and its admin token working after a failed start', async () => {
    const dataDir = join(dir, 'existing');
    const first = await startProcess(DRIFTLINE, ['serve', '--data-dir', dataDir, ...ports('grpc', 0)], /^driftline: listening grpc=(\S+)/, {
      env: { DRIFTLINE_LOG_LEVEL: 'error' },
    });
    await stopProcess(first);
    const token = readFileSync(join(dataDir, 'admin.token'), 'utf8');

    const failed = await run(DRIFTLINE, ['serve', '--data-dir', dataDir, ...ports('mqtt', heldPort)]);
    expect(failed.code).toBe(EXIT_UNAVAILABLE);
    expect(readFileSync(join(dataDir, 'admin.token'), 'utf8')).toBe(token);

    const again = await startProcess(DRIFTLINE, ['serve', '--data-dir', dataDir, ...ports('grpc', 0)], /^driftline: listening grpc=(\S+)/, {
      env: { DRIFTLINE_LOG_LEVEL: 'error' },
    });
    try {
      const list = await run(DRIFTLINE, ['--server', again.ready[1]!, '--token', token.trim(), '--json', 'devices', 'list']);
      expect(list.code).toBe(0);
    } finally {
      await stopProcess(again);
    }
  });

  it('an empty data dir that existed stays, without a store or admin token in it', async () => {
    const dataDir = mkdtempSync(join(dir, 'empty-'));
    const { code } = await run(DRIFTLINE, ['serve', '--data-dir', dataDir, ...ports('http', heldPort)]);
    expect(code).toBe(EXIT_UNAVAILABLE);
    expect(existsSync(dataDir)).toBe(true);
    expect(existsSync(join(dataDir, 'admin.token'))).toBe(false);
    expect(existsSync(join(dataDir, 'control-plane.db'))).toBe(false);
  });
});

describe('driftline-agent run - a local API port that is taken', () => {
  it('exits with LISTEN_FAILED naming --local-port before it enrolls or creates its data dir', async () => {
    const dataDir = join(dir, 'agent');
    const { code, stderr } = await run(AGENT, [
      'run',
      '--device-id',
      'listen-test-1',
      '--enroll-token',
      'unused',
      '--server',
      '127.0.0.1:1',
      '--data-dir',
      dataDir,
      '--local-port',
      String(heldPort),
    ]);
    expect(code).toBe(AGENT_EXIT_FAILED);
    expect(stderr).toContain('error [LISTEN_FAILED]');
    expect(stderr).toContain('--local-port');
    expect(existsSync(dataDir)).toBe(false);
  });
});
