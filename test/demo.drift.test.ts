import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/processes.js';

function runDemo(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
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

/** The most the demo may take to reach its verdict: a bound for a loaded machine, not an expectation. */
const DEMO_BOUND_S = 240;

interface CohortDrift {
  status: string;
  devices: number;
  rows: number;
  psi: number;
  drifted: string[];
}

describe('npm run demo -- --scenario drift', () => {
  it(
    'drift - only the cohort fed drifted inputs alerts, through the real DriftService, and nothing is lost',
    async () => {
      // One device per cohort: plant-1 reads healthy sensors, plant-2 aged ones. The demo runs until
      // the drift status shows what the scenario is about (however long a loaded machine takes),
      // --duration only bounds the wait.
      const run = await runDemo(['--scenario', 'drift', '--until', 'drift-alert', '--duration', String(DEMO_BOUND_S), '--devices', '2', '--json']);
      const lines = run.stdout.trim().split('\n');
      expect(lines, run.stderr).toHaveLength(1);
      const report = JSON.parse(lines[0]!) as {
        ok: boolean;
        lost: number;
        inferences: number;
        failedInferences: number;
        problems: string[];
        drift: { status: string; model: string; version: number; cohorts: Record<string, CohortDrift> };
      };
      expect(report.problems).toEqual([]);
      expect(report).toMatchObject({ ok: true, lost: 0, failedInferences: 0 });
      expect(report.inferences).toBeGreaterThan(0);

      expect(report.drift).toMatchObject({ status: 'alert', model: 'vibration', version: 1 });
      const { 'plant-1': clean, 'plant-2': drifted } = report.drift.cohorts;
      expect(drifted).toMatchObject({ status: 'alert', devices: 1 });
      // The aged sensors' gain and temperature offset move six features; crest factor and kurtosis are ratios and do not move.
      expect(drifted!.drifted).toEqual(expect.arrayContaining(['rms_velocity', 'temperature_c']));
      expect(drifted!.drifted).not.toContain('kurtosis');
      // The clean cohort got a verdict, and it is not an alert. Not asserted 'ok': on a few hundred
      // rows one value beyond the reference's range can make one feature 'warn' (see the drift
      // chi-square's empty outer bins), which is not what this test is about.
      expect(clean).toMatchObject({ devices: 1 });
      expect(['ok', 'warn']).toContain(clean!.status);
      expect(clean!.drifted.length).toBeLessThan(drifted!.drifted.length);
      expect(run.code).toBe(0);
    },
    (DEMO_BOUND_S + 120) * 1000,
  );
});
