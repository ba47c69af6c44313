import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { buildAgentBinary } from '../packaging/build-agent.js';
import { AGENT_NODE, agentBuildInputs } from '../packaging/node-runtime.js';
import { driveInferences, inferOnce } from './helpers/agent-traffic.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { REPO_ROOT, waitFor } from './helpers/processes.js';

const AGENT_READY = /^driftline-agent: ready device=(\S+) local-api=(\S+)$/;
const AGENT_STOPPED = /^driftline-agent: stopped device=(\S+) enqueued=(\d+) acknowledged=(\d+) buffered=(\d+) dropped=(\d+)$/;
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

interface SelftestJson {
  ok: boolean;
  packaged: boolean;
  runtime: { node: string; platform: string; arch: string };
  checks: Array<{ name: string; ok: boolean; detail: string; code?: string }>;
}

describe('the agent as one executable', () => {
  let scratch: string;
  /** The binary, alone in a folder: no node_modules beside it or above it. */
  let binary: string;
  let home: string;
  let cwd: string;

  /** A clean environment: no NODE_PATH, a fresh HOME, nothing from this checkout. */
  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({ PATH: '/usr/bin:/bin', HOME: home, DRIFTLINE_LOG_LEVEL: 'warn', ...extra });
  const runBinary = (args: string[], extra: NodeJS.ProcessEnv = {}) => spawnSync(binary, args, { cwd, env: env(extra), encoding: 'utf8', timeout: 60_000 });
  const selftestJson = (args: string[] = []): { status: number | null; report: SelftestJson } => {
    const result = runBinary(['selftest', '--json', ...args]);
    return { status: result.status, report: JSON.parse(result.stdout) as SelftestJson };
  };

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'driftline-package-'));
    // The pinned Node LTS and better-sqlite3 compiled for it (cached in .cache/ after the first build).
    const inputs = agentBuildInputs('x64');
    const built = await buildAgentBinary({
      arch: 'x64',
      node: inputs.runtime.node,
      sqliteAddon: inputs.sqliteAddon,
      out: join(scratch, 'build', 'driftline-agent-linux-x64'),
      strip: true,
      log: () => undefined,
    });
    const lone = join(scratch, 'device', 'bin');
    mkdirSync(lone, { recursive: true });
    binary = join(lone, 'driftline-agent');
    copyFileSync(built.out, binary);
    spawnSync('chmod', ['755', binary]);
    home = join(scratch, 'device', 'home');
    cwd = join(scratch, 'device', 'cwd');
    mkdirSync(home, { recursive: true });
    mkdirSync(cwd, { recursive: true });
  }, 900_000);

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('prints its version', () => {
    const result = runBinary(['--version']);
    expect(result.status).toBe(0);
    expect(result.stdout.trim()).toBe(VERSION);
  });

  it('passes its selftest from an empty folder with no node_modules, extracting its native addons once into a folder named by their hash', () => {
    const first = runBinary(['selftest']);
    expect(first.stdout).toContain('selftest: PASS');
    expect(first.status).toBe(0);

    const cache = join(home, '.cache', 'driftline-agent');
    const folders = readdirSync(cache).filter((f) => !f.startsWith('.'));
    expect(folders).toHaveLength(1);
    expect(folders[0]).toMatch(/^[0-9a-f]{32}$/);
    expect(existsSync(join(cache, folders[0]!, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', 'linux', process.arch, 'libonnxruntime.so.1'))).toBe(true);

    const second = selftestJson();
    expect(second.status).toBe(0);
    expect(second.report).toMatchObject({ ok: true, packaged: true });
    expect(second.report.checks.map((c) => [c.name, c.ok])).toEqual([
      ['native addons', true],
      ['firmware profile', true],
      ['inference', true],
      ['buffer', true],
    ]);
    expect(second.report.checks[0]!.detail).toMatch(/^verified in /);
    expect(readdirSync(cache).filter((f) => !f.startsWith('.'))).toEqual(folders);
  });

  it("carries the pinned Node LTS from the npm registry, not the build machine's Node", () => {
    const { status, report } = selftestJson();
    expect(status).toBe(0);
    expect(report.runtime).toEqual({ node: AGENT_NODE.version, platform: 'linux', arch: 'x64' });
  });

  it('extracts its native addons again when the extracted copy was tampered with', () => {
    const nativeDir = mkdtempSync(join(scratch, 'native-'));
    expect(selftestJson().status).toBe(0);
    expect(runBinary(['selftest'], { DRIFTLINE_AGENT_NATIVE_DIR: nativeDir }).status).toBe(0);
    const [folder] = readdirSync(nativeDir).filter((f) => !f.startsWith('.'));
    const library = join(nativeDir, folder!, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', 'linux', process.arch, 'libonnxruntime.so.1');
    writeFileSync(library, 'not a shared library');

    const result = runBinary(['selftest', '--json'], { DRIFTLINE_AGENT_NATIVE_DIR: nativeDir });
    const report = JSON.parse(result.stdout) as SelftestJson;
    expect(result.status).toBe(0);
    expect(report.checks[0]!.detail).toMatch(/^extracted to /);
    expect(readFileSync(library).length).toBeGreaterThan(1_000_000);
  });

  it('fails its selftest with exit code 1 and the failing check when the firmware profile does not exist', () => {
    const { status, report } = selftestJson(['--profile', 'no-such-board']);
    expect(status).toBe(1);
    expect(report.ok).toBe(false);
    expect(report.checks.find((c) => !c.ok)).toMatchObject({ name: 'firmware profile', code: 'PROFILE_INVALID' });
  });

  it("explains a bad configuration file with exit code 3 in zod's English messages (the binary carries no other locale)", () => {
    mkdirSync(cwd, { recursive: true });
    writeFileSync(join(cwd, 'bad-config.json'), JSON.stringify({ localApi: { port: 'x' } }));
    const result = runBinary(['run', '--config', 'bad-config.json', '--data-dir', join(scratch, 'bad-config-data')]);
    expect(result.status).toBe(3);
    expect(result.stderr).toContain('error [CONFIG_INVALID]');
    expect(result.stderr).toContain('localApi.port: Invalid input: expected number, received string');
  });

  describe('against a control plane', () => {
    let cp: ControlPlane;
    let api: FleetApi;
    let agent: ChildProcess | undefined;

    beforeAll(async () => {
      cp = await startControlPlane({ dataDir: join(scratch, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
      api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    });

    afterAll(async () => {
      if (agent && agent.exitCode === null && agent.signalCode === null) agent.kill('SIGKILL');
      api?.close();
      await cp?.shutdown();
    });

    it('enrolls, serves the deployed demo model and delivers every telemetry record it enqueued', async () => {
      const token = await api.createEnrollmentToken('edge-binary-1');
      agent = spawn(
        binary,
        [
          'run',
          '--device-id',
          'edge-binary-1',
          '--enroll-token',
          token,
          '--server',
          cp.addresses.grpc,
          '--data-dir',
          join(scratch, 'agent-data'),
          '--local-port',
          '0',
        ],
        { cwd, env: env(), stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stderr = '';
      agent.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const lines: string[] = [];
      createInterface({ input: agent.stdout! }).on('line', (line) => lines.push(line));
      const exited = new Promise<number | null>((resolve) => agent!.once('exit', (code) => resolve(code)));
      const lineMatching = (pattern: RegExp) =>
        waitFor(
          () => lines.map((l) => l.match(pattern)).find(Boolean) ?? null,
          (m) => m !== null,
          { what: `a line matching ${pattern} (stderr: ${stderr.slice(-2000)})`, timeoutMs: 60_000 },
        );

      const ready = (await lineMatching(AGENT_READY))!;
      expect(ready[1]).toBe('edge-binary-1');
      const localApi = ready[2]!;
      await waitFor(
        () => api.listDevices(),
        (d) => d[0]?.online === true,
        { what: 'device online' },
      );

      await api.uploadModel('vibration', buildDemoModel({}).bytes);
      expect((await api.deploy('vibration')).devices).toBe(1);
      await waitFor(
        () => inferOnce(localApi, [1, 2, 3, 4, 5, 6, 7, 8]).then((r) => r.status),
        (s) => s === 200,
        { what: 'model active on the agent' },
      );
      expect(await driveInferences(localApi, 10)).toBe(10);

      agent.kill('SIGTERM');
      expect(await exited).toBe(0);
      const [, , enqueued, acknowledged, buffered, dropped] = (await lineMatching(AGENT_STOPPED))!.map(Number);
      expect(enqueued).toBeGreaterThanOrEqual(11);
      expect({ buffered, dropped, acknowledged }).toEqual({ buffered: 0, dropped: 0, acknowledged: enqueued });
      const summary = await api.summary('edge-binary-1');
      expect(summary.devices[0]!.records).toBe(enqueued);
      expect(summary.devices[0]!.inferenceErrors).toBe(0);
    });

    it("refuses mqtt.js's SOCKS proxy variable with CONFIG_INVALID (the binary carries no SOCKS or WebSocket transport)", async () => {
      // The device enrolled above restarts from its data folder.
      const child = spawn(binary, ['run', '--data-dir', join(scratch, 'agent-data'), '--local-port', '0'], {
        cwd,
        env: env({ MQTTJS_SOCKS_PROXY: 'socks5://127.0.0.1:1' }),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
      expect(stderr).toContain('error [CONFIG_INVALID]');
      expect(stderr).toContain('a SOCKS proxy (MQTTJS_SOCKS_PROXY) is not supported');
      expect(code).toBe(3);
    });
  });
});
