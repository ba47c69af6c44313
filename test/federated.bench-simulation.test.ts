import { describe, expect, it } from 'vitest';
import { measurePeakRss, measureThroughput } from '../bench/federated/aggregation.js';
import {
  centralized,
  dirichletSplit,
  iidSplit,
  runAsync,
  runSync,
  stragglerDurations,
  syntheticDataset,
  type LocalTraining,
} from '../bench/federated/simulation.js';
import { createStrategy, strategySpec } from '../control-plane/federated/strategies/create-strategy.js';

// bench:federated's simulation at a tiny size, so it cannot rot: the numbers are not judged here
// beyond "it learns", the bench reports them.
const data = syntheticDataset({ features: 8, classes: 3, trainRows: 600, testRows: 300, seed: 3 });
const local: LocalTraining = { localEpochs: 2, batchSize: 16, learningRate: 0.05, optimizer: 'sgd', momentum: 0.9, l2: 1e-4 };
const fedavg = createStrategy(strategySpec('fedavg'));

describe('bench:federated simulation (tiny)', () => {
  it('splits - IID and Dirichlet deal every training row once; a small α skews the labels', () => {
    const iid = iidSplit(data.train, 10, 1);
    const skewed = dirichletSplit(data.train, 10, 0.1, 2);
    for (const split of [iid, skewed]) {
      expect(split.reduce((n, c) => n + c.rows, 0)).toBe(data.train.rows);
      expect(split.every((c) => c.rows >= 5)).toBe(true);
    }
    const majorityShare = (rows: Int32Array): number => {
      const counts = [0, 0, 0];
      for (const y of rows) counts[y]!++;
      return Math.max(...counts) / rows.length;
    };
    const mean = (split: typeof iid): number => split.reduce((s, c) => s + majorityShare(c.y), 0) / split.length;
    expect(mean(skewed)).toBeGreaterThan(mean(iid));
  });

  it('sync rounds - federated training learns towards the centralized head; compression still learns', () => {
    const central = centralized(data, local, 5, 1);
    expect(central.accuracy).toBeGreaterThan(0.6);
    const clients = iidSplit(data.train, 10, 1);
    for (const encoding of ['float32', 'int8'] as const) {
      const run = runSync({
        clients,
        test: data.test,
        classes: 3,
        strategy: fedavg,
        rounds: 4,
        clientsPerRound: 5,
        local,
        encoding,
        seed: 1,
        targetAccuracy: 0.5,
      });
      expect(run.accuracy).toHaveLength(4);
      expect(run.finalAccuracy).toBeGreaterThan(0.6);
      expect(run.roundsToTarget).not.toBeNull();
      expect(run.updates).toBe(20);
    }
  });

  it('stragglers - a sync round closes at its deadline without the slow clients; async keeps aggregating every K', () => {
    const clients = iidSplit(data.train, 10, 1);
    const duration = stragglerDurations(10, 0.3, 5, 1);
    const sync = runSync({
      clients,
      test: data.test,
      classes: 3,
      strategy: fedavg,
      rounds: 3,
      clientsPerRound: 10,
      local,
      encoding: 'float32',
      seed: 1,
      targetAccuracy: 2,
      timing: { duration, overSelection: 0, minClients: 5, deadline: 2, maxTime: Infinity, closeWhen: 'all-invited' },
    });
    expect(sync.time).toEqual([2, 4, 6]);
    expect(sync.dropped).toBe(9);
    expect(sync.timeToTarget).toBeNull();
    const async = runAsync({
      clients,
      test: data.test,
      classes: 3,
      strategy: fedavg,
      concurrency: 5,
      bufferSize: 2,
      maxStaleness: 1,
      maxAggregations: 6,
      maxTime: Infinity,
      duration,
      local,
      encoding: 'float32',
      seed: 1,
      targetAccuracy: 2,
    });
    expect(async.accuracy).toHaveLength(6);
    expect(async.updates).toBe(12);
    expect(async.time.every((t, i) => i === 0 || t >= async.time[i - 1]!)).toBe(true);
  });

  it('aggregation figures - the throughput ratio and a child process peak RSS come back', () => {
    const throughput = measureThroughput(1000, 2, 4, 1);
    expect(throughput.aggregation_vs_axpy).toBeGreaterThan(0);
    const point = measurePeakRss(3, 100);
    expect(point).toMatchObject({ clients: 3, held_bytes: 800 });
    expect(point.peak_rss_mb).toBeGreaterThan(0);
  });
});
