import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { holdPort, REPO_ROOT } from './helpers/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'driftline-log-format-'));
let held: Awaited<ReturnType<typeof holdPort>>;
let heldPort: number;
beforeAll(async () => {
  // A taken MQTT port ends `serve` right after its first log lines, so each run is short.
  held = await holdPort();
  heldPort = held.port;
});
afterAll(async () => {
  await held.release();
  rmSync(dir, { recursive: true, force: true });
});

/** stderr of a serve that logs "created the first admin token", then fails on the taken port; the error line left out. */
function serveLogs(...flags: string[]): Promise<string[]> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.DRIFTLINE_LOG_FORMAT;
  delete env.DRIFTLINE_LOG_LEVEL;
  const args = ['serve', '--data-dir', mkdtempSync(join(dir, 'cp-')), '--grpc-port', '0', '--mqtt-port', String(heldPort), '--http-port', '0', ...flags];
  return new Promise((resolve) =>
    execFile(process.execPath, [join(REPO_ROOT, 'bin/driftline.js'), ...args], { cwd: dir, env }, (_error, _stdout, stderr) =>
      resolve(stderr.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('error ['))),
    ),
  );
}

describe('logs - text for people, JSON for machines', () => {
  it('writes one JSON object per line when stderr is not a terminal', async () => {
    const lines = await serveLogs();
    expect(lines.length).toBeGreaterThan(0);
    const records = lines.map((line) => JSON.parse(line) as { level: number; msg: string });
    expect(records.map((r) => r.msg)).toContain('created the first admin token');
  });

  it('writes pino-pretty text with --log-format text', async () => {
    const lines = await serveLogs('--log-format', 'text');
    expect(lines.some((line) => line.startsWith('{'))).toBe(false);
    expect(lines.join('\n')).toMatch(/INFO.*\(driftline\): created the first admin token/);
  });

  it('keeps JSON with --log-format json', async () => {
    const lines = await serveLogs('--log-format', 'json');
    for (const line of lines) expect(() => JSON.parse(line)).not.toThrow();
  });

  it('refuses a format it does not know, as a usage error', async () => {
    const code = await new Promise<number>((resolve) =>
      execFile(process.execPath, [join(REPO_ROOT, 'bin/driftline.js'), 'serve', '--log-format', 'xml'], { cwd: dir }, (error) =>
        resolve(error ? Number(error.code) : 0),
      ),
    );
    expect(code).toBe(2);
  });
});
