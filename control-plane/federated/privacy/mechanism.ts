/**
 * The contract between a round and central differential privacy (DP-FedAvg, McMahan et al.
 * 2018): every update is clipped to an L2 bound, the round's sum gets Gaussian noise of standard
 * deviation σ × bound, and an accountant tracks (ε, δ) of the sampled Gaussian mechanism over the
 * rounds. Pure: randomness is injected; state is JSON the task store keeps.
 *
 * A round calls, in order: wouldExceedBudget (before inviting; true: stop the task, budget
 * spent), clippingNorm and clip (each accepted update), privatize (the sum, once), afterRound
 * (once the noised aggregate is released; not for a round that failed without one).
 */

/** Privacy state carried from round to round (the clipping bound, the accountant's orders). */
export type PrivacyState = Record<string, unknown>;

export interface ClippedUpdate {
  delta: Float32Array;
  /** The norm before clipping. */
  norm: number;
  clipped: boolean;
}

export interface PrivacyMechanism {
  /** The state before the first round (the starting bound, nothing spent). */
  initialState(): PrivacyState;
  /** The bound this round clips to (0: no clipping). */
  clippingNorm(state: PrivacyState): number;
  clip(delta: Float32Array, state: PrivacyState): ClippedUpdate;
  /**
   * The noised aggregate of a round: `sum` is the sum of the clipped updates; `expectedClients`
   * is the fixed denominator DP-FedAvg divides by (clients_per_round), so one device's presence
   * changes the result by at most bound / expectedClients before noise.
   */
  privatize(sum: Float32Array, expectedClients: number, state: PrivacyState, gaussian: () => number): Float32Array;
  /**
   * The state after a round: adaptive clipping's new bound (from the count of updates `clip`
   * clipped among those aggregated, noised with `gaussian` under DP), the accountant's new step
   * at the round's sampling rate.
   */
  afterRound(state: PrivacyState, round: { aggregated: number; clipped: number; samplingRate: number }, gaussian: () => number): PrivacyState;
  /** (ε, δ) spent so far, and whether another round would pass the budget. */
  spent(state: PrivacyState): { epsilon: number; delta: number };
  wouldExceedBudget(state: PrivacyState, samplingRate: number): boolean;
}
