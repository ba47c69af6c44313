/**
 * A task's FederatedStrategy message → the ServerStrategy a round runs, after checking that its
 * settings are valid and safe for the round sizes the task asks for. Checked at task creation
 * (validateStrategy, with the quorum) so a task never fails at its first aggregation for a
 * setting it could have been refused for; createStrategy checks again without the sizes.
 */
import { DriftlineError } from '../../../common/errors.js';
import type { FederatedStrategy } from '../../../common/proto/driftline/v1/federated.js';
import { AdaptiveFedOpt, FEDADAM_DEFAULTS, FEDYOGI_DEFAULTS } from './adaptive.js';
import { FedAvg, FedAvgM } from './averaging.js';
import { krum, median, multiKrum, trimmedMean } from './robust.js';
import type { ServerStrategy } from './strategy.js';

export const STRATEGY_NAMES = ['fedavg', 'fedavgm', 'fedprox', 'fedadam', 'fedyogi', 'median', 'trimmed-mean', 'krum', 'multi-krum'] as const;
export type StrategyName = (typeof STRATEGY_NAMES)[number];

/** FedAvgM's defaults: server learning rate 1 and momentum 0.9 (Hsu et al. 2019; Flower's default momentum 0 would be plain FedAvg). */
export const FEDAVGM_DEFAULTS = { serverLearningRate: 1, momentum: 0.9 };
export const DEFAULT_TRIM_FRACTION = 0.1;
/** Robust rules hold every update of a round (and Krum n² distances): a round may not invite more. */
export const MAX_ROBUST_UPDATES_PER_ROUND = 1000;
const MAX_SERVER_LEARNING_RATE = 10;
const MAX_PROXIMAL_MU = 100;

/** The round sizes a strategy is checked against (async mode: the buffer size K for all three). */
export interface RoundSizes {
  /** Updates a round aims for. */
  clientsPerRound: number;
  /** The quorum: the fewest updates a round may aggregate. */
  minClients: number;
  /** The most updates one round can aggregate (clients_per_round with over-selection); default clientsPerRound. */
  maxUpdatesPerRound?: number;
}

const isStrategyName = (name: string): name is StrategyName => (STRATEGY_NAMES as readonly string[]).includes(name);

function invalid(message: string): never {
  throw new DriftlineError('FEDERATED_TASK_INVALID', message);
}

/** Fields each strategy reads; any other non-zero field is refused (a setting that would silently do nothing). */
const FIELDS_USED: Record<StrategyName, readonly (keyof FederatedStrategy)[]> = {
  fedavg: [],
  fedprox: ['proximalMu'],
  fedavgm: ['serverLearningRate', 'serverMomentum'],
  fedadam: ['serverLearningRate', 'serverMomentum', 'beta2', 'tau'],
  fedyogi: ['serverLearningRate', 'serverMomentum', 'beta2', 'tau'],
  median: [],
  'trimmed-mean': ['trimFraction'],
  krum: ['byzantineClients'],
  'multi-krum': ['byzantineClients', 'krumSelected'],
};

const PROTO_FIELD: Record<Exclude<keyof FederatedStrategy, 'name'>, string> = {
  serverLearningRate: 'strategy.server_learning_rate',
  serverMomentum: 'strategy.server_momentum',
  beta2: 'strategy.beta2',
  tau: 'strategy.tau',
  proximalMu: 'strategy.proximal_mu',
  trimFraction: 'strategy.trim_fraction',
  byzantineClients: 'strategy.byzantine_clients',
  krumSelected: 'strategy.krum_selected',
};

/** The spec's own checks (what needs no round sizes); returns the strategy's name. */
function checkSettings(spec: FederatedStrategy): StrategyName {
  const name = spec.name;
  if (!isStrategyName(name)) invalid(`strategy.name "${String(name).slice(0, 64)}" is not one of ${STRATEGY_NAMES.join(', ')}`);
  for (const [key, field] of Object.entries(PROTO_FIELD) as [Exclude<keyof FederatedStrategy, 'name'>, string][]) {
    const value = spec[key];
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) invalid(`${field} must be a finite number ≥ 0 (got ${String(value)})`);
    if (value !== 0 && !FIELDS_USED[name].includes(key)) invalid(`${field} does not apply to strategy ${name}; leave it 0`);
  }
  if (spec.serverLearningRate > MAX_SERVER_LEARNING_RATE)
    invalid(`strategy.server_learning_rate ${spec.serverLearningRate} is above ${MAX_SERVER_LEARNING_RATE}`);
  if (spec.serverMomentum >= 1) invalid(`strategy.server_momentum must be below 1 (got ${spec.serverMomentum})`);
  if (spec.beta2 >= 1) invalid(`strategy.beta2 must be below 1 (got ${spec.beta2})`);
  if (spec.tau > 1) invalid(`strategy.tau must be at most 1 (got ${spec.tau})`);
  if (name === 'fedprox' && !(spec.proximalMu > 0)) invalid('strategy.proximal_mu must be above 0 for fedprox (μ = 0 is fedavg)');
  if (spec.proximalMu > MAX_PROXIMAL_MU) invalid(`strategy.proximal_mu ${spec.proximalMu} is above ${MAX_PROXIMAL_MU}`);
  if (spec.trimFraction >= 0.5) invalid(`strategy.trim_fraction must be below 0.5 (it is cut from each side; got ${spec.trimFraction})`);
  if (!Number.isInteger(spec.byzantineClients)) invalid('strategy.byzantine_clients must be a whole number');
  if (!Number.isInteger(spec.krumSelected)) invalid('strategy.krum_selected must be a whole number');
  return name;
}

/**
 * Throws FEDERATED_TASK_INVALID (the message names the field) when the strategy's settings are
 * invalid or unsafe for rounds of these sizes: Krum needs n > 2f + 2 at the quorum, a trimmed mean
 * must cut at least one update per side at the quorum, robust rules hold every update so a round
 * is bounded.
 */
export function validateStrategy(spec: FederatedStrategy, sizes: RoundSizes): void {
  const name = checkSettings(spec);
  const { clientsPerRound, minClients } = sizes;
  const maxUpdates = sizes.maxUpdatesPerRound ?? clientsPerRound;
  if (!Number.isInteger(minClients) || minClients < 1) invalid(`min_clients must be a whole number ≥ 1 (got ${minClients})`);
  if (!Number.isInteger(clientsPerRound) || clientsPerRound < minClients)
    invalid(`clients_per_round (${clientsPerRound}) must be ≥ min_clients (${minClients})`);
  const robust = name === 'median' || name === 'trimmed-mean' || name === 'krum' || name === 'multi-krum';
  if (robust && maxUpdates > MAX_ROBUST_UPDATES_PER_ROUND) {
    invalid(
      `clients_per_round with over_selection allows ${maxUpdates} updates a round; ${name} holds every update and takes at most ${MAX_ROBUST_UPDATES_PER_ROUND}`,
    );
  }
  if (name === 'median' && minClients < 3) invalid(`min_clients ${minClients}: median needs at least 3 updates to outvote one bad update`);
  if (name === 'trimmed-mean') {
    const fraction = spec.trimFraction || DEFAULT_TRIM_FRACTION;
    if (Math.floor(fraction * minClients) < 1) {
      invalid(
        `strategy.trim_fraction ${fraction} cuts nothing from a round of min_clients ${minClients}; raise it to at least ${(1 / minClients).toFixed(3)} or raise min_clients`,
      );
    }
  }
  if (name === 'krum' || name === 'multi-krum') {
    const f = spec.byzantineClients;
    if (minClients <= 2 * f + 2) invalid(`strategy.byzantine_clients ${f}: krum needs more than 2f + 2 = ${2 * f + 2} updates, min_clients is ${minClients}`);
    if (name === 'multi-krum' && spec.krumSelected > minClients - f) {
      invalid(`strategy.krum_selected ${spec.krumSelected} is above min_clients − byzantine_clients = ${minClients - f}`);
    }
  }
}

/** The strategy a spec names, with its defaults filled in (validateStrategy first, at task creation). */
export function createStrategy(spec: FederatedStrategy): ServerStrategy {
  const name = checkSettings(spec);
  const or = (value: number, fallback: number): number => (value === 0 ? fallback : value);
  switch (name) {
    case 'fedavg':
      return new FedAvg('fedavg', 0);
    case 'fedprox':
      return new FedAvg('fedprox', spec.proximalMu);
    case 'fedavgm':
      return new FedAvgM(or(spec.serverLearningRate, FEDAVGM_DEFAULTS.serverLearningRate), or(spec.serverMomentum, FEDAVGM_DEFAULTS.momentum));
    case 'fedadam':
    case 'fedyogi': {
      const defaults = name === 'fedadam' ? FEDADAM_DEFAULTS : FEDYOGI_DEFAULTS;
      return new AdaptiveFedOpt(name, {
        serverLearningRate: or(spec.serverLearningRate, defaults.serverLearningRate),
        beta1: or(spec.serverMomentum, defaults.beta1),
        beta2: or(spec.beta2, defaults.beta2),
        tau: or(spec.tau, defaults.tau),
      });
    }
    case 'median':
      return median();
    case 'trimmed-mean':
      return trimmedMean(or(spec.trimFraction, DEFAULT_TRIM_FRACTION));
    case 'krum':
      return krum(spec.byzantineClients);
    case 'multi-krum':
      return multiKrum(spec.byzantineClients, spec.krumSelected);
  }
}

/** A FederatedStrategy message with every number at its default (for callers building one by name). */
export const strategySpec = (name: string, settings: Partial<Omit<FederatedStrategy, 'name'>> = {}): FederatedStrategy => ({
  name,
  serverLearningRate: 0,
  serverMomentum: 0,
  beta2: 0,
  tau: 0,
  proximalMu: 0,
  trimFraction: 0,
  byzantineClients: 0,
  krumSelected: 0,
  ...settings,
});
