import { describe, expect, it } from 'vitest';
import { createStrategy, strategySpec } from '../control-plane/federated/strategies/create-strategy.js';
import { KrumAggregator } from '../control-plane/federated/strategies/robust.js';
import type { ClientUpdate } from '../control-plane/federated/strategies/strategy.js';
import { seededRandom } from '../common/seeded-random.js';

const LENGTH = 50;
const HONEST = 10;
const ATTACKERS = 2;

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
};

/** Honest devices move the head the same way, each with its own noise. */
function honestUpdates(seed: number): { updates: ClientUpdate[]; mean: number[] } {
  const rng = seededRandom(seed);
  const direction = Array.from({ length: LENGTH }, () => rng.normal(0, 1));
  const updates = Array.from({ length: HONEST }, (_, c) => ({
    deviceId: `honest-${c}`,
    sampleCount: 50 + rng.int(50),
    delta: Float32Array.from(direction, (d) => d + rng.normal(0, 0.2)),
    staleness: 0,
  }));
  const mean = direction.map((_, i) => updates.reduce((s, u) => s + u.delta[i]!, 0) / HONEST);
  return { updates, mean };
}

const ATTACKS: Record<string, (honest: Float32Array, rng: ReturnType<typeof seededRandom>) => Float32Array> = {
  'scaled ×100': (h) => h.map((v) => v * 100),
  'sign-flipped': (h) => h.map((v) => -10 * v),
  'random noise': (h, rng) => h.map(() => rng.normal(0, 20)),
};

function poisoned(attack: string, seed: number): { updates: ClientUpdate[]; mean: number[] } {
  const rng = seededRandom(seed + 1000);
  const { updates, mean } = honestUpdates(seed);
  for (let a = 0; a < ATTACKERS; a++) {
    // Attackers also claim many samples: robust rules must not let that buy weight.
    updates.push({ deviceId: `attacker-${a}`, sampleCount: 10_000, delta: ATTACKS[attack]!(updates[a]!.delta, rng), staleness: 0 });
  }
  return { updates, mean };
}

const relativeError = (got: Float32Array, want: number[]): number => {
  let err = 0;
  let norm = 0;
  for (let i = 0; i < want.length; i++) {
    err += (got[i]! - want[i]!) ** 2;
    norm += want[i]! ** 2;
  }
  return Math.sqrt(err / norm);
};

function run(name: string, list: ClientUpdate[]): Float32Array {
  const spec = strategySpec(name, name === 'trimmed-mean' ? { trimFraction: 0.2 } : name.includes('krum') ? { byzantineClients: ATTACKERS } : {});
  const aggregator = createStrategy(spec).createAggregator(LENGTH);
  for (const u of list) aggregator.add(u);
  return aggregator.finish();
}

describe('federated robust aggregation: poisoned clients', () => {
  for (const attack of Object.keys(ATTACKS)) {
    it(`robust rules - stay close to the honest mean with ${ATTACKERS} of ${HONEST + ATTACKERS} clients ${attack}; fedavg does not`, () => {
      const { updates, mean } = poisoned(attack, 7);
      expect(relativeError(run('fedavg', updates), mean)).toBeGreaterThan(1);
      for (const name of ['median', 'trimmed-mean', 'krum', 'multi-krum']) {
        expect(relativeError(run(name, updates), mean), name).toBeLessThan(0.25);
      }
    });
  }

  it('krum - keeps an honest update, and multi-krum averages only honest ones', () => {
    for (const attack of Object.keys(ATTACKS)) {
      const { updates } = poisoned(attack, 11);
      const single = new KrumAggregator(LENGTH, ATTACKERS, 1);
      const multi = new KrumAggregator(LENGTH, ATTACKERS, 0);
      for (const u of updates) {
        single.add(u);
        multi.add(u);
      }
      const kept = single.finish();
      expect(single.selectedDevices).toHaveLength(1);
      expect(single.selectedDevices[0]).toMatch(/^honest-/);
      const chosen = updates.find((u) => u.deviceId === single.selectedDevices[0])!;
      expect(Array.from(kept)).toEqual(Array.from(chosen.delta));
      multi.finish();
      expect(multi.selectedDevices).toHaveLength(updates.length - ATTACKERS);
      expect(multi.selectedDevices.every((d) => d.startsWith('honest-'))).toBe(true);
    }
  });
});

describe('federated robust aggregation: the rules against references', () => {
  const rng = seededRandom(3);
  const list: ClientUpdate[] = Array.from({ length: 6 }, (_, c) => ({
    deviceId: `d${c}`,
    sampleCount: 1 + c,
    delta: Float32Array.from({ length: LENGTH }, () => rng.normal(0, 1)),
    staleness: 0,
  }));
  const column = (i: number): number[] => list.map((u) => u.delta[i]!).sort((a, b) => a - b);

  it('median - the middle of each coordinate (mean of the two middle values for an even count)', () => {
    const got = run('median', list);
    for (let i = 0; i < LENGTH; i++) {
      const c = column(i);
      expect(got[i]).toBeCloseTo((c[2]! + c[3]!) / 2, 6);
    }
    const odd = run('median', list.slice(0, 5));
    for (let i = 0; i < LENGTH; i++)
      expect(odd[i]).toBe(
        list
          .slice(0, 5)
          .map((u) => u.delta[i]!)
          .sort((a, b) => a - b)[2],
      );
  });

  it('trimmed mean - drops ⌊β·n⌋ from each side of each coordinate and averages the rest', () => {
    const aggregator = createStrategy(strategySpec('trimmed-mean', { trimFraction: 0.2 })).createAggregator(LENGTH);
    for (const u of list) aggregator.add(u);
    const got = aggregator.finish();
    for (let i = 0; i < LENGTH; i++) {
      const c = column(i).slice(1, 5); // ⌊0.2 × 6⌋ = 1 each side
      expect(got[i]).toBeCloseTo(c.reduce((a, b) => a + b, 0) / 4, 6);
    }
  });

  it('robust rules - say they hold every update, and how many bytes', () => {
    for (const name of ['median', 'trimmed-mean', 'krum', 'multi-krum']) {
      const strategy = createStrategy(strategySpec(name, name.includes('krum') ? { byzantineClients: 1 } : {}));
      expect(strategy.holdsEveryUpdate).toBe(true);
      const aggregator = strategy.createAggregator(LENGTH);
      for (const u of list) aggregator.add(u);
      expect(aggregator.heldBytes).toBe(list.length * LENGTH * 4);
    }
  });

  it('krum - refuses to aggregate a round with n ≤ 2f + 2 updates', () => {
    const aggregator = createStrategy(strategySpec('krum', { byzantineClients: 2 })).createAggregator(LENGTH);
    for (const u of list) aggregator.add(u);
    expect(codeOf(() => aggregator.finish())).toBe('FEDERATED_NO_QUORUM');
  });
});
