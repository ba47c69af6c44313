import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { enrollSimulatedDevices, FleetSimulator } from '../simulator/fleet-simulator.js';
import { demoModelBytes } from './fixtures/models.js';
import { rolloutApi, type RolloutApi } from './helpers/rollout-api.js';

const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));

describe('driftline rollout (CLI)', () => {
  let dir: string;
  let cp: ControlPlane;
  let api: RolloutApi;
  let sim: FleetSimulator;
  const clock = new ManualClock();

  const cliArgs = (args: string[]): string[] => [BIN, '--server', cp.addresses.grpc, '--token-file', cp.adminTokenFile, ...args];
  function driftline(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, cliArgs(args), { env: { ...process.env, DRIFTLINE_SERVER: '', DRIFTLINE_TOKEN: '' } }, (error, stdout, stderr) =>
        resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
      );
    });
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'driftline-rollout-cli-'));
    cp = await startControlPlane(
      { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, rollout: { tickInterval: '1h', watchInterval: '100ms' } },
      { logger: silentLogger(), clock },
    );
    api = rolloutApi(cp.addresses.grpc, cp.adminTokenFile);
    await api.upload('vibration', demoModelBytes(1));
    await api.upload('vibration', demoModelBytes(2));
    const devices = Array.from({ length: 6 }, (_, i) => ({ id: `cli-${i}`, profile: 'generic-x86_64-cpu', labels: { site: 'lab' } }));
    const creds = await enrollSimulatedDevices({ address: cp.addresses.grpc, token: readFileSync(cp.adminTokenFile, 'utf8').trim(), devices });
    sim = await FleetSimulator.start({
      brokerUrl: cp.addresses.mqtt,
      devices: creds,
      behavior: () => ({ latencyMs: 5, errorRate: 0 }),
      clock,
      logger: silentLogger(),
    });
    const initial = await api.start({ model: 'vibration', version: 1, gates: ['none'] });
    await vi.waitFor(async () => expect((await api.get(initial.id)).versions[1]).toBe(6), { timeout: 10_000, interval: 20 });
    await cp.rollouts.tick();
  }, 60_000);

  afterAll(async () => {
    await sim?.shutdown();
    api?.close();
    await cp?.shutdown();
    await rm(dir, { recursive: true, force: true });
  });

  it('rollout - refuses --min-devices above the devices --target matches (ROLLOUT_MIN_DEVICES_UNMET, exit 2) and starts nothing', async () => {
    const before = JSON.parse((await driftline('--json', 'rollout', 'list')).stdout) as { rollouts: unknown[] };
    const refused = await driftline(
      'rollout',
      'start',
      '--model',
      'vibration',
      '--version',
      '2',
      '--min-devices',
      '7',
      '--target',
      'site=lab',
      '--gate',
      'none',
    );
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(
      /^error \[ROLLOUT_MIN_DEVICES_UNMET\]: --min-devices 7 is more than the 6 compatible device\(s\) matching site=lab: .*lower --min-devices or widen --target; nothing was started/,
    );
    const after = JSON.parse((await driftline('--json', 'rollout', 'list')).stdout) as { rollouts: unknown[] };
    expect(after.rollouts).toHaveLength(before.rollouts.length);
  });

  it('rollout - starts, pauses, watches and aborts a rollout from the command line, idempotently, with an audit trail', async () => {
    const startArgs = [
      'rollout',
      'start',
      '--model',
      'vibration',
      '--version',
      '2',
      '--waves',
      '50,100',
      '--bake',
      '10m',
      '--min-devices',
      '2',
      '--target',
      'site=lab',
      '--gate',
      'p95-latency-ratio<=1.5',
      '--request-id',
      'cli-start-1',
    ];
    const started = await driftline('--json', ...startArgs);
    expect(started.stderr).toBe('');
    const rollout = JSON.parse(started.stdout) as { id: string; state: string; wave: number; targetedDevices: number; gates: string[] };
    expect(rollout).toMatchObject({ state: 'progressing', wave: 1, targetedDevices: 6, gates: ['p95-latency-ratio<=1.5'] });
    // The same command again (a retry) answers with the same rollout.
    expect(JSON.parse((await driftline('--json', ...startArgs)).stdout).id).toBe(rollout.id);

    const paused = await driftline('rollout', 'pause', rollout.id, '--reason', 'looking at dashboards');
    expect(paused).toMatchObject({ code: 0, stdout: expect.stringMatching(/is paused/) });
    const status = await driftline('rollout', 'status', rollout.id);
    expect(status.stdout).toMatch(/WAVE\s+PERCENT\s+DEVICES\s+BAKE\s+STATUS/);
    expect(status.stdout).toMatch(/looking at dashboards/);

    // Watch streams until the rollout ends; the abort comes from another CLI call meanwhile.
    const watcher = spawn(process.execPath, cliArgs(['--json', 'rollout', 'status', rollout.id, '--watch']), { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: Array<{ state: string }> = [];
    createInterface({ input: watcher.stdout! }).on('line', (line) => lines.push(JSON.parse(line) as { state: string }));
    const exited = new Promise<number | null>((resolve) => watcher.on('exit', (c) => resolve(c)));
    await vi.waitFor(() => expect(lines.length).toBeGreaterThan(0), { timeout: 15_000, interval: 50 });
    expect(lines[0]!.state).toBe('paused');
    const aborted = await driftline('rollout', 'abort', rollout.id, '--reason', 'operator test', '--request-id', 'abort-1');
    expect(aborted.stdout).toMatch(/is aborted/);
    expect(await exited).toBe(0);
    expect(lines.at(-1)!.state).toBe('aborted');

    const history = JSON.parse((await driftline('--json', 'rollout', 'history', rollout.id)).stdout) as {
      entries: Array<{ action: string; actor: string; clientRequestId: string }>;
    };
    expect(history.entries.map((e) => e.action)).toEqual(['create', 'start', 'pause', 'abort']);
    expect(history.entries[3]).toMatchObject({ clientRequestId: 'abort-1', actor: expect.stringMatching(/.+/) });
    expect(history.entries[3]!.actor).not.toBe('system');

    const list = await driftline('rollout', 'list');
    expect(list.stdout).toMatch(new RegExp(`${rollout.id}\\s+vibration\\s+2\\s+aborted`));
    await vi.waitFor(() => expect(sim.versions()).toEqual({ '1': 6 }), { timeout: 10_000, interval: 20 });
  });

  it('rollout - refuses a malformed gate as a usage error and an unknown rollout as not found', async () => {
    const bad = await driftline('rollout', 'start', '--model', 'vibration', '--version', '2', '--gate', 'latency<2');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^error \[REQUEST_INVALID\]/);
    const missing = await driftline('rollout', 'abort', 'ro_missing');
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/^error \[ROLLOUT_NOT_FOUND\]/);
  });
});
