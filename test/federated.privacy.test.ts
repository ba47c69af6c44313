import { describe, expect, it } from 'vitest';
import type { FederatedPrivacy } from '../common/proto/driftline/v1/federated.js';
import { seededRandom, type SeededRandom } from '../common/seeded-random.js';
import { createPrivacyMechanism } from '../control-plane/federated/privacy/central-privacy.js';
import { clipToNorm, l2Norm, nextAdaptiveBound, updateNoiseMultiplier } from '../control-plane/federated/privacy/clipping.js';
import { addGaussianNoise, cryptoGaussian } from '../control-plane/federated/privacy/gaussian-noise.js';
import type { PrivacyMechanism, PrivacyState } from '../control-plane/federated/privacy/mechanism.js';
import { samplingRate, validatePrivacySettings } from '../control-plane/federated/privacy/privacy-settings.js';
import { epsilonAfterRounds } from '../control-plane/federated/privacy/rdp-accountant.js';

const privacy = (overrides: Partial<FederatedPrivacy>): FederatedPrivacy => ({
  mode: 'central-gaussian',
  clippingNorm: 1,
  adaptiveClipping: false,
  targetQuantile: 0,
  clippingLearningRate: 0,
  noiseMultiplier: 1.1,
  targetEpsilon: 5,
  delta: 1e-5,
  ...overrides,
});

const mechanismFor = (overrides: Partial<FederatedPrivacy>, clientsPerRound = 100): PrivacyMechanism =>
  createPrivacyMechanism(validatePrivacySettings(privacy(overrides), { clientsPerRound }));

/** A vector of the given L2 norm in a random direction. */
function vectorWithNorm(random: SeededRandom, length: number, norm: number): Float32Array {
  const v = Float32Array.from({ length }, () => random.normal());
  const scale = norm / l2Norm(v);
  return v.map((x) => x * scale);
}

function mean(values: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]!;
  return sum / values.length;
}

function stddev(values: ArrayLike<number>): number {
  const m = mean(values);
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += (values[i]! - m) ** 2;
  return Math.sqrt(sum / (values.length - 1));
}

const code = (c: string) => expect.objectContaining({ code: c });
const field = (c: string, f: string) => expect.objectContaining({ code: c, details: { field: f } });

describe('federated privacy - L2 clipping', () => {
  it('clip - brings an update above the bound to the bound without turning it', () => {
    const random = seededRandom(7);
    for (let trial = 0; trial < 200; trial++) {
      const length = 1 + random.int(2000);
      const delta = vectorWithNorm(random, length, random.uniform(1.5, 1e4));
      const bound = random.uniform(0.01, 1.4);
      const result = clipToNorm(delta, bound);
      expect(result.clipped).toBe(true);
      expect(result.norm).toBeCloseTo(l2Norm(delta), 6);
      const clippedNorm = l2Norm(result.delta);
      // Never above (the noise is calibrated to the bound), and within float32 rounding of it.
      expect(clippedNorm).toBeLessThanOrEqual(bound);
      expect(clippedNorm / bound).toBeGreaterThan(1 - 1e-5);
      let dot = 0;
      for (let i = 0; i < length; i++) dot += delta[i]! * result.delta[i]!;
      expect(dot / (l2Norm(delta) * clippedNorm)).toBeCloseTo(1, 5);
    }
  });

  it('clip - leaves an update within the bound, and every update with bound 0, as it is', () => {
    // 0.375 and 0.5 are exact in float32, so the norm is exactly 0.625.
    const delta = Float32Array.from([0.375, -0.5]);
    expect(clipToNorm(delta, 0.625)).toEqual({ delta, norm: 0.625, clipped: false });
    expect(clipToNorm(delta, 0.625).delta).toBe(delta);
    expect(clipToNorm(Float32Array.from([300, 400]), 0).clipped).toBe(false);
    expect(clipToNorm(new Float32Array(4), 1)).toMatchObject({ norm: 0, clipped: false });
  });

  it('clip - refuses an update with NaN or an infinite value', () => {
    expect(() => clipToNorm(Float32Array.from([1, Number.NaN]), 1)).toThrow(code('FEDERATED_UPDATE_NOT_FINITE'));
    expect(() => clipToNorm(Float32Array.from([Infinity, 0]), 1)).toThrow(code('FEDERATED_UPDATE_NOT_FINITE'));
  });

  it('clip - the mechanism clips to the bound its state holds', () => {
    const mechanism = mechanismFor({ clippingNorm: 2 });
    const state = mechanism.initialState();
    expect(mechanism.clippingNorm(state)).toBe(2);
    const result = mechanism.clip(Float32Array.from([6, 8]), state);
    expect(result).toMatchObject({ norm: 10, clipped: true });
    expect(Array.from(result.delta)).toEqual([expect.closeTo(1.2, 6), expect.closeTo(1.6, 6)]);
  });
});

describe('federated privacy - adaptive clipping', () => {
  it('adaptive - the geometric step shrinks the bound when too many updates fit, grows it when too few', () => {
    expect(nextAdaptiveBound(1, 0.9, 0.5, 0.2)).toBeCloseTo(Math.exp(-0.08), 12);
    expect(nextAdaptiveBound(1, 0.1, 0.5, 0.2)).toBeCloseTo(Math.exp(0.08), 12);
    expect(nextAdaptiveBound(1, 0.5, 0.5, 0.2)).toBe(1);
    expect(nextAdaptiveBound(3, Number.NaN, 0.5, 0.2)).toBe(3);
  });

  /** Runs `rounds` rounds of `clients` updates whose norms are uniform on [0, 10], returns the bounds. */
  function runAdaptive(mechanism: PrivacyMechanism, rounds: number, clients: number, seed: number): number[] {
    const random = seededRandom(seed);
    let state = mechanism.initialState();
    const bounds: number[] = [];
    for (let round = 0; round < rounds; round++) {
      let clipped = 0;
      for (let c = 0; c < clients; c++) {
        if (mechanism.clip(vectorWithNorm(random, 8, random.uniform(0, 10)), state).clipped) clipped++;
      }
      state = mechanism.afterRound(state, { aggregated: clients, clipped, samplingRate: 0.01 }, () => random.normal());
      bounds.push(mechanism.clippingNorm(state));
    }
    return bounds;
  }

  it.each([
    [0.5, 5],
    [0.9, 9],
    [0.2, 2],
  ])('adaptive - without noise, the bound settles at the %d-quantile of the update norms (%d)', (quantile, expected) => {
    const mechanism = mechanismFor({
      mode: 'none',
      noiseMultiplier: 0,
      targetEpsilon: 0,
      delta: 0,
      clippingNorm: 0.1,
      adaptiveClipping: true,
      targetQuantile: quantile,
    });
    const bounds = runAdaptive(mechanism, 300, 100, 11);
    expect(bounds[0]).toBeGreaterThan(0.1);
    expect(mean(bounds.slice(-100))).toBeGreaterThan(expected * 0.9);
    expect(mean(bounds.slice(-100))).toBeLessThan(expected * 1.1);
  });

  it('adaptive - with DP, the noised count still leads the bound to the median, starting above it', () => {
    const mechanism = mechanismFor({ clippingNorm: 50, adaptiveClipping: true, noiseMultiplier: 1, targetEpsilon: 1e9 });
    const bounds = runAdaptive(mechanism, 300, 100, 12);
    expect(bounds[0]).toBeLessThan(50);
    expect(mean(bounds.slice(-100))).toBeGreaterThan(4.5);
    expect(mean(bounds.slice(-100))).toBeLessThan(5.5);
  });

  it('adaptive - the update noise leaves room for the noised count: z_Δ⁻² + (2σ_b)⁻² = z⁻²', () => {
    const settings = validatePrivacySettings(privacy({ adaptiveClipping: true, noiseMultiplier: 1.2 }), { clientsPerRound: 100 });
    expect(settings.countNoiseStddev).toBe(5);
    expect(settings.updateNoiseMultiplier ** -2 + (2 * settings.countNoiseStddev) ** -2).toBeCloseTo(1.2 ** -2, 12);
    expect(updateNoiseMultiplier(2, 1)).toBe(Infinity);
  });
});

describe('federated privacy - the central Gaussian mechanism', () => {
  it('privatize - adds noise of standard deviation σ × bound per coordinate to the sum, then divides by m', () => {
    const random = seededRandom(3);
    const mechanism = mechanismFor({ clippingNorm: 2, noiseMultiplier: 1.5 }, 1);
    const noised = mechanism.privatize(new Float32Array(40_000), 1, mechanism.initialState(), () => random.normal());
    expect(Math.abs(mean(noised))).toBeLessThan(0.05);
    expect(stddev(noised)).toBeGreaterThan(3 * 0.97);
    expect(stddev(noised)).toBeLessThan(3 * 1.03);

    const m = 50;
    const perClient = mechanismFor({ clippingNorm: 2, noiseMultiplier: 1.5 }, m);
    const sum = new Float32Array(40_000).fill(10);
    const averaged = perClient.privatize(sum, m, perClient.initialState(), () => random.normal());
    expect(mean(averaged)).toBeCloseTo(10 / m, 2);
    expect(stddev(averaged) / (3 / m)).toBeCloseTo(1, 1);
    // The sum is the aggregator's: privatize leaves it untouched.
    expect(sum.every((x) => x === 10)).toBe(true);
  });

  it('privatize - with adaptive clipping, the update noise uses z_Δ times the current bound', () => {
    const random = seededRandom(4);
    const settings = validatePrivacySettings(privacy({ clippingNorm: 1, adaptiveClipping: true, noiseMultiplier: 1 }), { clientsPerRound: 40 });
    const mechanism = createPrivacyMechanism(settings);
    const noised = mechanism.privatize(new Float32Array(40_000), 1, mechanism.initialState(), () => random.normal());
    expect(stddev(noised) / settings.updateNoiseMultiplier).toBeGreaterThan(0.97);
    expect(stddev(noised) / settings.updateNoiseMultiplier).toBeLessThan(1.03);
    expect(settings.updateNoiseMultiplier).toBeGreaterThan(1);
  });

  it('privatize - without DP it is the fixed-denominator mean, no noise drawn', () => {
    const mechanism = mechanismFor({ mode: 'none', clippingNorm: 1, noiseMultiplier: 0, targetEpsilon: 0, delta: 0 }, 4);
    const out = mechanism.privatize(Float32Array.from([4, 8]), 4, mechanism.initialState(), () => {
      throw new Error('no noise without DP');
    });
    expect(Array.from(out)).toEqual([1, 2]);
    expect(mechanism.spent(mechanism.initialState())).toEqual({ epsilon: 0, delta: 0 });
    expect(mechanism.wouldExceedBudget(mechanism.initialState(), 1)).toBe(false);
  });

  it('addGaussianNoise - with standard deviation 0 adds nothing, and refuses a negative or infinite one', () => {
    const values = Float32Array.from([1, 2]);
    expect(Array.from(addGaussianNoise(values, 0, () => 1))).toEqual([1, 2]);
    expect(() => addGaussianNoise(values, -1, () => 1)).toThrow(code('INTERNAL'));
    expect(() => addGaussianNoise(values, Infinity, () => 1)).toThrow(code('INTERNAL'));
  });

  it('cryptoGaussian - draws standard normals from the system CSPRNG', () => {
    const gaussian = cryptoGaussian();
    const draws = Float64Array.from({ length: 200_000 }, () => gaussian());
    expect(draws.every((x) => Number.isFinite(x))).toBe(true);
    expect(Math.abs(mean(draws))).toBeLessThan(0.01);
    expect(Math.abs(stddev(draws) - 1)).toBeLessThan(0.01);
    // Tails where a standard normal puts them: P(|x| > 2) ≈ 4.55 %, P(|x| > 3) ≈ 0.27 %.
    expect(draws.filter((x) => Math.abs(x) > 2).length / draws.length).toBeCloseTo(0.0455, 2);
    expect(draws.filter((x) => Math.abs(x) > 3).length / draws.length).toBeCloseTo(0.0027, 3);
    // Two sources share nothing.
    const other = cryptoGaussian();
    expect(Array.from({ length: 4 }, () => other())).not.toEqual(Array.from(draws.slice(0, 4)));
  });
});

describe('federated privacy - the budget', () => {
  it('budget - stops the task at the last round that stays within target ε, reporting ε per round', () => {
    const q = 0.05;
    const target = 2;
    const mechanism = mechanismFor({ noiseMultiplier: 1.1, targetEpsilon: target, delta: 1e-5 });
    let state = mechanism.initialState();
    const reported: number[] = [];
    while (!mechanism.wouldExceedBudget(state, q)) {
      state = mechanism.afterRound(state, { aggregated: 100, clipped: 30, samplingRate: q }, () => 0);
      reported.push(mechanism.spent(state).epsilon);
      expect(reported.length).toBeLessThan(10_000);
    }
    const rounds = reported.length;
    // The same figures computed independently, round by round.
    expect(rounds).toBeGreaterThan(1);
    reported.forEach((epsilon, i) => expect(epsilon).toBeCloseTo(epsilonAfterRounds(1.1, q, i + 1, 1e-5).epsilon, 10));
    expect(reported[rounds - 1]).toBeLessThanOrEqual(target);
    expect(epsilonAfterRounds(1.1, q, rounds + 1, 1e-5).epsilon).toBeGreaterThan(target);
    expect(mechanism.spent(state).delta).toBe(1e-5);
    expect(state).toMatchObject({ rounds });
  });

  it('budget - accounts each round at its own sampling rate when the cohort changes size', () => {
    const mechanism = mechanismFor({});
    let state = mechanism.initialState();
    state = mechanism.afterRound(state, { aggregated: 10, clipped: 0, samplingRate: 0.01 }, () => 0);
    const afterSmall = mechanism.spent(state).epsilon;
    state = mechanism.afterRound(state, { aggregated: 10, clipped: 0, samplingRate: 0.2 }, () => 0);
    expect(mechanism.spent(state).epsilon).toBeGreaterThan(afterSmall);
    expect(mechanism.spent(state).epsilon).toBeLessThan(epsilonAfterRounds(1.1, 0.2, 2, 1e-5).epsilon);
    expect(mechanism.spent(state).epsilon).toBeGreaterThan(epsilonAfterRounds(1.1, 0.01, 2, 1e-5).epsilon);
  });

  it('budget - refuses at start a target ε that not even one round fits', () => {
    expect(() => validatePrivacySettings(privacy({ noiseMultiplier: 0.5, targetEpsilon: 0.1 }), { clientsPerRound: 10, samplingRate: 0.5 })).toThrow(
      field('FEDERATED_TASK_INVALID', 'privacy.target_epsilon'),
    );
    expect(validatePrivacySettings(privacy({ noiseMultiplier: 0.5, targetEpsilon: 0.1 }), { clientsPerRound: 10 }).targetEpsilon).toBe(0.1);
  });
});

describe('federated privacy - state', () => {
  it('state - round-trips through JSON and a restarted mechanism carries on with the same accounting', () => {
    const random = seededRandom(5);
    const settings = validatePrivacySettings(privacy({ adaptiveClipping: true, clippingNorm: 1, noiseMultiplier: 1 }), { clientsPerRound: 50 });
    const before = createPrivacyMechanism(settings);
    let state: PrivacyState = before.initialState();
    for (let round = 0; round < 3; round++) state = before.afterRound(state, { aggregated: 50, clipped: 40, samplingRate: 0.1 }, () => random.normal());
    const stored = JSON.parse(JSON.stringify(state)) as PrivacyState;
    expect(stored).toEqual(state);

    const after = createPrivacyMechanism(settings);
    expect(after.clippingNorm(stored)).toBe(before.clippingNorm(state));
    expect(after.clippingNorm(stored)).toBeGreaterThan(1);
    expect(after.spent(stored)).toEqual(before.spent(state));
    const next = after.afterRound(stored, { aggregated: 50, clipped: 25, samplingRate: 0.1 }, () => 0);
    expect(after.spent(next).epsilon).toBeCloseTo(epsilonAfterRounds(1, 0.1, 4, 1e-5).epsilon, 10);
  });

  it('state - an order whose RDP is infinite is stored as null and read back as infinite', () => {
    const mechanism = mechanismFor({});
    const state = { version: 1, clippingNorm: 1, rounds: 1, orders: [2, 3], rdp: [null, 0.01] };
    const stored = JSON.parse(JSON.stringify(mechanism.afterRound(state, { aggregated: 1, clipped: 0, samplingRate: 0.01 }, () => 0))) as { rdp: unknown[] };
    expect(stored.rdp[0]).toBeNull();
    expect(stored.rdp[1]).toBeGreaterThan(0.01);
    expect(Number.isFinite(mechanism.spent(stored).epsilon)).toBe(true);
  });

  it.each([
    ['no version', { clippingNorm: 1, rounds: 0, orders: [2], rdp: [0] }],
    ['a negative bound', { version: 1, clippingNorm: -1, rounds: 0, orders: [2], rdp: [0] }],
    ['fractional rounds', { version: 1, clippingNorm: 1, rounds: 1.5, orders: [2], rdp: [0] }],
    ['an order of 1', { version: 1, clippingNorm: 1, rounds: 0, orders: [1], rdp: [0] }],
    ['one RDP value short', { version: 1, clippingNorm: 1, rounds: 0, orders: [2, 3], rdp: [0] }],
    ['a negative RDP value', { version: 1, clippingNorm: 1, rounds: 0, orders: [2], rdp: [-0.1] }],
    ['a string for RDP', { version: 1, clippingNorm: 1, rounds: 0, orders: [2], rdp: ['0'] }],
  ])('state - refuses a stored state with %s rather than starting the accounting over', (_name, state) => {
    const mechanism = mechanismFor({});
    expect(() => mechanism.spent(state as PrivacyState)).toThrow(code('FEDERATED_PRIVACY_STATE_INVALID'));
    expect(() => mechanism.clip(new Float32Array(2), state as PrivacyState)).toThrow(code('FEDERATED_PRIVACY_STATE_INVALID'));
  });

  it('afterRound - refuses counts that cannot be (more clipped than aggregated, negative, a rate above 1)', () => {
    const mechanism = mechanismFor({});
    const state = mechanism.initialState();
    expect(() => mechanism.afterRound(state, { aggregated: 2, clipped: 3, samplingRate: 0.1 }, () => 0)).toThrow(code('INTERNAL'));
    expect(() => mechanism.afterRound(state, { aggregated: -1, clipped: 0, samplingRate: 0.1 }, () => 0)).toThrow(code('INTERNAL'));
    expect(() => mechanism.afterRound(state, { aggregated: 2, clipped: 0, samplingRate: 1.5 }, () => 0)).toThrow(code('INTERNAL'));
    expect(() => mechanism.wouldExceedBudget(state, Number.NaN)).toThrow(code('INTERNAL'));
    expect(() => mechanism.privatize(new Float32Array(1), 0, state, () => 0)).toThrow(code('INTERNAL'));
  });
});

describe('federated privacy - settings', () => {
  it('settings - fill the defaults of the optional numbers and treat no privacy as mode none', () => {
    const settings = validatePrivacySettings(privacy({ adaptiveClipping: true }), { clientsPerRound: 100 });
    expect(settings).toMatchObject({ mode: 'central-gaussian', targetQuantile: 0.5, clippingLearningRate: 0.2, expectedClients: 100 });
    expect(Object.isFrozen(settings)).toBe(true);
    expect(validatePrivacySettings(undefined, { clientsPerRound: 5 })).toMatchObject({ mode: 'none', clippingNorm: 0, noiseMultiplier: 0 });
    expect(
      validatePrivacySettings(privacy({ mode: '', noiseMultiplier: 0, targetEpsilon: 0, delta: 0, clippingNorm: 3 }), { clientsPerRound: 5 }),
    ).toMatchObject({
      mode: 'none',
      clippingNorm: 3,
    });
  });

  it.each([
    ['an unknown mode', { mode: 'local-laplace' }, 'privacy.mode'],
    ['central-gaussian without a bound', { clippingNorm: 0 }, 'privacy.clipping_norm'],
    ['a negative bound', { mode: 'none', clippingNorm: -1, noiseMultiplier: 0, targetEpsilon: 0, delta: 0 }, 'privacy.clipping_norm'],
    [
      'adaptive clipping without a starting bound',
      { mode: 'none', clippingNorm: 0, adaptiveClipping: true, noiseMultiplier: 0, targetEpsilon: 0, delta: 0 },
      'privacy.clipping_norm',
    ],
    ['no noise', { noiseMultiplier: 0 }, 'privacy.noise_multiplier'],
    ['a NaN noise multiplier', { noiseMultiplier: Number.NaN }, 'privacy.noise_multiplier'],
    ['no budget', { targetEpsilon: 0 }, 'privacy.target_epsilon'],
    ['an infinite budget', { targetEpsilon: Infinity }, 'privacy.target_epsilon'],
    ['δ = 0', { delta: 0 }, 'privacy.delta'],
    ['δ = 1', { delta: 1 }, 'privacy.delta'],
    ['a target quantile of 1', { targetQuantile: 1 }, 'privacy.target_quantile'],
    ['a negative clipping learning rate', { clippingLearningRate: -0.1 }, 'privacy.clipping_learning_rate'],
    ['noise set while mode is none', { mode: 'none', noiseMultiplier: 1, targetEpsilon: 0, delta: 0 }, 'privacy.noise_multiplier'],
    ['a budget set while mode is none', { mode: 'none', noiseMultiplier: 0, targetEpsilon: 3, delta: 0 }, 'privacy.target_epsilon'],
    ['δ set while mode is none', { mode: 'none', noiseMultiplier: 0, targetEpsilon: 0, delta: 1e-5 }, 'privacy.delta'],
    ['adaptive clipping with too few clients for its noise', { adaptiveClipping: true, noiseMultiplier: 2 }, 'privacy.noise_multiplier'],
  ] as const)('settings - refuse %s, naming the field', (_name, overrides, expectedField) => {
    expect(() => validatePrivacySettings(privacy(overrides), { clientsPerRound: 20 })).toThrow(field('FEDERATED_TASK_INVALID', expectedField));
  });

  it('settings - refuse a task without clients per round, or a sampling rate outside (0, 1]', () => {
    expect(() => validatePrivacySettings(privacy({}), { clientsPerRound: 0 })).toThrow(field('FEDERATED_TASK_INVALID', 'clients_per_round'));
    expect(() => validatePrivacySettings(privacy({}), { clientsPerRound: 10, samplingRate: 0 })).toThrow(field('FEDERATED_TASK_INVALID', 'clients_per_round'));
    expect(() => validatePrivacySettings(privacy({}), { clientsPerRound: 10, samplingRate: 1.2 })).toThrow(
      field('FEDERATED_TASK_INVALID', 'clients_per_round'),
    );
  });

  it('samplingRate - is devices invited per round over eligible devices, at most 1', () => {
    expect(samplingRate(13, 1000)).toBeCloseTo(0.013, 15);
    expect(samplingRate(130, 100)).toBe(1);
    expect(() => samplingRate(10, 0)).toThrow(code('FEDERATED_NO_CLIENTS'));
    expect(() => samplingRate(0, 10)).toThrow(code('FEDERATED_TASK_INVALID'));
  });
});
