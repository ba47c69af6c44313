/**
 * The rounds engine's FederatedAlgorithms port over the real rules: the strategies
 * (./strategies/), central differential privacy (./privacy/), FedBuff's buffer and the update
 * checks (./update-validation.ts). `driftline serve` wires the engine with this; tests may wire a
 * reference of their own.
 */
import { DriftlineError } from '../../common/errors.js';
import { isUpdateEncoding } from '../../common/federated/update-codec.js';
import type { FederatedAlgorithms } from './ports.js';
import { createPrivacyMechanism } from './privacy/central-privacy.js';
import { validatePrivacySettings } from './privacy/privacy-settings.js';
import { AsyncUpdateBuffer } from './strategies/async-buffer.js';
import { createStrategy, validateStrategy } from './strategies/create-strategy.js';
import { validateUpdate } from './update-validation.js';

export function federatedAlgorithms(): FederatedAlgorithms {
  return {
    validate(spec) {
      // Async rounds aggregate every K updates: K is the round size a strategy is judged for.
      const sizes =
        spec.mode === 'async'
          ? { clientsPerRound: spec.asyncBufferSize, minClients: spec.asyncBufferSize }
          : {
              clientsPerRound: spec.clientsPerRound,
              minClients: spec.minClients,
              maxUpdatesPerRound: Math.ceil(spec.clientsPerRound * (1 + spec.overSelection)),
            };
      validateStrategy(spec.strategy, sizes);
      validatePrivacySettings(spec.privacy, { clientsPerRound: spec.clientsPerRound });
    },
    strategy: (spec) => createStrategy(spec),
    privacy(spec) {
      if (spec.privacy.mode !== 'central-gaussian') return undefined;
      return createPrivacyMechanism(validatePrivacySettings(spec.privacy, { clientsPerRound: spec.clientsPerRound }));
    },
    asyncBuffer: (strategy, length, options) => new AsyncUpdateBuffer(strategy, length, options),
    validateUpdate(tensor, limits) {
      if (!isUpdateEncoding(limits.encoding)) {
        throw new DriftlineError('FEDERATED_TASK_INVALID', `update_compression ${JSON.stringify(limits.encoding)} is not float32, float16 or int8`);
      }
      return validateUpdate(tensor, {
        headLength: limits.headLength,
        maxUpdateNorm: limits.maxUpdateNorm,
        maxBytes: limits.maxBytes,
        encoding: limits.encoding,
      });
    },
  };
}
