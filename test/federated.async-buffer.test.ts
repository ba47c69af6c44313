import { describe, expect, it } from 'vitest';
import { AsyncUpdateBuffer, fedBuffStalenessWeight } from '../control-plane/federated/strategies/async-buffer.js';
import { createStrategy, strategySpec } from '../control-plane/federated/strategies/create-strategy.js';
import type { ClientUpdate } from '../control-plane/federated/strategies/strategy.js';
import { seededRandom } from '../common/seeded-random.js';

const LENGTH = 16;

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
};

function update(c: number, staleness: number, rng = seededRandom(c)): ClientUpdate {
  return { deviceId: `dev-${c}`, sampleCount: 10 + c, delta: Float32Array.from({ length: LENGTH }, () => rng.normal(0, 1)), staleness };
}

describe('federated async buffer (FedBuff)', () => {
  it('staleness weight - 1/√(1 + τ), 1 for a fresh update', () => {
    expect(fedBuffStalenessWeight(0)).toBe(1);
    expect(fedBuffStalenessWeight(3)).toBeCloseTo(0.5, 12);
    expect(fedBuffStalenessWeight(8)).toBeCloseTo(1 / 3, 12);
  });

  it('buffer - is ready every K updates and aggregates Σ nᵢ s(τᵢ) Δᵢ / Σ nᵢ, then starts empty', () => {
    const buffer = new AsyncUpdateBuffer(createStrategy(strategySpec('fedavg')), LENGTH, { bufferSize: 3, maxStaleness: 5 });
    const list = [update(1, 0), update(2, 3), update(3, 1)];
    for (const [i, u] of list.entries()) {
      expect(buffer.ready).toBe(false);
      expect(buffer.add(u)).toBeCloseTo(1 / Math.sqrt(1 + u.staleness), 12);
      expect(buffer.count).toBe(i + 1);
    }
    expect(buffer.ready).toBe(true);
    const { delta, updates, meanStaleness, maxStaleness } = buffer.flush();
    expect({ updates, meanStaleness, maxStaleness }).toEqual({ updates: 3, meanStaleness: 4 / 3, maxStaleness: 3 });
    for (let i = 0; i < LENGTH; i++) {
      let num = 0;
      let den = 0;
      for (const u of list) {
        num += u.sampleCount * (1 / Math.sqrt(1 + u.staleness)) * u.delta[i]!;
        den += u.sampleCount;
      }
      expect(delta[i]).toBeCloseTo(num / den, 5);
    }
    expect(buffer.count).toBe(0);
    expect(buffer.ready).toBe(false);
    expect(codeOf(() => buffer.flush())).toBe('FEDERATED_NO_QUORUM');
  });

  it('buffer - refuses an update older than max_staleness, from the future, or of the wrong shape, without buffering it', () => {
    const buffer = new AsyncUpdateBuffer(createStrategy(strategySpec('fedavg')), LENGTH, { bufferSize: 2, maxStaleness: 4 });
    expect(buffer.add(update(1, 4))).toBeCloseTo(1 / Math.sqrt(5), 12);
    expect(codeOf(() => buffer.add(update(2, 5)))).toBe('FEDERATED_UPDATE_STALE');
    expect(codeOf(() => buffer.add(update(2, -1)))).toBe('FEDERATED_UPDATE_UNEXPECTED');
    expect(codeOf(() => buffer.add({ ...update(2, 0), delta: new Float32Array(3) }))).toBe('FEDERATED_UPDATE_SHAPE');
    expect(buffer.count).toBe(1);
  });

  it('buffer - leaves the caller’s delta as it was, and works with a robust rule (scaled deltas, held)', () => {
    const buffer = new AsyncUpdateBuffer(createStrategy(strategySpec('median')), LENGTH, { bufferSize: 3, maxStaleness: 10 });
    const list = [update(1, 8), update(2, 8), update(3, 8)];
    const before = list.map((u) => Array.from(u.delta));
    for (const u of list) buffer.add(u);
    expect(buffer.heldBytes).toBe(3 * LENGTH * 4);
    const { delta } = buffer.flush();
    list.forEach((u, i) => expect(Array.from(u.delta)).toEqual(before[i]));
    for (let i = 0; i < LENGTH; i++) {
      const column = list.map((u) => u.delta[i]!).sort((a, b) => a - b);
      expect(delta[i]).toBeCloseTo(column[1]! / 3, 5);
    }
  });

  it('buffer - refuses settings that cannot work', () => {
    const fedavg = createStrategy(strategySpec('fedavg'));
    expect(codeOf(() => new AsyncUpdateBuffer(fedavg, LENGTH, { bufferSize: 0, maxStaleness: 1 }))).toBe('FEDERATED_TASK_INVALID');
    expect(codeOf(() => new AsyncUpdateBuffer(fedavg, LENGTH, { bufferSize: 2, maxStaleness: -1 }))).toBe('FEDERATED_TASK_INVALID');
  });
});
