/**
 * The PrivacyMechanism a federated task runs with: clipping (fixed or adaptive) always when a
 * bound is set, and under `central-gaussian` DP-FedAvg's Gaussian noise on the round's sum with
 * the Rényi-DP accountant of the sampled Gaussian mechanism and the task's (ε, δ) budget.
 *
 * The state is plain JSON (the bound, the rounds, the orders and the RDP accumulated at each):
 * the task store keeps it after every round and a restarted control plane resumes with the same
 * accounting. A stored state that does not parse is refused (FEDERATED_PRIVACY_STATE_INVALID),
 * never replaced by a fresh one, since that would reset ε.
 */
import { DriftlineError } from '../../../common/errors.js';
import { clipToNorm, nextAdaptiveBound } from './clipping.js';
import { addGaussianNoise, type GaussianSource } from './gaussian-noise.js';
import type { ClippedUpdate, PrivacyMechanism, PrivacyState } from './mechanism.js';
import type { PrivacySettings } from './privacy-settings.js';
import { composeRdp, DEFAULT_RDP_ORDERS, epsilonFromRdp, sampledGaussianRdp } from './rdp-accountant.js';

/** The JSON a task stores. RDP values that are infinite (an order whose series diverged) are null. */
export interface CentralPrivacyState {
  version: 1;
  /** The bound the next round clips to. */
  clippingNorm: number;
  /** Rounds accounted so far. */
  rounds: number;
  orders: number[];
  rdp: (number | null)[];
}

interface ParsedState {
  clippingNorm: number;
  rounds: number;
  orders: number[];
  rdp: number[];
}

function stateInvalid(message: string): DriftlineError {
  return new DriftlineError('FEDERATED_PRIVACY_STATE_INVALID', `stored privacy state: ${message}`);
}

function parseState(state: PrivacyState): ParsedState {
  if (state === null || typeof state !== 'object') throw stateInvalid('not an object');
  const { version, clippingNorm, rounds, orders, rdp } = state as Partial<CentralPrivacyState>;
  if (version !== 1) throw stateInvalid(`unknown version ${JSON.stringify(version)}`);
  if (typeof clippingNorm !== 'number' || !Number.isFinite(clippingNorm) || clippingNorm < 0) throw stateInvalid('clippingNorm is not a finite number ≥ 0');
  if (typeof rounds !== 'number' || !Number.isInteger(rounds) || rounds < 0) throw stateInvalid('rounds is not an integer ≥ 0');
  if (!Array.isArray(orders) || orders.length === 0 || !orders.every((o) => typeof o === 'number' && o > 1 && Number.isFinite(o))) {
    throw stateInvalid('orders is not a non-empty list of numbers > 1');
  }
  if (!Array.isArray(rdp) || rdp.length !== orders.length) throw stateInvalid('rdp does not have one value per order');
  const values = rdp.map((r) => {
    if (r === null) return Infinity;
    if (typeof r !== 'number' || !(r >= 0)) throw stateInvalid('rdp holds a value that is not a number ≥ 0');
    return r;
  });
  return { clippingNorm, rounds, orders: [...orders], rdp: values };
}

function serialize(state: ParsedState): CentralPrivacyState {
  return {
    version: 1,
    clippingNorm: state.clippingNorm,
    rounds: state.rounds,
    orders: state.orders,
    rdp: state.rdp.map((r) => (Number.isFinite(r) ? r : null)),
  };
}

function checkCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) throw new DriftlineError('INTERNAL', `${name} must be an integer ≥ 0, got ${value}`);
}

function checkSamplingRate(q: number): void {
  if (!(q >= 0 && q <= 1)) throw new DriftlineError('INTERNAL', `the sampling rate must be in [0, 1], got ${q}`);
}

/** One round's RDP per sampling rate, kept for the few rates a task sees (the cohort rarely changes size). */
const STEP_CACHE_LIMIT = 16;

export function createPrivacyMechanism(settings: PrivacySettings): PrivacyMechanism {
  const dp = settings.mode === 'central-gaussian';
  const stepCache = new Map<string, number[]>();

  const roundRdp = (q: number, orders: readonly number[]): number[] => {
    const key = `${q}|${orders.join(',')}`;
    let step = stepCache.get(key);
    if (step === undefined) {
      step = sampledGaussianRdp(q, settings.noiseMultiplier, orders);
      if (stepCache.size >= STEP_CACHE_LIMIT) stepCache.delete(stepCache.keys().next().value!);
      stepCache.set(key, step);
    }
    return step;
  };

  const epsilonOf = (parsed: ParsedState, rdp: readonly number[]): number => epsilonFromRdp(parsed.orders, rdp, settings.delta).epsilon;

  return {
    initialState(): PrivacyState {
      const orders = [...DEFAULT_RDP_ORDERS];
      return { ...serialize({ clippingNorm: settings.clippingNorm, rounds: 0, orders, rdp: orders.map(() => 0) }) };
    },

    clippingNorm(state: PrivacyState): number {
      return parseState(state).clippingNorm;
    },

    clip(delta: Float32Array, state: PrivacyState): ClippedUpdate {
      return clipToNorm(delta, parseState(state).clippingNorm);
    },

    privatize(sum: Float32Array, expectedClients: number, state: PrivacyState, gaussian: GaussianSource): Float32Array {
      if (!Number.isInteger(expectedClients) || expectedClients < 1)
        throw new DriftlineError('INTERNAL', `expectedClients must be an integer ≥ 1, got ${expectedClients}`);
      const out = Float32Array.from(sum);
      if (dp) {
        // The sensitivity of the sum is the bound: one device adds or removes at most one clipped update.
        addGaussianNoise(out, settings.updateNoiseMultiplier * parseState(state).clippingNorm, gaussian);
      }
      for (let i = 0; i < out.length; i++) out[i] = out[i]! / expectedClients;
      return out;
    },

    afterRound(state: PrivacyState, round: { aggregated: number; clipped: number; samplingRate: number }, gaussian: GaussianSource): PrivacyState {
      const parsed = parseState(state);
      checkCount('aggregated', round.aggregated);
      checkCount('clipped', round.clipped);
      if (round.clipped > round.aggregated) throw new DriftlineError('INTERNAL', `clipped (${round.clipped}) cannot exceed aggregated (${round.aggregated})`);
      checkSamplingRate(round.samplingRate);
      let clippingNorm = parsed.clippingNorm;
      if (settings.adaptiveClipping) {
        const unclipped = round.aggregated - round.clipped;
        let unclippedFraction: number | undefined;
        if (dp) {
          // Andrew et al. 2021: each device's bit is centred at ½ (sensitivity ½ whether it is in the
          // round or not), the sum gets N(0, σ_b²), and the fixed m turns it back into a fraction.
          const noisedCentred = unclipped - round.aggregated / 2 + settings.countNoiseStddev * gaussian();
          unclippedFraction = noisedCentred / settings.expectedClients + 0.5;
        } else if (round.aggregated > 0) {
          unclippedFraction = unclipped / round.aggregated;
        }
        if (unclippedFraction !== undefined) {
          clippingNorm = nextAdaptiveBound(clippingNorm, unclippedFraction, settings.targetQuantile, settings.clippingLearningRate);
        }
      }
      const rdp = dp ? composeRdp(parsed.rdp, roundRdp(round.samplingRate, parsed.orders)) : parsed.rdp;
      return { ...serialize({ clippingNorm, rounds: parsed.rounds + 1, orders: parsed.orders, rdp }) };
    },

    spent(state: PrivacyState): { epsilon: number; delta: number } {
      const parsed = parseState(state);
      if (!dp) return { epsilon: 0, delta: 0 };
      return { epsilon: epsilonOf(parsed, parsed.rdp), delta: settings.delta };
    },

    wouldExceedBudget(state: PrivacyState, samplingRate: number): boolean {
      const parsed = parseState(state);
      checkSamplingRate(samplingRate);
      if (!dp) return false;
      return epsilonOf(parsed, composeRdp(parsed.rdp, roundRdp(samplingRate, parsed.orders))) > settings.targetEpsilon;
    },
  };
}
