import { DriftlineError } from '../../common/errors.js';
import { isUpdateEncoding } from '../../common/federated/update-codec.js';
import type { FederatedPrivacy, FederatedStrategy, StartFederatedTaskRequest } from '../../common/proto/driftline/v1/federated.js';
import { normalizeEvaluationGates } from '../training/evaluation.js';
import type { FederatedSpec } from './task-state-machine.js';

/** What the control plane's config allows a task (config section `federated`). */
export interface FederatedLimits {
  maxRounds: number;
  maxClientsPerRound: number;
  defaultRoundDeadlineMs: number;
  maxUpdateNorm: number;
  maxUpdateBytes: number;
}

export const DEFAULT_FEDERATED_LIMITS: FederatedLimits = {
  maxRounds: 1000,
  maxClientsPerRound: 1000,
  defaultRoundDeadlineMs: 10 * 60_000,
  maxUpdateNorm: 1000,
  maxUpdateBytes: 16 * 1024 * 1024,
};

const STRATEGIES = ['fedavg', 'fedavgm', 'fedprox', 'fedadam', 'fedyogi', 'median', 'trimmed-mean', 'krum', 'multi-krum'];
const MAX_DEADLINE_S = 7 * 86_400;

const invalid = (field: string, message: string): DriftlineError =>
  new DriftlineError('FEDERATED_TASK_INVALID', `${field}: ${message}`, { details: { field } });

function intIn(field: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) throw invalid(field, `must be a whole number from ${min} to ${max} (got ${value})`);
  return value;
}

function finiteIn(field: string, value: number, min: number, max: number): number {
  if (!Number.isFinite(value) || value < min || value > max) throw invalid(field, `must be from ${min} to ${max} (got ${value})`);
  return value;
}

const EMPTY_STRATEGY: FederatedStrategy = {
  name: 'fedavg',
  serverLearningRate: 0,
  serverMomentum: 0,
  beta2: 0,
  tau: 0,
  proximalMu: 0,
  trimFraction: 0,
  byzantineClients: 0,
  krumSelected: 0,
};

const EMPTY_PRIVACY: FederatedPrivacy = {
  mode: 'none',
  clippingNorm: 0,
  adaptiveClipping: false,
  targetQuantile: 0,
  clippingLearningRate: 0,
  noiseMultiplier: 0,
  targetEpsilon: 0,
  delta: 0,
};

/**
 * A StartFederatedTaskRequest checked field by field (FEDERATED_TASK_INVALID names the field)
 * and completed with defaults. The strategy's and the privacy mechanism's own settings are
 * checked again by their factories when the engine creates them.
 */
export function parseFederatedSpec(req: StartFederatedTaskRequest, limits: FederatedLimits = DEFAULT_FEDERATED_LIMITS): FederatedSpec {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(req.model)) throw invalid('model', 'must name a model (letters, digits, ., _ or -, at most 128)');
  intIn('base_version', req.baseVersion, 1, Number.MAX_SAFE_INTEGER);
  if (req.clientRequestId.length > 128) throw invalid('client_request_id', 'at most 128 characters');
  if (req.cohortSelector.length > 1024) throw invalid('cohort_selector', 'at most 1024 characters');
  const mode = req.mode === '' ? 'sync' : req.mode;
  if (mode !== 'sync' && mode !== 'async') throw invalid('mode', `must be sync or async (got ${JSON.stringify(req.mode)})`);
  const rounds = intIn('rounds', req.rounds, 1, limits.maxRounds);
  const clientsPerRound = intIn('clients_per_round', req.clientsPerRound, 1, limits.maxClientsPerRound);
  const minClients = req.minClients === 0 ? clientsPerRound : intIn('min_clients', req.minClients, 1, clientsPerRound);
  const overSelection = finiteIn('over_selection', req.overSelection, 0, 10);
  if (Math.ceil(clientsPerRound * (1 + overSelection)) > limits.maxClientsPerRound)
    throw invalid('over_selection', `clients_per_round × (1 + over_selection) is above federated.maxClientsPerRound (${limits.maxClientsPerRound})`);
  const deadlineS =
    req.roundDeadlineSeconds === 0 ? limits.defaultRoundDeadlineMs / 1000 : intIn('round_deadline_seconds', req.roundDeadlineSeconds, 1, MAX_DEADLINE_S);
  const localEpochs = req.localEpochs === 0 ? 1 : intIn('local_epochs', req.localEpochs, 1, 1000);
  const batchSize = req.batchSize === 0 ? 32 : intIn('batch_size', req.batchSize, 1, 65_536);
  const learningRate = req.learningRate === 0 ? 0.05 : finiteIn('learning_rate', req.learningRate, 1e-9, 100);
  const strategy: FederatedStrategy = { ...EMPTY_STRATEGY, ...req.strategy };
  if (strategy.name === '') strategy.name = 'fedavg';
  if (!STRATEGIES.includes(strategy.name)) throw invalid('strategy.name', `must be one of ${STRATEGIES.join(', ')} (got ${JSON.stringify(strategy.name)})`);
  for (const key of ['serverLearningRate', 'serverMomentum', 'beta2', 'tau', 'proximalMu', 'trimFraction'] as const) {
    if (!Number.isFinite(strategy[key]) || strategy[key] < 0) throw invalid(`strategy.${key}`, 'must be a finite number, 0 or more');
  }
  const privacy: FederatedPrivacy = { ...EMPTY_PRIVACY, ...req.privacy };
  if (privacy.mode === '') privacy.mode = 'none';
  if (privacy.mode !== 'none' && privacy.mode !== 'central-gaussian')
    throw invalid('privacy.mode', `must be none or central-gaussian (got ${JSON.stringify(privacy.mode)})`);
  for (const key of ['clippingNorm', 'targetQuantile', 'clippingLearningRate', 'noiseMultiplier', 'targetEpsilon', 'delta'] as const) {
    if (!Number.isFinite(privacy[key]) || privacy[key] < 0) throw invalid(`privacy.${key}`, 'must be a finite number, 0 or more');
  }
  if (privacy.mode === 'central-gaussian' && privacy.clippingNorm <= 0)
    throw invalid('privacy.clipping_norm', 'central-gaussian needs a clipping norm above 0');
  const asyncBufferSize = mode === 'async' ? intIn('async_buffer_size', req.asyncBufferSize, 1, clientsPerRound) : 0;
  const maxStaleness = mode === 'async' ? intIn('max_staleness', req.maxStaleness, 0, 1_000_000) : 0;
  if (mode === 'async' && minClients > asyncBufferSize)
    throw invalid('min_clients', 'async mode aggregates every async_buffer_size updates: min_clients must not be above it');
  const updateCompression = req.updateCompression === '' ? 'float32' : req.updateCompression;
  if (!isUpdateEncoding(updateCompression))
    throw invalid('update_compression', `must be float32, float16 or int8 (got ${JSON.stringify(req.updateCompression)})`);
  const maxUpdateNorm = req.maxUpdateNorm === 0 ? limits.maxUpdateNorm : finiteIn('max_update_norm', req.maxUpdateNorm, 1e-12, Number.MAX_VALUE);
  let gates: string[];
  try {
    gates = normalizeEvaluationGates(req.gates);
  } catch (err) {
    throw invalid('gates', err instanceof Error ? err.message : String(err));
  }
  return {
    model: req.model,
    baseVersion: req.baseVersion,
    cohortSelector: req.cohortSelector,
    rounds,
    clientsPerRound,
    minClients,
    overSelection,
    roundDeadlineMs: deadlineS * 1000,
    localEpochs,
    batchSize,
    learningRate,
    strategy,
    privacy,
    mode,
    asyncBufferSize,
    maxStaleness,
    updateCompression,
    maxUpdateNorm,
    gates,
    release: req.release,
  };
}

/** The spec back in the request's form (FederatedTask.spec on the wire). */
export function specToRequest(spec: FederatedSpec, clientRequestId = ''): StartFederatedTaskRequest {
  return {
    model: spec.model,
    baseVersion: spec.baseVersion,
    clientRequestId,
    cohortSelector: spec.cohortSelector,
    rounds: spec.rounds,
    clientsPerRound: spec.clientsPerRound,
    minClients: spec.minClients,
    overSelection: spec.overSelection,
    roundDeadlineSeconds: Math.round(spec.roundDeadlineMs / 1000),
    localEpochs: spec.localEpochs,
    batchSize: spec.batchSize,
    learningRate: spec.learningRate,
    strategy: { ...spec.strategy },
    privacy: { ...spec.privacy },
    mode: spec.mode,
    asyncBufferSize: spec.asyncBufferSize,
    maxStaleness: spec.maxStaleness,
    updateCompression: spec.updateCompression,
    maxUpdateNorm: spec.maxUpdateNorm,
    gates: [...spec.gates],
    release: spec.release,
  };
}
