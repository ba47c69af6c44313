import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startProcess, stopProcess } from './helpers/processes.js';

const BLOCK_DEV = join(REPO_ROOT, 'test/fixtures/block-dev-dependencies.mjs');
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const dir = mkdtempSync(join(tmpdir(), 'driftline-compiled-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs a bin/ script with every devDependency (tsx, esbuild, typescript, ...) made unimportable. */
function run(script: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, DRIFTLINE_LOG_LEVEL: 'error' };
  delete env.DRIFTLINE_TOKEN;
  delete env.DRIFTLINE_FROM_SOURCE;
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', BLOCK_DEV, join(REPO_ROOT, script), ...args], { cwd: dir, env }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}

describe('compiled CLI - runs from dist/ without any devDependency', () => {
  it.each([['--version'], ['-V'], ['version']])('driftline %s prints the package version', async (flag) => {
    const { code, stdout, stderr } = await run('bin/driftline.js', [flag]);
    expect(stderr).toBe('');
    expect([code, stdout]).toEqual([0, `${VERSION}\n`]);
  });

  it('keeps `models deploy --version N` for the deploy, not the program', async () => {
    const { stdout } = await run('bin/driftline.js', ['models', 'deploy', '--help']);
    expect(stdout).toMatch(/--version <n>/);
  });

  it('driftline-agent --version prints the package version', async () => {
    const { code, stdout } = await run('bin/driftline-agent.js', ['--version']);
    expect([code, stdout]).toEqual([0, `${VERSION}\n`]);
  });

  it('serves the control plane and answers `devices list` with devDependencies blocked', async () => {
    // startProcess runs `node <script> ...args`: the script slot carries node's own --import.
    const plane = await startProcess(
      '--import',
      [BLOCK_DEV, join(REPO_ROOT, 'bin/driftline.js'), 'serve', '--data-dir', join(dir, 'cp'), '--grpc-port', '0', '--mqtt-port', '0', '--http-port', '0'],
      /^driftline: listening grpc=(\S+) .* token-file=(\S+)$/,
      { env: { DRIFTLINE_LOG_LEVEL: 'error' } },
    );
    try {
      const token = readFileSync(plane.ready[2]!, 'utf8').trim();
      const { code, stdout, stderr } = await run('bin/driftline.js', ['--server', plane.ready[1]!, '--token', token, '--json', 'devices', 'list']);
      expect(stderr).toBe('');
      expect(code).toBe(0);
      expect(JSON.parse(stdout)).toHaveProperty('devices');
    } finally {
      await stopProcess(plane);
    }
  });
});
