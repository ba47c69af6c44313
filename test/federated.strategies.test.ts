import { describe, expect, it } from 'vitest';
import { createStrategy, strategySpec, validateStrategy } from '../control-plane/federated/strategies/create-strategy.js';
import type { ClientUpdate, ServerStrategy } from '../control-plane/federated/strategies/strategy.js';
import { seededRandom } from '../common/seeded-random.js';

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
};

const LENGTH = 37;

function updates(count: number, seed: number): ClientUpdate[] {
  const rng = seededRandom(seed);
  return Array.from({ length: count }, (_, c) => ({
    deviceId: `dev-${c}`,
    sampleCount: 1 + rng.int(200),
    delta: Float32Array.from({ length: LENGTH }, () => rng.normal(0, 0.1)),
    staleness: 0,
  }));
}

/** The reference: Σ nᵢ Δᵢ / Σ nᵢ, written as plain loops over plain arrays. */
function referenceWeightedMean(list: ClientUpdate[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < LENGTH; i++) {
    let num = 0;
    let den = 0;
    for (const u of list) {
      num += u.sampleCount * u.delta[i]!;
      den += u.sampleCount;
    }
    out.push(num / den);
  }
  return out;
}

function aggregate(strategy: ServerStrategy, list: ClientUpdate[]): Float32Array {
  const aggregator = strategy.createAggregator(LENGTH);
  for (const u of list) aggregator.add(u);
  return aggregator.finish();
}

const closeTo = (actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number): void => {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) expect(Math.abs(actual[i]! - expected[i]!)).toBeLessThanOrEqual(tolerance);
};

describe('federated strategies: averaging and server optimizers', () => {
  it('fedavg - aggregates to the sample-weighted mean computed independently, and adds it to the head', () => {
    const list = updates(25, 1);
    const strategy = createStrategy(strategySpec('fedavg'));
    const aggregated = aggregate(strategy, list);
    closeTo(aggregated, referenceWeightedMean(list), 1e-7);
    const global = Float32Array.from({ length: LENGTH }, (_, i) => i / 10);
    const { global: next } = strategy.apply(global, aggregated, strategy.initialState(LENGTH));
    closeTo(
      next,
      Array.from(global, (g, i) => g + aggregated[i]!),
      1e-6,
    );
    expect(Array.from(global.slice(0, 3))).toEqual([0, Math.fround(0.1), Math.fround(0.2)]);
  });

  it('fedavg - streams: holds the same bytes after 10 or 1,000 updates', () => {
    const strategy = createStrategy(strategySpec('fedavg'));
    expect(strategy.holdsEveryUpdate).toBe(false);
    const small = strategy.createAggregator(LENGTH);
    for (const u of updates(10, 2)) small.add(u);
    const large = strategy.createAggregator(LENGTH);
    for (const u of updates(1000, 3)) large.add(u);
    expect(large.count).toBe(1000);
    expect(large.heldBytes).toBe(small.heldBytes);
    expect(large.heldBytes).toBeLessThanOrEqual(LENGTH * 8);
  });

  it('fedavg - refuses an update of the wrong length or without samples, and a finish with nothing', () => {
    const aggregator = createStrategy(strategySpec('fedavg')).createAggregator(LENGTH);
    const [u] = updates(1, 4);
    expect(codeOf(() => aggregator.add({ ...u!, delta: new Float32Array(LENGTH + 1) }))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => aggregator.add({ ...u!, sampleCount: 0 }))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(codeOf(() => aggregator.finish())).toBe('FEDERATED_NO_QUORUM');
  });

  it('fedprox - the server step is fedavg, the proximal term comes from the spec for the devices', () => {
    const list = updates(8, 5);
    const fedprox = createStrategy(strategySpec('fedprox', { proximalMu: 0.01 }));
    expect(fedprox.proximalMu).toBe(0.01);
    expect(createStrategy(strategySpec('fedavg')).proximalMu).toBe(0);
    expect(Array.from(aggregate(fedprox, list))).toEqual(Array.from(aggregate(createStrategy(strategySpec('fedavg')), list)));
  });

  it('fedavgm - carries server momentum between rounds as v ← βv + Δ, x ← x + ηv', () => {
    const strategy = createStrategy(strategySpec('fedavgm', { serverLearningRate: 0.5, serverMomentum: 0.8 }));
    let global: Float32Array = new Float32Array(LENGTH);
    let state = strategy.initialState(LENGTH);
    const velocity = new Array<number>(LENGTH).fill(0);
    const expected = new Array<number>(LENGTH).fill(0);
    for (let round = 0; round < 3; round++) {
      const aggregated = aggregate(strategy, updates(6, 10 + round));
      ({ global, state } = strategy.apply(global, aggregated, state));
      for (let i = 0; i < LENGTH; i++) {
        velocity[i] = 0.8 * velocity[i]! + aggregated[i]!;
        expected[i] = Math.fround(expected[i]! + 0.5 * velocity[i]!);
      }
    }
    closeTo(global, expected, 1e-6);
  });

  for (const name of ['fedadam', 'fedyogi'] as const) {
    it(`${name} - follows Reddi et al.'s update, and its state round-trips through JSON to the same next step`, () => {
      const strategy = createStrategy(strategySpec(name));
      const [eta, beta1, beta2, tau] = name === 'fedadam' ? [0.1, 0.9, 0.99, 1e-9] : [0.01, 0.9, 0.99, 1e-3];
      let global: Float32Array = new Float32Array(LENGTH);
      let state = strategy.initialState(LENGTH);
      const m = new Array<number>(LENGTH).fill(0);
      const v = new Array<number>(LENGTH).fill(tau * tau);
      const x = new Array<number>(LENGTH).fill(0);
      for (let round = 0; round < 4; round++) {
        const d = aggregate(strategy, updates(5, 20 + round));
        ({ global, state } = strategy.apply(global, d, state));
        for (let i = 0; i < LENGTH; i++) {
          m[i] = beta1 * m[i]! + (1 - beta1) * d[i]!;
          const d2 = d[i]! * d[i]!;
          v[i] = name === 'fedadam' ? beta2 * v[i]! + (1 - beta2) * d2 : v[i]! - (1 - beta2) * d2 * Math.sign(v[i]! - d2);
          x[i] = Math.fround(x[i]! + (eta * m[i]!) / (Math.sqrt(v[i]!) + tau));
        }
      }
      closeTo(global, x, 1e-6);

      const d = aggregate(strategy, updates(5, 99));
      const direct = strategy.apply(global, d, state);
      const restarted = createStrategy(strategySpec(name)).apply(global, d, JSON.parse(JSON.stringify(state)) as Record<string, unknown>);
      expect(Array.from(restarted.global)).toEqual(Array.from(direct.global));
      expect(JSON.stringify(restarted.state)).toBe(JSON.stringify(direct.state));
    });
  }

  it('server state - a stored state that does not fit the head is refused, not used', () => {
    const strategy = createStrategy(strategySpec('fedadam'));
    const state = strategy.initialState(LENGTH);
    const d = new Float32Array(LENGTH);
    expect(codeOf(() => strategy.apply(new Float32Array(LENGTH), d, { ...state, m: [1, 2] }))).toBe('FEDERATED_STATE_INVALID');
    expect(codeOf(() => strategy.apply(new Float32Array(LENGTH), d, { ...state, steps: -1 }))).toBe('FEDERATED_STATE_INVALID');
    expect(codeOf(() => strategy.apply(new Float32Array(LENGTH), new Float32Array(3), state))).toBe('FEDERATED_UPDATE_SHAPE');
  });
});

describe('federated strategies: the factory and the validator', () => {
  const sizes = { clientsPerRound: 10, minClients: 8 };

  it('factory - makes every strategy the proto names, with the defaults filled in', () => {
    for (const name of ['fedavg', 'fedavgm', 'fedadam', 'fedyogi', 'median', 'trimmed-mean', 'krum', 'multi-krum']) {
      const spec = strategySpec(name, name.includes('krum') ? { byzantineClients: 1 } : name === 'trimmed-mean' ? { trimFraction: 0.2 } : {});
      validateStrategy(spec, sizes);
      const strategy = createStrategy(spec);
      expect(strategy.name).toBe(name);
      expect(strategy.holdsEveryUpdate).toBe(['median', 'trimmed-mean', 'krum', 'multi-krum'].includes(name));
    }
    expect(createStrategy(strategySpec('fedprox', { proximalMu: 0.1 })).name).toBe('fedprox');
  });

  it('validator - refuses invalid settings with FEDERATED_TASK_INVALID naming the field', () => {
    const refusal = (spec: ReturnType<typeof strategySpec>, s = sizes): string => {
      try {
        validateStrategy(spec, s);
      } catch (err) {
        return `${(err as { code: string }).code}: ${(err as Error).message}`;
      }
      return 'accepted';
    };
    const cases: [ReturnType<typeof strategySpec>, string][] = [
      [strategySpec('fedsgd'), 'strategy.name'],
      [strategySpec('fedadam', { serverLearningRate: -1 }), 'strategy.server_learning_rate'],
      [strategySpec('fedadam', { serverLearningRate: NaN }), 'strategy.server_learning_rate'],
      [strategySpec('fedadam', { serverLearningRate: 50 }), 'strategy.server_learning_rate'],
      [strategySpec('fedavgm', { serverMomentum: 1 }), 'strategy.server_momentum'],
      [strategySpec('fedyogi', { beta2: 1.5 }), 'strategy.beta2'],
      [strategySpec('fedadam', { tau: 2 }), 'strategy.tau'],
      [strategySpec('fedprox'), 'strategy.proximal_mu'],
      [strategySpec('fedavg', { proximalMu: 0.1 }), 'strategy.proximal_mu'],
      [strategySpec('krum', { trimFraction: 0.1, byzantineClients: 1 }), 'strategy.trim_fraction'],
      [strategySpec('trimmed-mean', { trimFraction: 0.5 }), 'strategy.trim_fraction'],
      [strategySpec('trimmed-mean', { trimFraction: 0.1 }), 'strategy.trim_fraction'],
      [strategySpec('krum', { byzantineClients: 3 }), 'strategy.byzantine_clients'],
      [strategySpec('krum', { byzantineClients: 1.5 }), 'strategy.byzantine_clients'],
      [strategySpec('multi-krum', { byzantineClients: 2, krumSelected: 7 }), 'strategy.krum_selected'],
      [strategySpec('krum', { byzantineClients: 1, krumSelected: 2 }), 'strategy.krum_selected'],
    ];
    for (const [spec, field] of cases) {
      const got = refusal(spec);
      expect(got.startsWith('FEDERATED_TASK_INVALID'), `${JSON.stringify(spec)} → ${got}`).toBe(true);
      expect(got).toContain(field);
    }
    // Krum at the quorum: n > 2f + 2 must hold for min_clients, the fewest updates a round may close with.
    expect(refusal(strategySpec('krum', { byzantineClients: 2 }), { clientsPerRound: 10, minClients: 7 })).toBe('accepted');
    expect(refusal(strategySpec('krum', { byzantineClients: 2 }), { clientsPerRound: 10, minClients: 6 })).toContain('strategy.byzantine_clients');
    expect(refusal(strategySpec('median'), { clientsPerRound: 5, minClients: 2 })).toContain('min_clients');
    expect(refusal(strategySpec('median'), { clientsPerRound: 2000, minClients: 10 })).toContain('clients_per_round');
    expect(refusal(strategySpec('fedavg'), { clientsPerRound: 2000, minClients: 10 })).toBe('accepted');
    expect(refusal(strategySpec('fedavg'), { clientsPerRound: 5, minClients: 10 })).toContain('clients_per_round');
    expect(codeOf(() => createStrategy(strategySpec('fedsgd')))).toBe('FEDERATED_TASK_INVALID');
  });
});
