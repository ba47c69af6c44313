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

/** The most the rollout may take: a bound for a loaded machine, not an expectation. */
const DEMO_BOUND_S = 240;

describe('npm run demo -- --scenario bad-model', () => {
  it(
    'rollout - the demo stops a worse model at the canary, rolls it back by itself and says so in one JSON line',
    async () => {
      // 3 s bakes; the demo ends when the rollout does, --duration only bounds it on a loaded machine.
      const run = await runDemo(['--scenario', 'bad-model', '--bake', '3', '--duration', String(DEMO_BOUND_S), '--json']);
      const lines = run.stdout.trim().split('\n');
      expect(lines, run.stderr).toHaveLength(1);
      const report = JSON.parse(lines[0]!) as {
        ok: boolean;
        rollout: { state: string; wave: number; reason: string };
        versions: Record<string, number>;
        incompatible: number;
      };
      expect(report.rollout).toMatchObject({ state: 'aborted', wave: 1 });
      expect(report.rollout.reason).toMatch(/p95-latency-ratio/);
      expect(report.versions).toEqual({ '1': 90 });
      expect(report.incompatible).toBe(10);
      expect(report.ok).toBe(true);
      expect(run.code).toBe(0);
    },
    (DEMO_BOUND_S + 120) * 1000,
  );
});
