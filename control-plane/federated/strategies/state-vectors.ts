/**
 * Server-optimizer state travels as plain JSON (the task store keeps it between rounds and
 * across restarts): vectors as number arrays of float64, which JSON.stringify round-trips
 * exactly, so a resumed task takes the very step it would have taken.
 */
import { DriftlineError } from '../../../common/errors.js';
import type { StrategyState } from './strategy.js';

/** The vector `key` of a stored state, checked against the head's length. */
export function stateVector(state: StrategyState, key: string, length: number, strategy: string): Float64Array {
  const value = state[key];
  if (!Array.isArray(value) || value.length !== length) {
    throw new DriftlineError(
      'FEDERATED_STATE_INVALID',
      `${strategy}: the stored state's ${key} is not a vector of ${length} numbers (${Array.isArray(value) ? value.length : typeof value})`,
    );
  }
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) {
    const v = value[i];
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new DriftlineError('FEDERATED_STATE_INVALID', `${strategy}: the stored state's ${key}[${i}] is not a finite number`);
    out[i] = v;
  }
  return out;
}

export function stateCount(state: StrategyState, key: string, strategy: string): number {
  const value = state[key];
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new DriftlineError('FEDERATED_STATE_INVALID', `${strategy}: the stored state's ${key} is not a count`);
  }
  return value;
}

export const toJsonVector = (vector: Float64Array): number[] => Array.from(vector);

export function checkGlobal(global: Float32Array, aggregated: Float32Array, strategy: string): void {
  if (global.length !== aggregated.length) {
    throw new DriftlineError('FEDERATED_UPDATE_SHAPE', `${strategy}: an aggregate of ${aggregated.length} parameters for a head of ${global.length}`);
  }
}
