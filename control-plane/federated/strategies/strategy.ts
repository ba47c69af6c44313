/**
 * The contract between a round and its aggregation rule. Pure: no I/O, no clock. A round feeds
 * each accepted update to its aggregator as it arrives (streaming rules hold O(model size)
 * whatever the number of clients; robust rules that need every update say so through
 * `holdsEveryUpdate`), then the strategy turns the aggregate into the next global head, carrying
 * its own server-optimizer state (FedAvgM's momentum, FedAdam's moments) from round to round as
 * plain JSON the task store keeps, so a restarted control plane resumes where it was.
 */

/** One device's accepted update: the trained head minus the head it started from. */
export interface ClientUpdate {
  deviceId: string;
  /** Local samples the update was trained on (FedAvg's weight). */
  sampleCount: number;
  /** Already decoded, validated and (with privacy) clipped. */
  delta: Float32Array;
  /** Async mode: head versions between the one it started from and the current one (0 in sync rounds). */
  staleness: number;
}

export interface RoundAggregator {
  add(update: ClientUpdate): void;
  /** Updates added so far. */
  readonly count: number;
  /** Bytes of update data the aggregator holds (for the peak-memory figures and logs). */
  readonly heldBytes: number;
  /** The aggregated delta; called once, after at least one add. */
  finish(): Float32Array;
}

/** Server-optimizer state, JSON-serializable (vectors as number arrays). */
export type StrategyState = Record<string, unknown>;

export interface ServerStrategy {
  readonly name: string;
  /** True for rules that must see every update at once (median, trimmed mean, Krum). */
  readonly holdsEveryUpdate: boolean;
  /** The local proximal term μ devices add (FedProx), 0 otherwise. */
  readonly proximalMu: number;
  createAggregator(length: number): RoundAggregator;
  initialState(length: number): StrategyState;
  /** The next global head from the current one and the round's aggregated delta. */
  apply(global: Float32Array, aggregated: Float32Array, state: StrategyState): { global: Float32Array; state: StrategyState };
}
