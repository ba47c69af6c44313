import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/processes.js';

/** The most the demo may take to serve: a bound for a loaded machine, not an expectation. */
const DEMO_BOUND_S = 240;

interface DemoRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runDemo(args: string[]): Promise<DemoRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'demo/run.ts', ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Processes whose command line mentions the folder (Linux /proc); the demo's children all do. */
function processesUsing(folder: string): string[] {
  if (!existsSync('/proc')) return [];
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      } catch {
        return '';
      }
    })
    .filter((cmdline) => cmdline.includes(folder));
}

describe('npm run demo', () => {
  it(
    'runs the whole loop with real processes and prints one JSON line in which nothing is lost',
    async () => {
      // Until every agent served and its telemetry is stored, however long a loaded machine takes; --duration only bounds it.
      const run = await runDemo(['--until', 'serving', '--duration', String(DEMO_BOUND_S), '--json', '--devices', '2']);

      expect(run.code, run.stderr).toBe(0);
      const lines = run.stdout.trim().split('\n');
      expect(lines).toHaveLength(1);
      const result = JSON.parse(lines[0]!);
      expect(result).toMatchObject({ ok: true, devices: 2, lost: 0, failedInferences: 0, buffered: 0, model: { name: 'vibration', version: 1 } });
      expect(result.inferences).toBeGreaterThan(0);
      expect(result.telemetryStored).toBeGreaterThan(0);
      // Every record an agent enqueued reached the store, device by device.
      for (const device of result.perDevice) expect(device.stored).toBe(device.enqueued);

      // The temp folder is gone and no child process outlived the demo.
      const dataDir = /starting the control plane .* in (\S+)/.exec(run.stderr)?.[1];
      expect(dataDir).toBeDefined();
      expect(existsSync(dataDir!)).toBe(false);
      expect(processesUsing(dataDir!)).toEqual([]);
    },
    (DEMO_BOUND_S + 120) * 1000,
  );

  it(
    'runs the pipeline scenario: every agent serves two models in a chain, the inferences of each model stored, nothing lost',
    async () => {
      const run = await runDemo(['--scenario', 'pipeline', '--until', 'serving', '--duration', String(DEMO_BOUND_S), '--json', '--devices', '2']);

      expect(run.code, run.stderr).toBe(0);
      const result = JSON.parse(run.stdout.trim());
      expect(result).toMatchObject({ ok: true, devices: 2, lost: 0, failedInferences: 0, models: 2 });
      expect(Object.keys(result.perModel).sort()).toEqual(['maintenance', 'vibration']);
      for (const model of Object.values(result.perModel) as Array<{ inferences: number; stored: number }>) {
        expect(model.inferences).toBeGreaterThan(0);
        expect(model.stored).toBeGreaterThanOrEqual(model.inferences);
      }
      for (const device of result.perDevice) expect(device.stored).toBe(device.enqueued);
    },
    (DEMO_BOUND_S + 120) * 1000,
  );

  it('refuses --until drift-alert without the drift scenario, as a usage error', async () => {
    const run = await runDemo(['--until', 'drift-alert', '--json']);
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout.trim())).toMatchObject({ ok: false, error: { code: 'CONFIG_INVALID' } });
  });
});
