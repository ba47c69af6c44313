/**
 * The streaming, sample-weighted mean every averaging strategy aggregates with (FedAvg, FedAvgM,
 * FedProx, FedAdam, FedYogi): one running weighted sum in float64 and one total weight, so memory
 * is O(model size) whatever the number of clients, and each update is read once and dropped.
 */
import { DriftlineError } from '../../../common/errors.js';
import type { ClientUpdate, RoundAggregator } from './strategy.js';

/** Checks what every aggregator relies on: the delta has the head's length and a usable weight. */
export function checkUpdate(update: ClientUpdate, length: number): void {
  if (update.delta.length !== length) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `the update from ${update.deviceId} holds ${update.delta.length} parameters, the head ${length}`);
  }
  if (!(Number.isFinite(update.sampleCount) && update.sampleCount > 0)) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `the update from ${update.deviceId} claims ${update.sampleCount} samples (at least one needed)`);
  }
}

export class WeightedMeanAggregator implements RoundAggregator {
  private readonly sum: Float64Array;
  private totalWeight = 0;
  private added = 0;

  constructor(private readonly length: number) {
    this.sum = new Float64Array(length);
  }

  get count(): number {
    return this.added;
  }

  /** The running sum; no update is kept. */
  get heldBytes(): number {
    return this.sum.byteLength;
  }

  add(update: ClientUpdate): void {
    checkUpdate(update, this.length);
    const w = update.sampleCount;
    const sum = this.sum;
    const delta = update.delta;
    const n = this.length;
    for (let i = 0; i < n; i++) sum[i]! += w * delta[i]!;
    this.totalWeight += w;
    this.added++;
  }

  finish(): Float32Array {
    if (this.added === 0) throw new DriftlineError('FEDERATED_NO_QUORUM', 'no update to aggregate');
    const out = new Float32Array(this.length);
    const scale = 1 / this.totalWeight;
    for (let i = 0; i < this.length; i++) out[i] = this.sum[i]! * scale;
    return out;
  }
}
