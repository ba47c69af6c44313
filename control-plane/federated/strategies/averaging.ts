/**
 * The averaging strategies: FedAvg (McMahan et al. 2017; sample-weighted mean of the deltas,
 * added to the global head), FedProx (Li et al. 2020; the same server step, the proximal term μ
 * lives in the devices' local loss) and FedAvgM (Hsu et al. 2019; server momentum on the
 * averaged delta: v ← βv + Δ, x ← x + η v). All stream: O(model size) whatever the clients.
 */
import { WeightedMeanAggregator } from './mean.js';
import { checkGlobal, stateVector, toJsonVector } from './state-vectors.js';
import type { RoundAggregator, ServerStrategy, StrategyState } from './strategy.js';

/** x + Δ, as a new vector (the caller's head is left as it was). */
export function addDelta(global: Float32Array, aggregated: Float32Array, strategy: string): Float32Array {
  checkGlobal(global, aggregated, strategy);
  const next = new Float32Array(global.length);
  for (let i = 0; i < global.length; i++) next[i] = global[i]! + aggregated[i]!;
  return next;
}

export class FedAvg implements ServerStrategy {
  readonly holdsEveryUpdate = false;

  constructor(
    readonly name: 'fedavg' | 'fedprox' = 'fedavg',
    readonly proximalMu = 0,
  ) {}

  createAggregator(length: number): RoundAggregator {
    return new WeightedMeanAggregator(length);
  }

  initialState(): StrategyState {
    return {};
  }

  apply(global: Float32Array, aggregated: Float32Array, state: StrategyState): { global: Float32Array; state: StrategyState } {
    return { global: addDelta(global, aggregated, this.name), state };
  }
}

export class FedAvgM implements ServerStrategy {
  readonly name = 'fedavgm';
  readonly holdsEveryUpdate = false;
  readonly proximalMu = 0;

  constructor(
    readonly serverLearningRate: number,
    readonly momentum: number,
  ) {}

  createAggregator(length: number): RoundAggregator {
    return new WeightedMeanAggregator(length);
  }

  initialState(length: number): StrategyState {
    return { velocity: new Array<number>(length).fill(0) };
  }

  apply(global: Float32Array, aggregated: Float32Array, state: StrategyState): { global: Float32Array; state: StrategyState } {
    checkGlobal(global, aggregated, this.name);
    const velocity = stateVector(state, 'velocity', global.length, this.name);
    const next = new Float32Array(global.length);
    for (let i = 0; i < global.length; i++) {
      velocity[i] = this.momentum * velocity[i]! + aggregated[i]!;
      next[i] = global[i]! + this.serverLearningRate * velocity[i]!;
    }
    return { global: next, state: { velocity: toJsonVector(velocity) } };
  }
}
