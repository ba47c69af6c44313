/**
 * FedAdam and FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): the
 * averaged delta Δ is a pseudo-gradient (its negative) and the server runs an adaptive optimizer
 * on it:
 *   m ← β1 m + (1 − β1) Δ
 *   Adam: v ← β2 v + (1 − β2) Δ²          Yogi: v ← v − (1 − β2) Δ² sign(v − Δ²)
 *   x ← x + η m / (√v + τ)
 * As in the paper there is no bias correction, and v starts at τ² (the paper's v₋₁ ≥ τ²).
 * Defaults follow Flower's FedAdam/FedYogi (β1 0.9, β2 0.99; FedAdam η 0.1, τ 1e-9; FedYogi
 * η 0.01, τ 1e-3), which take them from the paper's grids.
 */
import { WeightedMeanAggregator } from './mean.js';
import { checkGlobal, stateCount, stateVector, toJsonVector } from './state-vectors.js';
import type { RoundAggregator, ServerStrategy, StrategyState } from './strategy.js';

export interface AdaptiveSettings {
  serverLearningRate: number;
  beta1: number;
  beta2: number;
  tau: number;
}

export const FEDADAM_DEFAULTS: AdaptiveSettings = { serverLearningRate: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-9 };
export const FEDYOGI_DEFAULTS: AdaptiveSettings = { serverLearningRate: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 };

export class AdaptiveFedOpt implements ServerStrategy {
  readonly holdsEveryUpdate = false;
  readonly proximalMu = 0;

  constructor(
    readonly name: 'fedadam' | 'fedyogi',
    readonly settings: AdaptiveSettings,
  ) {}

  createAggregator(length: number): RoundAggregator {
    return new WeightedMeanAggregator(length);
  }

  initialState(length: number): StrategyState {
    const tau2 = this.settings.tau * this.settings.tau;
    return { m: new Array<number>(length).fill(0), v: new Array<number>(length).fill(tau2), steps: 0 };
  }

  apply(global: Float32Array, aggregated: Float32Array, state: StrategyState): { global: Float32Array; state: StrategyState } {
    checkGlobal(global, aggregated, this.name);
    const n = global.length;
    const m = stateVector(state, 'm', n, this.name);
    const v = stateVector(state, 'v', n, this.name);
    const steps = stateCount(state, 'steps', this.name);
    const { serverLearningRate: eta, beta1, beta2, tau } = this.settings;
    const yogi = this.name === 'fedyogi';
    const next = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const d = aggregated[i]!;
      const d2 = d * d;
      m[i] = beta1 * m[i]! + (1 - beta1) * d;
      v[i] = yogi ? v[i]! - (1 - beta2) * d2 * Math.sign(v[i]! - d2) : beta2 * v[i]! + (1 - beta2) * d2;
      next[i] = global[i]! + (eta * m[i]!) / (Math.sqrt(v[i]!) + tau);
    }
    return { global: next, state: { m: toJsonVector(m), v: toJsonVector(v), steps: steps + 1 } };
  }
}
