import { describe, expect, it } from 'vitest';
import { summaryLine } from '../cli/commands/rollout.js';
import { Rollout } from '../common/proto/driftline/v1/rollouts.js';

describe('rollout status --watch - the line it prints off a terminal', () => {
  it('shows the wave, the devices per version and the gate verdicts', () => {
    const r = Rollout.fromPartial({
      id: 'ro_1',
      state: 'progressing',
      wave: 1,
      waves: [{ percent: 50 }, { percent: 100 }],
      versions: { 2: 3, 1: 3 },
      lastEvaluation: [
        { gate: 'p95-latency-ratio<=1.5', verdict: 'pass' },
        { gate: 'error-rate-delta<=0.05', verdict: 'inconclusive' },
      ],
    });
    expect(summaryLine(r, Date.UTC(2026, 0, 1))).toBe(
      '2026-01-01T00:00:00.000Z ro_1 progressing wave 1/2 versions v2:3 v1:3 gates p95-latency-ratio<=1.5 pass, error-rate-delta<=0.05 inconclusive',
    );
  });

  it('says the gates are not judged yet before the first evaluation, and names devices on no version', () => {
    const r = Rollout.fromPartial({ id: 'ro_2', state: 'pending', wave: 0, waves: [{ percent: 100 }], versions: { 0: 2 } });
    expect(summaryLine(r, 0)).toBe('1970-01-01T00:00:00.000Z ro_2 pending wave 0/1 versions (none):2 gates not judged yet');
  });
});
