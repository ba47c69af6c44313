import { describe, expect, it } from 'vitest';
import { evaluateGates, type CohortStats, type Observation } from '../control-plane/rollout/gates.js';
import { DEFAULT_GATES, parseGate } from '../control-plane/rollout/plan.js';
import { DriftlineError } from '../common/errors.js';

const cohort = (over: Partial<CohortStats> = {}): CohortStats => ({
  devices: 10,
  devicesWithData: 10,
  inferences: 1000,
  errors: 10,
  p95LatencyMs: 20,
  ...over,
});
const observe = (over: Partial<Observation> = {}): Observation => ({
  install: { attempted: 10, installed: 10, failed: 0, pending: 0 },
  canary: cohort(),
  baseline: cohort({ devices: 90, devicesWithData: 90, inferences: 9000, errors: 90 }),
  ...over,
});
const limits = { minDevices: 5, minInferences: 50 };
const verdict = (gate: string, obs: Observation) => evaluateGates([parseGate(gate)], obs, limits).verdict;

describe('rollout gates', () => {
  it('rollout - passes when the new version behaves like the old one', () => {
    expect(evaluateGates(DEFAULT_GATES, observe(), limits)).toMatchObject({ verdict: 'pass', reason: '' });
  });

  it('rollout - fails the p95 latency gate when the canary is twice as slow', () => {
    const result = evaluateGates([parseGate('p95-latency-ratio<=1.5')], observe({ canary: cohort({ p95LatencyMs: 40 }) }), limits);
    expect(result.verdict).toBe('fail');
    expect(result.results[0]).toMatchObject({ value: 2, threshold: 1.5 });
  });

  it.each([
    // gate, canary/baseline or install, verdict
    ['p95-latency-ratio<=1.5', observe({ canary: cohort({ p95LatencyMs: 30 }) }), 'pass'], // exactly at the threshold
    ['p95-latency-ratio<=1.5', observe({ canary: cohort({ p95LatencyMs: 30.01 }) }), 'fail'],
    ['error-rate-delta<=0.05', observe({ canary: cohort({ errors: 60 }) }), 'pass'], // 6% - 1% = 0.05
    ['error-rate-delta<=0.05', observe({ canary: cohort({ errors: 61 }) }), 'fail'],
    ['error-rate<=0.01', observe(), 'pass'],
    ['install-failure-rate<=0.2', observe({ install: { attempted: 10, installed: 8, failed: 2, pending: 0 } }), 'pass'],
    ['install-failure-rate<=0.2', observe({ install: { attempted: 10, installed: 7, failed: 3, pending: 0 } }), 'fail'],
    ['p95-latency-ms<=20', observe(), 'pass'],
    [
      'accuracy-delta>=-0.02',
      observe({ canary: cohort({ labeled: { total: 100, correct: 88 } }), baseline: cohort({ labeled: { total: 100, correct: 90 } }) }),
      'pass',
    ],
    [
      'accuracy-delta>=-0.02',
      observe({ canary: cohort({ labeled: { total: 100, correct: 87 } }), baseline: cohort({ labeled: { total: 100, correct: 90 } }) }),
      'fail',
    ],
    ['drift', observe({ drift: 'warning' }), 'pass'],
    ['drift', observe({ drift: 'drift' }), 'fail'],
  ] as const)('rollout - judges %s on the table of values at and around the threshold (case %#)', (gate, obs, expected) => {
    expect(verdict(gate, obs)).toBe(expected);
  });

  it.each([
    ['p95-latency-ratio<=1.5', observe({ canary: cohort({ inferences: 49 }) })],
    ['p95-latency-ratio<=1.5', observe({ baseline: cohort({ inferences: 0, p95LatencyMs: null }) })],
    ['error-rate-delta<=0.05', observe({ canary: cohort({ devicesWithData: 4 }) })],
    ['install-failure-rate<=0.2', observe({ install: { attempted: 10, installed: 4, failed: 0, pending: 6 } })],
    ['accuracy-delta>=-0.02', observe()],
    ['drift', observe()],
  ] as const)('rollout - calls missing data inconclusive rather than passing it (case %#)', (gate, obs) => {
    expect(verdict(gate, obs)).toBe('inconclusive');
  });

  it('rollout - fails installs early when the failures alone already exceed the limit', () => {
    expect(verdict('install-failure-rate<=0.2', observe({ install: { attempted: 10, installed: 0, failed: 3, pending: 7 } }))).toBe('fail');
  });

  it('rollout - a failed gate outweighs an inconclusive one', () => {
    const result = evaluateGates([parseGate('drift'), parseGate('p95-latency-ratio<=1.5')], observe({ canary: cohort({ p95LatencyMs: 100 }) }), limits);
    expect(result.verdict).toBe('fail');
    expect(result.reason).toMatch(/p95-latency-ratio/);
  });

  it('rollout - refuses a gate it does not know', () => {
    expect(() => parseGate('latency<2')).toThrow(DriftlineError);
    try {
      parseGate('bogus<=1');
    } catch (err) {
      expect((err as DriftlineError).code).toBe('REQUEST_INVALID');
    }
  });
});
