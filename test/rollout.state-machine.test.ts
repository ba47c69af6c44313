import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import type { CohortStats, Observation } from '../control-plane/rollout/gates.js';
import { parsePlan, wavesFrom, type RolloutPlanInput } from '../control-plane/rollout/plan.js';
import { command, createRollout, dueForEvaluation, tick, touchedDevices, type Measurement, type Rollout } from '../control-plane/rollout/state-machine.js';

const MIN = 60_000;
const devices = Array.from({ length: 100 }, (_, i) => ({
  id: `dev-${String(i).padStart(3, '0')}`,
  labels: {},
  profile: i < 90 ? 'jetson-orin-nano-jp6' : 'raspberry-pi-5',
  activeVersion: 1,
}));
const constraints = { profiles: ['jetson-*'], labels: {} };

function plan(over: Partial<RolloutPlanInput> = {}) {
  return parsePlan({
    model: 'vibration',
    version: 2,
    waves: wavesFrom([5, 50, 100], 10 * MIN, 5),
    gates: [
      { metric: 'install-failure-rate', op: '<=', threshold: 0.2 },
      { metric: 'p95-latency-ratio', op: '<=', threshold: 1.5 },
      { metric: 'error-rate-delta', op: '<=', threshold: 0.05 },
    ],
    intervalMs: MIN,
    ...over,
  });
}

const cohort = (devicesN: number, p95: number, errors = 0): CohortStats => ({
  devices: devicesN,
  devicesWithData: devicesN,
  inferences: devicesN * 100,
  errors,
  p95LatencyMs: p95,
});
function healthy(r: Rollout, canaryP95 = 10, canaryErrors = 0): Measurement {
  const n = touchedDevices(r).length;
  const observation: Observation = {
    install: { attempted: n, installed: n, failed: 0, pending: 0 },
    canary: cohort(n, canaryP95, canaryErrors),
    baseline: cohort(r.targets.length - n, 10),
  };
  return { ok: true, observation };
}

function started(over: Partial<RolloutPlanInput> = {}, clock = new ManualClock()) {
  const created = createRollout({ id: 'ro_test', plan: plan(over), devices, constraints, nowMs: clock.now() });
  return { clock, created, first: tick(created.rollout, clock.now()) };
}

describe('rollout state machine', () => {
  it('rollout - targets only compatible devices and lists the incompatible ones', () => {
    const { created } = started();
    expect(created.rollout.state).toBe('pending');
    expect(created.rollout.targets).toHaveLength(90);
    expect(created.rollout.incompatible).toHaveLength(10);
    expect(created.rollout.incompatible[0]!.reason).toMatch(/raspberry-pi-5/);
    expect(created.rollout.baselineVersion).toBe(1);
  });

  it('rollout - starts the canary wave by deploying to its cohort only', () => {
    const { first } = started();
    expect(first.rollout).toMatchObject({ state: 'progressing', wave: 0 });
    expect(first.effects).toEqual([{ kind: 'deploy', wave: 0, deviceIds: touchedDevices(first.rollout) }]);
    expect(touchedDevices(first.rollout).length).toBeGreaterThanOrEqual(5);
    expect(touchedDevices(first.rollout).length).toBeLessThan(15);
  });

  it('rollout - waits out the bake before judging, then moves through every wave to succeeded', () => {
    const { clock, first } = started();
    let r = first.rollout;
    clock.advance(10 * MIN - 1);
    expect(dueForEvaluation(r, clock.now())).toBe(false);
    expect(tick(r, clock.now(), healthy(r)).rollout).toBe(r);
    const deployed: string[][] = [touchedDevices(r)];
    for (let wave = 0; wave < 3; wave++) {
      clock.advance(10 * MIN);
      expect(dueForEvaluation(r, clock.now())).toBe(true);
      const t = tick(r, clock.now(), healthy(r));
      for (const e of t.effects) if (e.kind === 'deploy') deployed.push(e.deviceIds);
      r = t.rollout;
    }
    expect(r.state).toBe('succeeded');
    // Each device is deployed exactly once, and together the waves cover every compatible device.
    expect(deployed.flat().sort()).toEqual([...r.targets].sort());
  });

  it('rollout - aborts at the canary when p95 latency doubles, rolling back only the canary', () => {
    const { clock, first } = started();
    clock.advance(10 * MIN);
    const t = tick(first.rollout, clock.now(), healthy(first.rollout, 20));
    expect(t.rollout).toMatchObject({ state: 'aborted', wave: 0 });
    expect(t.rollout.reason).toMatch(/p95-latency-ratio/);
    expect(t.effects).toEqual([
      { kind: 'rollback', reason: t.rollout.reason, devices: touchedDevices(first.rollout).map((deviceId) => ({ deviceId, toVersion: 1 })) },
    ]);
    expect(t.audit.at(-1)).toMatchObject({ action: 'auto-abort', fromState: 'progressing', toState: 'aborted' });
  });

  it('rollout - tolerates failed evaluations up to the failure limit, then aborts', () => {
    const { clock, first } = started({ failureLimit: 1 });
    clock.advance(10 * MIN);
    const once = tick(first.rollout, clock.now(), healthy(first.rollout, 10, 900));
    expect(once.rollout).toMatchObject({ state: 'progressing', failures: 1 });
    expect(once.audit[0]!.action).toBe('gates-failed');
    clock.advance(MIN - 1);
    expect(dueForEvaluation(once.rollout, clock.now())).toBe(false);
    clock.advance(1);
    const twice = tick(once.rollout, clock.now(), healthy(once.rollout, 10, 900));
    expect(twice.rollout.state).toBe('aborted');
  });

  it('rollout - a flapping metric that recovers within the failure limit lets the wave pass', () => {
    const { clock, first } = started({ failureLimit: 1 });
    clock.advance(10 * MIN);
    const bad = tick(first.rollout, clock.now(), healthy(first.rollout, 30));
    clock.advance(MIN);
    const good = tick(bad.rollout, clock.now(), healthy(bad.rollout, 10));
    expect(good.rollout).toMatchObject({ state: 'progressing', wave: 1, failures: 0 });
  });

  it('rollout - pauses with a reason when the data is inconclusive, and judges again after resume', () => {
    const { clock, first } = started();
    clock.advance(10 * MIN);
    const thin: Measurement = {
      ok: true,
      observation: {
        ...(healthy(first.rollout) as { observation: Observation }).observation,
        canary: { ...cohort(touchedDevices(first.rollout).length, 10), devicesWithData: 2 },
      },
    };
    const paused = tick(first.rollout, clock.now(), thin);
    expect(paused.rollout.state).toBe('paused');
    expect(paused.rollout.reason).toMatch(/^inconclusive: /);
    expect(paused.effects).toEqual([]);
    expect(tick(paused.rollout, clock.now() + MIN, healthy(first.rollout)).rollout).toBe(paused.rollout);
    const resumed = command(paused.rollout, 'resume', clock.now());
    expect(resumed.rollout.state).toBe('progressing');
    expect(tick(resumed.rollout, clock.now(), healthy(resumed.rollout)).rollout.wave).toBe(1);
  });

  it('rollout - aborts once the metrics source fails more often in a row than the consecutive-error limit', () => {
    const { clock, first } = started({ consecutiveErrorLimit: 2 });
    let r = first.rollout;
    clock.advance(10 * MIN);
    for (let i = 0; i < 2; i++) {
      r = tick(r, clock.now(), { ok: false, error: 'STORE_FAILED: locked' }).rollout;
      expect(r).toMatchObject({ state: 'progressing', consecutiveErrors: i + 1 });
      clock.advance(MIN);
    }
    const t = tick(r, clock.now(), { ok: false, error: 'STORE_FAILED: locked' });
    expect(t.rollout.state).toBe('aborted');
    expect(t.effects[0]!.kind).toBe('rollback');
  });

  it('rollout - compares the last wave with the old version as last measured when nobody is left on it', () => {
    const { clock, first } = started({ waves: wavesFrom([50, 100], 10 * MIN, 5) });
    clock.advance(10 * MIN);
    const wave2 = tick(first.rollout, clock.now(), healthy(first.rollout)).rollout;
    expect(wave2.wave).toBe(1);
    clock.advance(10 * MIN);
    const slow: Measurement = {
      ok: true,
      observation: {
        install: { attempted: 90, installed: 90, failed: 0, pending: 0 },
        canary: cohort(90, 25),
        baseline: { devices: 0, devicesWithData: 0, inferences: 0, errors: 0, p95LatencyMs: null },
      },
    };
    expect(tick(wave2, clock.now(), slow).rollout.state).toBe('aborted');
  });

  it('rollout - obeys pause, resume, promote and abort from an operator and refuses what the state does not allow', () => {
    const { clock, first } = started();
    const paused = command(first.rollout, 'pause', clock.now());
    expect(paused.rollout).toMatchObject({ state: 'paused', reason: 'paused by operator' });
    clock.advance(20 * MIN);
    expect(tick(paused.rollout, clock.now(), healthy(paused.rollout)).rollout).toBe(paused.rollout);
    const promoted = command(paused.rollout, 'promote', clock.now());
    expect(promoted.rollout).toMatchObject({ state: 'progressing', wave: 1 });
    expect(promoted.effects[0]).toMatchObject({ kind: 'deploy', wave: 1 });
    const aborted = command(promoted.rollout, 'abort', clock.now(), 'customer complaint');
    expect(aborted.rollout).toMatchObject({ state: 'aborted', reason: 'customer complaint' });
    expect(aborted.effects[0]).toMatchObject({ kind: 'rollback' });
    expect((aborted.effects[0] as { devices: unknown[] }).devices).toHaveLength(touchedDevices(promoted.rollout).length);
    for (const cmd of ['pause', 'resume', 'abort', 'promote'] as const) {
      expect(() => command(aborted.rollout, cmd, clock.now())).toThrow(DriftlineError);
    }
    expect(() => command(first.rollout, 'resume', clock.now())).toThrowError(expect.objectContaining({ code: 'ROLLOUT_STATE_INVALID' }));
  });

  it('rollout - refuses a plan with no compatible device', () => {
    expect(() => createRollout({ id: 'ro_none', plan: plan(), devices, constraints: { profiles: ['x86_64-*'], labels: {} }, nowMs: 0 })).toThrowError(
      expect.objectContaining({ code: 'ROLLOUT_NO_TARGETS' }),
    );
  });

  it('rollout - with requireMinDevices, refuses fewer compatible targets than the first wave needs (no canary) and counts the incompatible ones', () => {
    const compatible = devices.filter((d) => d.profile.startsWith('jetson-')).length;
    const tooMany = plan({ waves: wavesFrom([10, 100], 0, compatible + 1) });
    const constraints = { profiles: ['jetson-*'], labels: {} };
    expect(() => createRollout({ id: 'ro_small', plan: tooMany, devices, constraints, nowMs: 0, requireMinDevices: true })).toThrowError(
      expect.objectContaining({
        code: 'ROLLOUT_MIN_DEVICES_UNMET',
        details: { minDevices: compatible + 1, compatible, incompatible: devices.length - compatible },
      }),
    );
    // Without it (the CLI's default --min-devices) the first wave simply covers every target.
    const all = createRollout({ id: 'ro_small', plan: tooMany, devices, constraints, nowMs: 0 });
    expect(all.rollout.targets).toHaveLength(compatible);
    // Exactly enough devices is a canary of all of them, but allowed.
    expect(() =>
      createRollout({ id: 'ro_exact', plan: plan({ waves: wavesFrom([10, 100], 0, compatible) }), devices, constraints, nowMs: 0, requireMinDevices: true }),
    ).not.toThrow();
  });

  it('rollout - refuses waves that shrink or stop short of 100 percent', () => {
    expect(() => plan({ waves: wavesFrom([50, 10, 100], 0, 1) })).toThrowError(expect.objectContaining({ code: 'REQUEST_INVALID' }));
    expect(() => plan({ waves: wavesFrom([10, 50], 0, 1) })).toThrowError(expect.objectContaining({ code: 'REQUEST_INVALID' }));
  });
});
