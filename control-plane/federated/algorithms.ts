import type { UpdateEncoding } from '../../common/federated/update-codec.js';
import type { FederatedAlgorithms } from './ports.js';
import { createPrivacyMechanism } from './privacy/central-privacy.js';
import { validatePrivacySettings } from './privacy/privacy-settings.js';
import { AsyncUpdateBuffer } from './strategies/async-buffer.js';
import { createStrategy, validateStrategy } from './strategies/create-strategy.js';
import { invitedPerRound } from './task-state-machine.js';
import { validateUpdate } from './update-validation.js';

/**
 * The aggregation rules `serve` runs federated tasks with: the strategies (./strategies/), the
 * FedBuff buffer, central DP (./privacy/) and the update checks (./update-validation.ts).
 */
export function defaultFederatedAlgorithms(): FederatedAlgorithms {
  return {
    validate(spec) {
      // Async rounds aggregate async_buffer_size updates: the strategy is checked at that size.
      const sizes =
        spec.mode === 'async'
          ? { clientsPerRound: spec.asyncBufferSize, minClients: Math.min(spec.minClients, spec.asyncBufferSize), maxUpdatesPerRound: spec.asyncBufferSize }
          : { clientsPerRound: spec.clientsPerRound, minClients: spec.minClients, maxUpdatesPerRound: invitedPerRound(spec) };
      validateStrategy(spec.strategy, sizes);
      validatePrivacySettings(spec.privacy, { clientsPerRound: spec.clientsPerRound });
    },
    strategy: (spec) => createStrategy(spec),
    privacy: (spec) => createPrivacyMechanism(validatePrivacySettings(spec.privacy, { clientsPerRound: spec.clientsPerRound })),
    asyncBuffer: (strategy, length, options) => new AsyncUpdateBuffer(strategy, length, options),
    validateUpdate: (tensor, limits) => validateUpdate(tensor, { ...limits, encoding: limits.encoding as UpdateEncoding }),
  };
}
