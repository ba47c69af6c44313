/**
 * Asynchronous rounds, FedBuff style (Nguyen et al. 2022, "Federated Learning with Buffered
 * Asynchronous Aggregation"): devices train whenever they can, from whatever head version they
 * fetched; the server buffers their updates and, every K of them, aggregates the buffer into one
 * new head version. An update computed from an older head is down-weighted by its staleness τ
 * (versions between its head and the current one) with FedBuff's polynomial staleness scaling
 * s(τ) = 1/√(1 + τ) (the paper's experiments, after FedAsync, Xie et al. 2019, with a = 0.5), and
 * one older than max_staleness is refused (FEDERATED_UPDATE_STALE).
 *
 * The scaling multiplies the delta itself (Δ̄ = Σ nᵢ s(τᵢ) Δᵢ / Σ nᵢ with sample-weighted
 * strategies), so a buffer of stale updates takes a shorter step instead of being renormalized
 * back to a full one. Pure: no clock, no I/O; the rounds engine owns the head version.
 */
import { DriftlineError } from '../../../common/errors.js';
import type { ClientUpdate, RoundAggregator, ServerStrategy } from './strategy.js';

/** FedBuff's staleness scaling: 1/√(1 + τ). */
export const fedBuffStalenessWeight = (staleness: number): number => 1 / Math.sqrt(1 + staleness);

export interface AsyncBufferOptions {
  /** K: updates per aggregation (async_buffer_size). */
  bufferSize: number;
  /** Updates with staleness above this are refused (max_staleness). */
  maxStaleness: number;
  /** s(τ); default fedBuffStalenessWeight. */
  stalenessWeight?: (staleness: number) => number;
}

export interface BufferedAggregate {
  /** The staleness-scaled aggregate delta of the buffer, for strategy.apply. */
  delta: Float32Array;
  updates: number;
  meanStaleness: number;
  maxStaleness: number;
}

export class AsyncUpdateBuffer {
  private aggregator: RoundAggregator;
  private stalenessSum = 0;
  private stalenessMax = 0;
  private readonly weight: (staleness: number) => number;

  constructor(
    private readonly strategy: ServerStrategy,
    private readonly length: number,
    private readonly options: AsyncBufferOptions,
  ) {
    if (!Number.isInteger(options.bufferSize) || options.bufferSize < 1) {
      throw new DriftlineError('FEDERATED_TASK_INVALID', `async_buffer_size must be a whole number ≥ 1 (got ${options.bufferSize})`);
    }
    if (!Number.isInteger(options.maxStaleness) || options.maxStaleness < 0) {
      throw new DriftlineError('FEDERATED_TASK_INVALID', `max_staleness must be a whole number ≥ 0 (got ${options.maxStaleness})`);
    }
    this.weight = options.stalenessWeight ?? fedBuffStalenessWeight;
    this.aggregator = strategy.createAggregator(length);
  }

  /** Updates in the buffer now. */
  get count(): number {
    return this.aggregator.count;
  }

  get heldBytes(): number {
    return this.aggregator.heldBytes;
  }

  /** True once K updates are buffered: call flush(). */
  get ready(): boolean {
    return this.aggregator.count >= this.options.bufferSize;
  }

  /**
   * Buffers one update (its `staleness` set by the caller: current head version − the version it
   * trained from). Refuses an update from the future (FEDERATED_UPDATE_UNEXPECTED) or older than
   * max_staleness (FEDERATED_UPDATE_STALE) before touching it. Returns the weight it was scaled by.
   */
  add(update: ClientUpdate): number {
    const tau = update.staleness;
    if (!Number.isInteger(tau) || tau < 0) {
      throw new DriftlineError(
        'FEDERATED_UPDATE_UNEXPECTED',
        `the update from ${update.deviceId} claims staleness ${tau}: its head version is not one the task has issued`,
      );
    }
    if (tau > this.options.maxStaleness) {
      throw new DriftlineError(
        'FEDERATED_UPDATE_STALE',
        `the update from ${update.deviceId} is ${tau} versions old (max_staleness ${this.options.maxStaleness})`,
      );
    }
    if (update.delta.length !== this.length) {
      throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `the update from ${update.deviceId} holds ${update.delta.length} parameters, the head ${this.length}`);
    }
    const w = this.weight(tau);
    if (!(Number.isFinite(w) && w >= 0)) throw new DriftlineError('FEDERATED_TASK_INVALID', `the staleness weight of ${tau} is ${w}`);
    let delta = update.delta;
    if (w !== 1) {
      delta = new Float32Array(update.delta.length);
      for (let i = 0; i < delta.length; i++) delta[i] = update.delta[i]! * w;
    }
    this.aggregator.add({ ...update, delta });
    this.stalenessSum += tau;
    this.stalenessMax = Math.max(this.stalenessMax, tau);
    return w;
  }

  /** Aggregates the buffer and empties it (normally when ready; at least one update needed). */
  flush(): BufferedAggregate {
    const updates = this.aggregator.count;
    const delta = this.aggregator.finish();
    const result = { delta, updates, meanStaleness: this.stalenessSum / updates, maxStaleness: this.stalenessMax };
    this.aggregator = this.strategy.createAggregator(this.length);
    this.stalenessSum = 0;
    this.stalenessMax = 0;
    return result;
  }
}
