import { formatGate, type GateSpec } from './plan.js';

/** Inference metrics of one cohort (devices on one version) over the evaluation window. */
export interface CohortStats {
  devices: number;
  /** Devices that produced at least one inference in the window. */
  devicesWithData: number;
  inferences: number;
  errors: number;
  /** Null when there were no inferences. */
  p95LatencyMs: number | null;
  /** Labelled outcomes, where labels exist. */
  labeled?: { total: number; correct: number } | undefined;
}

export interface InstallStats {
  /** Devices sent the new version in the waves so far. */
  attempted: number;
  installed: number;
  failed: number;
  /** Neither installed nor failed yet (offline, downloading). */
  pending: number;
}

export type DriftStatus = 'ok' | 'warning' | 'drift';

/** What the driver measured for one evaluation of the current wave. */
export interface Observation {
  install: InstallStats;
  canary: CohortStats;
  baseline: CohortStats;
  /** From the drift service when there is one; undefined when drift is not measured. */
  drift?: DriftStatus | undefined;
}

export type Verdict = 'pass' | 'fail' | 'inconclusive';

export interface GateResult {
  gate: string;
  verdict: Verdict;
  value: number | null;
  threshold: number;
  detail: string;
}

export interface Evaluation {
  verdict: Verdict;
  results: GateResult[];
  /** One line naming what failed or was inconclusive; empty on pass. */
  reason: string;
}

export interface EvaluationLimits {
  /** Decided installs (and canary devices with data) needed: the wave's minimum device count. */
  minDevices: number;
  minInferences: number;
}

const errorRate = (c: CohortStats): number => c.errors / c.inferences;
const round = (n: number): number => Math.round(n * 10_000) / 10_000;
const DRIFT_LEVEL: Record<DriftStatus, number> = { ok: 0, warning: 1, drift: 2 };

/**
 * Judges one wave. A gate fails only on enough data; with too few devices or inferences it is
 * inconclusive, and the rollout pauses rather than passes. A value exactly at the threshold passes.
 */
export function evaluateGates(gates: readonly GateSpec[], obs: Observation, limits: EvaluationLimits): Evaluation {
  const results = gates.map((gate) => evaluateGate(gate, obs, limits));
  return { ...combineGateResults(results), results };
}

/** Any failed gate fails; else any inconclusive one makes it inconclusive; the reason names the gates that decided. */
export function combineGateResults(results: readonly GateResult[]): { verdict: Verdict; reason: string } {
  const failed = results.filter((r) => r.verdict === 'fail');
  const unsure = results.filter((r) => r.verdict === 'inconclusive');
  const verdict: Verdict = failed.length > 0 ? 'fail' : unsure.length > 0 ? 'inconclusive' : 'pass';
  const named = verdict === 'fail' ? failed : verdict === 'inconclusive' ? unsure : [];
  return { verdict, reason: named.map((r) => `${r.gate}: ${r.detail}`).join('; ') };
}

/** A threshold rule's two ways to end: inconclusive with a reason, or judged on a value (one at the threshold passes). */
export function thresholdJudge(gate: string, rule: { op: '<=' | '>='; threshold: number }) {
  return {
    unsure: (detail: string): GateResult => ({ gate, verdict: 'inconclusive', value: null, threshold: rule.threshold, detail }),
    judge: (value: number, detail: string): GateResult => {
      // Rounded so float noise (0.88 - 0.9 = -0.0200000000000000018) cannot fail a value at the threshold.
      const v = Math.round(value * 1e9) / 1e9;
      const ok = rule.op === '<=' ? v <= rule.threshold : v >= rule.threshold;
      return { gate, verdict: ok ? 'pass' : 'fail', value: round(value), threshold: rule.threshold, detail: `${detail} (limit ${rule.op} ${rule.threshold})` };
    },
  };
}

function evaluateGate(gate: GateSpec, obs: Observation, limits: EvaluationLimits): GateResult {
  const { unsure, judge } = thresholdJudge(formatGate(gate), gate);
  const { canary, baseline, install } = obs;
  const canaryShort = (): string | undefined =>
    canary.inferences < limits.minInferences
      ? `only ${canary.inferences} canary inferences (need ${limits.minInferences})`
      : canary.devicesWithData < Math.min(limits.minDevices, canary.devices)
        ? `only ${canary.devicesWithData} canary devices reported inferences (need ${Math.min(limits.minDevices, canary.devices)})`
        : undefined;
  const baselineShort = (): string | undefined =>
    baseline.inferences < limits.minInferences ? `only ${baseline.inferences} baseline inferences (need ${limits.minInferences})` : undefined;

  switch (gate.metric) {
    case 'install-failure-rate': {
      const decided = install.installed + install.failed;
      // A failure already above the limit for the whole wave cannot be rescued by the pending devices.
      if (install.attempted > 0 && install.failed / install.attempted > gate.threshold && gate.op === '<=') {
        return judge(install.failed / install.attempted, `${install.failed} of ${install.attempted} installs failed`);
      }
      if (decided < Math.min(limits.minDevices, install.attempted) || decided === 0)
        return unsure(`only ${decided} of ${install.attempted} devices reported the install`);
      return judge(install.failed / decided, `${install.failed} of ${decided} installs failed`);
    }
    case 'error-rate': {
      const short = canaryShort();
      if (short) return unsure(short);
      return judge(errorRate(canary), `canary error rate ${(errorRate(canary) * 100).toFixed(2)}%`);
    }
    case 'error-rate-delta': {
      const short = canaryShort() ?? baselineShort();
      if (short) return unsure(short);
      const delta = errorRate(canary) - errorRate(baseline);
      return judge(delta, `error rate ${(errorRate(canary) * 100).toFixed(2)}% vs ${(errorRate(baseline) * 100).toFixed(2)}% on the old version`);
    }
    case 'p95-latency-ratio': {
      const short = canaryShort() ?? baselineShort();
      if (short) return unsure(short);
      if (canary.p95LatencyMs === null || baseline.p95LatencyMs === null) return unsure('no latency measured');
      // A baseline of 0 ms (sub-resolution timers) would make any canary infinitely slower.
      const ratio = canary.p95LatencyMs / Math.max(baseline.p95LatencyMs, 0.001);
      return judge(ratio, `p95 latency ${canary.p95LatencyMs.toFixed(1)} ms vs ${baseline.p95LatencyMs.toFixed(1)} ms (x${ratio.toFixed(2)})`);
    }
    case 'p95-latency-ms': {
      const short = canaryShort();
      if (short) return unsure(short);
      if (canary.p95LatencyMs === null) return unsure('no latency measured');
      return judge(canary.p95LatencyMs, `canary p95 latency ${canary.p95LatencyMs.toFixed(1)} ms`);
    }
    case 'accuracy-delta': {
      const c = canary.labeled;
      const b = baseline.labeled;
      if (!c || !b || c.total < limits.minInferences || b.total < limits.minInferences) return unsure('too few labelled inferences');
      const delta = c.correct / c.total - b.correct / b.total;
      return judge(delta, `accuracy ${((c.correct / c.total) * 100).toFixed(2)}% vs ${((b.correct / b.total) * 100).toFixed(2)}%`);
    }
    case 'drift': {
      if (obs.drift === undefined) return unsure('no drift status for the new version');
      return judge(DRIFT_LEVEL[obs.drift], `drift status ${obs.drift}`);
    }
  }
}
