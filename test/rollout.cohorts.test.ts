import { describe, expect, it } from 'vitest';
import { cohortFraction, cohortOrder, constraintsFromMetadata, incompatibility, waveSizes } from '../control-plane/rollout/cohorts.js';
import { wavesFrom } from '../control-plane/rollout/plan.js';

const ids = Array.from({ length: 1000 }, (_, i) => `dev-${i}`);

describe('rollout cohorts', () => {
  it('rollout - gives every device the same fraction in [0, 1) for the same rollout, and another for another rollout', () => {
    const a = ids.map((id) => cohortFraction('ro_1', id));
    expect(ids.map((id) => cohortFraction('ro_1', id))).toEqual(a);
    expect(a.every((f) => f >= 0 && f < 1)).toBe(true);
    expect(ids.map((id) => cohortFraction('ro_2', id))).not.toEqual(a);
  });

  it('rollout - spreads devices evenly enough that a 10% wave holds about a tenth of the fleet', () => {
    const sizes = waveSizes('ro_1', cohortOrder('ro_1', ids), wavesFrom([10, 50, 100], 0, 1));
    expect(sizes[0]).toBeGreaterThan(70);
    expect(sizes[0]).toBeLessThan(130);
    expect(sizes[1]).toBeGreaterThan(440);
    expect(sizes[1]).toBeLessThan(560);
    expect(sizes[2]).toBe(1000);
  });

  it('rollout - nests waves: every device of a wave is in each later wave, whatever order the devices came in', () => {
    const order = cohortOrder('ro_x', ids);
    expect(cohortOrder('ro_x', [...ids].reverse())).toEqual(order);
    const sizes = waveSizes('ro_x', order, wavesFrom([1, 10, 50, 100], 0, 1));
    for (let k = 1; k < sizes.length; k++) expect(sizes[k]).toBeGreaterThanOrEqual(sizes[k - 1]!);
    const fractions = order.map((id) => cohortFraction('ro_x', id));
    expect(fractions).toEqual([...fractions].sort((a, b) => a - b));
  });

  it('rollout - tops a small wave up to its minimum device count, never beyond the fleet', () => {
    const few = ids.slice(0, 20);
    expect(waveSizes('ro_1', cohortOrder('ro_1', few), wavesFrom([1, 100], 0, 5))).toEqual([5, 20]);
    expect(waveSizes('ro_1', cohortOrder('ro_1', few.slice(0, 3)), wavesFrom([1, 100], 0, 5))).toEqual([3, 3]);
  });

  it('rollout - targets only devices whose profile and labels satisfy the model constraints', () => {
    const constraints = constraintsFromMetadata({ 'driftline.profiles': 'jetson-*, x86_64-nvidia-cuda12', 'driftline.labels': 'camera=rgb' });
    const device = (profile: string, labels: Record<string, string> = { camera: 'rgb' }) => ({ id: 'd', profile, labels });
    expect(incompatibility(constraints, device('jetson-orin-nano-jp6'))).toBeUndefined();
    expect(incompatibility(constraints, device('x86_64-nvidia-cuda12'))).toBeUndefined();
    expect(incompatibility(constraints, device('raspberry-pi-5'))).toMatch(/profile/);
    expect(incompatibility(constraints, device(''))).toMatch(/unknown/);
    expect(incompatibility(constraints, device('jetson-agx-orin-jp6', {}))).toMatch(/camera/);
    expect(incompatibility(constraintsFromMetadata({}), device(''))).toBeUndefined();
  });

  it("rollout - checks a signed manifest's hardware constraints against what the device's firmware profile says", () => {
    const hardware = { arch: 'arm64', providers: ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'], memoryBytes: 4 * 2 ** 30 };
    const device = (hw: typeof hardware | undefined) => ({ id: 'd', profile: 'jetson-orin-nano-jp6', labels: {}, hardware: hw });
    const needs = (c: { arch?: string[]; providers?: string[]; minMemoryBytes?: number }) => ({ profiles: [], labels: {}, ...c });
    expect(incompatibility(needs({ arch: ['arm64'], providers: ['CUDAExecutionProvider'], minMemoryBytes: 2 ** 30 }), device(hardware))).toBeUndefined();
    expect(incompatibility(needs({ arch: ['x86_64'] }), device(hardware))).toMatch(/arch arm64/);
    expect(incompatibility(needs({ providers: ['OpenVINOExecutionProvider'] }), device(hardware))).toMatch(/providers/);
    expect(incompatibility(needs({ minMemoryBytes: 8 * 2 ** 30 }), device(hardware))).toMatch(/memory/);
    // A device on a profile the control plane does not know cannot be shown to fit.
    expect(incompatibility(needs({ arch: ['arm64'] }), device(undefined))).toMatch(/not a known profile/);
    expect(incompatibility(needs({}), device(undefined))).toBeUndefined();
  });
});
