/**
 * The privacy settings of a federated task, validated once when the task starts: the wire's
 * FederatedPrivacy (zero meaning "default" for the optional numbers) becomes a complete, frozen
 * PrivacySettings, or the start is refused with FEDERATED_TASK_INVALID naming the field.
 */
import { DriftlineError } from '../../../common/errors.js';
import type { FederatedPrivacy } from '../../../common/proto/driftline/v1/federated.js';
import { updateNoiseMultiplier } from './clipping.js';
import { epsilonAfterRounds } from './rdp-accountant.js';

export type PrivacyMode = 'none' | 'central-gaussian';

export interface PrivacySettings {
  readonly mode: PrivacyMode;
  /** The L2 bound updates are clipped to (the start, with adaptive clipping); 0: no clipping. */
  readonly clippingNorm: number;
  readonly adaptiveClipping: boolean;
  readonly targetQuantile: number;
  readonly clippingLearningRate: number;
  /** z: the round is as private as a Gaussian mechanism with noise σ = z × bound (accounted with z). */
  readonly noiseMultiplier: number;
  /**
   * The multiplier the update sum's noise actually uses: z itself, or with adaptive clipping
   * under DP the larger z_Δ that leaves room for the noised count (Andrew et al. 2021, Thm 1).
   */
  readonly updateNoiseMultiplier: number;
  /** σ_b, the standard deviation of the noise on the count of unclipped updates (m / 20, the paper's choice); 0 without DP. */
  readonly countNoiseStddev: number;
  readonly targetEpsilon: number;
  readonly delta: number;
  /** m, clients_per_round: DP-FedAvg's fixed denominator. */
  readonly expectedClients: number;
}

export const DEFAULT_TARGET_QUANTILE = 0.5;
export const DEFAULT_CLIPPING_LEARNING_RATE = 0.2;
/** Andrew et al. 2021 (§3) set the count's noise to σ_b = m / 20 for m expected clients. */
const COUNT_NOISE_PER_CLIENT = 1 / 20;

function invalid(field: string, message: string): DriftlineError {
  return new DriftlineError('FEDERATED_TASK_INVALID', `privacy.${field} ${message}`, { details: { field: `privacy.${field}` } });
}

function finite(field: string, value: number): number {
  if (!Number.isFinite(value)) throw invalid(field, `must be a finite number, got ${value}`);
  return value;
}

function parseMode(mode: string | undefined): PrivacyMode {
  if (mode === undefined || mode === '' || mode === 'none') return 'none';
  if (mode === 'central-gaussian') return mode;
  throw invalid('mode', `must be none or central-gaussian, got ${JSON.stringify(mode)}`);
}

/**
 * The sampling rate q of the accountant: the chance that a given eligible device's update enters
 * a round. Pass the devices invited per round (clients_per_round with over-selection) over the
 * eligible devices: every invited device may report, so that is the rate privacy must assume.
 */
export function samplingRate(invitedPerRound: number, eligibleDevices: number): number {
  if (!Number.isInteger(eligibleDevices) || eligibleDevices < 1) {
    throw new DriftlineError('FEDERATED_NO_CLIENTS', `the sampling rate needs at least one eligible device, got ${eligibleDevices}`);
  }
  if (!Number.isFinite(invitedPerRound) || invitedPerRound <= 0) {
    throw new DriftlineError('FEDERATED_TASK_INVALID', `devices invited per round must be > 0, got ${invitedPerRound}`, {
      details: { field: 'clients_per_round' },
    });
  }
  return Math.min(1, invitedPerRound / eligibleDevices);
}

/**
 * Validates a task's privacy settings. `clientsPerRound` is DP-FedAvg's denominator (and sizes
 * the count noise of adaptive clipping); `samplingRate`, when the cohort is known at start, lets
 * the check refuse a budget that not even one round fits.
 */
export function validatePrivacySettings(privacy: FederatedPrivacy | undefined, task: { clientsPerRound: number; samplingRate?: number }): PrivacySettings {
  if (!Number.isInteger(task.clientsPerRound) || task.clientsPerRound < 1) {
    throw new DriftlineError('FEDERATED_TASK_INVALID', `clients_per_round must be an integer ≥ 1, got ${task.clientsPerRound}`, {
      details: { field: 'clients_per_round' },
    });
  }
  const mode = parseMode(privacy?.mode);
  const clippingNorm = finite('clipping_norm', privacy?.clippingNorm ?? 0);
  if (clippingNorm < 0) throw invalid('clipping_norm', `must be ≥ 0, got ${clippingNorm}`);
  const adaptiveClipping = privacy?.adaptiveClipping ?? false;
  const targetQuantile = finite('target_quantile', privacy?.targetQuantile || DEFAULT_TARGET_QUANTILE);
  if (!(targetQuantile > 0 && targetQuantile < 1)) throw invalid('target_quantile', `must be in (0, 1), got ${targetQuantile}`);
  const clippingLearningRate = finite('clipping_learning_rate', privacy?.clippingLearningRate || DEFAULT_CLIPPING_LEARNING_RATE);
  if (clippingLearningRate <= 0) throw invalid('clipping_learning_rate', `must be > 0, got ${clippingLearningRate}`);
  const noiseMultiplier = finite('noise_multiplier', privacy?.noiseMultiplier ?? 0);
  const targetEpsilon = finite('target_epsilon', privacy?.targetEpsilon ?? 0);
  const delta = finite('delta', privacy?.delta ?? 0);
  if (adaptiveClipping && clippingNorm === 0) throw invalid('clipping_norm', 'must be > 0 with adaptive_clipping (it is the starting bound)');
  const expectedClients = task.clientsPerRound;

  if (mode === 'none') {
    // Settings that only mean something under DP would be silently ignored: refuse them instead.
    if (noiseMultiplier !== 0) throw invalid('noise_multiplier', 'is set but privacy.mode is none (use central-gaussian)');
    if (targetEpsilon !== 0) throw invalid('target_epsilon', 'is set but privacy.mode is none (use central-gaussian)');
    if (delta !== 0) throw invalid('delta', 'is set but privacy.mode is none (use central-gaussian)');
    return Object.freeze({
      mode,
      clippingNorm,
      adaptiveClipping,
      targetQuantile,
      clippingLearningRate,
      noiseMultiplier: 0,
      updateNoiseMultiplier: 0,
      countNoiseStddev: 0,
      targetEpsilon: 0,
      delta: 0,
      expectedClients,
    });
  }

  if (clippingNorm <= 0) throw invalid('clipping_norm', `must be > 0 with central-gaussian (the noise is scaled to it), got ${clippingNorm}`);
  if (noiseMultiplier <= 0) throw invalid('noise_multiplier', `must be > 0 with central-gaussian, got ${noiseMultiplier}`);
  if (targetEpsilon <= 0) throw invalid('target_epsilon', `must be > 0 with central-gaussian (the budget), got ${targetEpsilon}`);
  if (!(delta > 0 && delta < 1)) throw invalid('delta', `must be in (0, 1) with central-gaussian, got ${delta}`);
  const countNoiseStddev = adaptiveClipping ? expectedClients * COUNT_NOISE_PER_CLIENT : 0;
  const zUpdates = adaptiveClipping ? updateNoiseMultiplier(noiseMultiplier, countNoiseStddev) : noiseMultiplier;
  if (!Number.isFinite(zUpdates)) {
    throw invalid(
      'noise_multiplier',
      `${noiseMultiplier} is too large for adaptive clipping with ${expectedClients} clients per round: the noised count alone would need it (z must be below clients_per_round / 10)`,
    );
  }
  if (task.samplingRate !== undefined) {
    const q = task.samplingRate;
    if (!(q > 0 && q <= 1))
      throw new DriftlineError('FEDERATED_TASK_INVALID', `the sampling rate must be in (0, 1], got ${q}`, { details: { field: 'clients_per_round' } });
    const first = epsilonAfterRounds(noiseMultiplier, q, 1, delta).epsilon;
    if (first > targetEpsilon) {
      throw invalid(
        'target_epsilon',
        `${targetEpsilon} is below the ε of a single round (${first.toPrecision(4)} at δ = ${delta}): raise it, or the noise multiplier`,
      );
    }
  }
  return Object.freeze({
    mode,
    clippingNorm,
    adaptiveClipping,
    targetQuantile,
    clippingLearningRate,
    noiseMultiplier,
    updateNoiseMultiplier: zUpdates,
    countNoiseStddev,
    targetEpsilon,
    delta,
    expectedClients,
  });
}
