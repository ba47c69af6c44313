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

/** The most the traffic may take: a bound for a loaded machine, not an expectation (a run takes about two and a half minutes). */
const DEMO_BOUND_S = 300;

interface ClosedLoopReport {
  ok: boolean;
  accuracy: Record<'v1_before_drift' | 'v1_after_drift' | 'v2_after_rollout' | 'v2_clean_cohorts' | 'v1_clean_cohorts', number>;
  seconds: Record<'alert_to_job' | 'job_to_candidate' | 'candidate_to_rollout_succeeded', number>;
  lineage: {
    version: number;
    parent_version: number;
    dataset: { id: string; sha256: string };
    job_id: string;
    trainer: string;
    cohort: string;
    metrics: Record<string, number>;
    evaluation: { verdict: string; gates: Array<{ gate: string; verdict: string }> };
  };
  rollout: { state: string; target: string; version: number };
  counts: Record<string, { answered: number; correct: number }>;
  measured: { clean_rows: number };
  problems: string[];
}

describe('npm run demo -- --scenario closed-loop', () => {
  it(
    'closed loop - a cohort drifts, its alert retrains v2 on a worker, the gate passes, the automation key signs its canary and it rolls out to that cohort, restoring its accuracy without costing the clean cohort',
    async () => {
      const run = await runDemo(['--scenario', 'closed-loop', '--duration', String(DEMO_BOUND_S), '--json']);
      const lines = run.stdout.trim().split('\n');
      expect(lines, run.stderr).toHaveLength(1);
      const report = JSON.parse(lines[0]!) as ClosedLoopReport;
      expect(report.problems).toEqual([]);
      expect(report.ok).toBe(true);
      expect(run.code).toBe(0);

      const { accuracy, seconds, lineage } = report;
      for (const value of Object.values(accuracy)) expect(value).toBeGreaterThan(0);
      // The drift costs v1 accuracy on the drifted cohort; v2 restores it, and keeps the clean cohort's.
      expect(accuracy.v1_after_drift).toBeLessThan(accuracy.v1_before_drift);
      expect(accuracy.v2_after_rollout).toBeGreaterThanOrEqual(0.95 * accuracy.v1_before_drift);
      expect(accuracy.v2_clean_cohorts).toBeGreaterThanOrEqual(accuracy.v1_clean_cohorts - 0.01);
      expect(report.measured.clean_rows).toBeGreaterThan(0);
      for (const value of Object.values(seconds)) expect(value).toBeGreaterThanOrEqual(0);

      expect(lineage).toMatchObject({ version: 2, parent_version: 1, trainer: 'typescript', cohort: 'plant-2', evaluation: { verdict: 'pass' } });
      expect(lineage.dataset.id).toMatch(/^[0-9a-f]{64}$/);
      expect(lineage.dataset.sha256).toMatch(/^[0-9a-f]{64}$/);
      expect(lineage.job_id).toMatch(/^tj_/);
      expect(lineage.metrics.train_rows).toBeGreaterThan(0);
      expect(report.rollout).toMatchObject({ state: 'succeeded', target: 'cohort=plant-2', version: 2 });
      // The canary reached the drifted cohort only: the clean cohort's answers all came from v1.
      expect(Object.keys(report.counts).filter((k) => k.startsWith('plant-1/') && !k.startsWith('plant-1/v1/'))).toEqual([]);
      expect(report.counts['plant-2/v2/after_rollout']?.answered).toBeGreaterThan(0);
    },
    (DEMO_BOUND_S + 180) * 1000,
  );
});
