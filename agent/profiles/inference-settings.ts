import {
  executionProviderSchema,
  modelMatches,
  type ExecutionProvider,
  type ExecutionProviderName,
  type FirmwareProfile,
  type ModelProviderRule,
} from '../../common/firmware-profile.js';
import type { BatchingOptions } from '../inference/batcher.js';
import { missingProviderFact, type HostFacts } from './detect.js';

/**
 * Whether the agent's onnxruntime thread pools spin-wait for work between operators (onnxruntime's
 * default is to spin). The event loop shares the cores with onnxruntime's threads: spinning ones
 * would take them between runs. Here so the agent and bench/inference.ts's same-options baseline
 * read one value.
 */
export const AGENT_ORT_SPINNING = false;

/** What the agent's configuration may override in the profile's inference settings. */
export interface InferenceOverrides {
  providers?: readonly ExecutionProviderName[] | undefined;
  intraOpThreads?: number | undefined;
  interOpThreads?: number | undefined;
  libraryPath?: string | undefined;
  maxModelBytes?: number | undefined;
  batching?: Partial<BatchingOptions> | undefined;
}

export interface InferenceSettings {
  providers: ExecutionProvider[];
  /** undefined: onnxruntime's own choice (one thread per core). */
  intraOpThreads: number | undefined;
  interOpThreads: number | undefined;
  batching: BatchingOptions;
  maxModelBytes: number;
  libraryPath: string | undefined;
  /** The profile's inference.modelProviders rules (empty: every model on providers). */
  modelProviders: ModelProviderRule[];
}

/** The profile's settings with the configuration's overrides on top; a provider named in config keeps the profile's options for it. */
export function inferenceSettings(profile: FirmwareProfile, overrides: InferenceOverrides = {}): InferenceSettings {
  const fromProfile = profile.inference;
  const providers = overrides.providers
    ? overrides.providers.map((name) => fromProfile.providers.find((p) => p.name === name) ?? executionProviderSchema.parse({ name }))
    : [...fromProfile.providers];
  const threads = (n: number | undefined) => (n === undefined || n === 0 ? undefined : n);
  const b = fromProfile.batching;
  return {
    providers,
    intraOpThreads: threads(overrides.intraOpThreads ?? fromProfile.intraOpThreads),
    interOpThreads: threads(overrides.interOpThreads ?? fromProfile.interOpThreads),
    batching: {
      defaultBatch: overrides.batching?.defaultBatch ?? b.defaultBatch,
      maxBatch: overrides.batching?.maxBatch ?? b.maxBatch,
      maxQueueDelayMs: overrides.batching?.maxQueueDelayMs ?? b.maxQueueDelay,
      maxQueue: overrides.batching?.maxQueue ?? b.maxQueue,
      concurrency: overrides.batching?.concurrency ?? b.concurrency,
    },
    maxModelBytes: overrides.maxModelBytes ?? fromProfile.maxModelBytes,
    libraryPath: overrides.libraryPath ?? profile.onnxruntime.libraryPath,
    modelProviders: [...(fromProfile.modelProviders ?? [])],
  };
}

/**
 * The providers of one model of the set: those of the first inference.modelProviders rule that
 * matches its name, in the rule's order and with the chain's options for each; the chain when no
 * rule matches (or none is set, the default).
 */
export function providersForModel(settings: Pick<InferenceSettings, 'providers' | 'modelProviders'>, model: string): ExecutionProvider[] {
  const rule = settings.modelProviders.find((r) => modelMatches(r.model, model));
  if (!rule) return settings.providers;
  return rule.providers.map((name) => settings.providers.find((p) => p.name === name) ?? executionProviderSchema.parse({ name }));
}

/**
 * One warning per provider in the chain that this onnxruntime does not have, naming the
 * fact that applies here: models will fall back along the chain, and the operator sees why.
 */
export function providerWarnings(
  settings: Pick<InferenceSettings, 'providers' | 'libraryPath'>,
  available: readonly string[],
  facts: Pick<HostFacts, 'arch' | 'platform'>,
): string[] {
  const fallback = settings.providers.find((p) => available.includes(p.name))?.name;
  return settings.providers
    .filter((p) => !available.includes(p.name))
    .map(
      (p) =>
        `execution provider ${p.name} is not available, models will run on ${fallback ?? 'no provider'}: ${missingProviderFact(p.name, facts, settings.libraryPath).message}`,
    );
}
