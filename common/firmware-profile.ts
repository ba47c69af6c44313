import { readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { byteSize, duration } from './config.js';
import { DriftlineError } from './errors.js';

/**
 * A firmware profile says what a class of device can do and how the agent should use it:
 * the execution-provider chain, threads, batching, memory and disk budgets, telemetry
 * cadence. One schema for the agent (which picks and applies a profile) and the control
 * plane (which checks that a release fits the devices it targets).
 */

export const PROFILE_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const EXECUTION_PROVIDERS = ['tensorrt', 'cuda', 'cpu'] as const;
export type ExecutionProviderName = (typeof EXECUTION_PROVIDERS)[number];

const deviceId = z.number().int().min(0).default(0);
const cronExpression = z.string().regex(/^(\S+\s+){4,5}\S+$/, 'expected a cron expression (5 or 6 fields)');

export const executionProviderSchema = z.discriminatedUnion('name', [
  z
    .object({
      name: z.literal('tensorrt'),
      deviceId,
      /** Build engines in half precision where the GPU supports it. */
      fp16: z.boolean().default(false),
      /** TensorRT builder workspace. */
      workspaceSize: byteSize.optional(),
      /** Where built engines are cached, so a restart does not rebuild them (minutes on a Jetson). */
      engineCacheDir: z.string().min(1).optional(),
    })
    .strict(),
  z
    .object({
      name: z.literal('cuda'),
      deviceId,
      /** Upper bound for the CUDA memory arena. */
      memoryLimit: byteSize.optional(),
    })
    .strict(),
  z.object({ name: z.literal('cpu') }).strict(),
]);
export type ExecutionProvider = z.output<typeof executionProviderSchema>;

export const batchingSchema = z
  .object({
    /** A batch runs as soon as this many rows wait (1: run whenever a run slot is free). */
    defaultBatch: z.number().int().min(1),
    /** The most rows one run takes; 1 turns micro-batching off. */
    maxBatch: z.number().int().min(1),
    /** How long the first waiting request may wait for others before a smaller batch runs. */
    maxQueueDelay: duration,
    /** Requests waiting per model beyond which new ones get INFERENCE_OVERLOADED. */
    maxQueue: z.number().int().min(1),
    /** Runs in flight at once per model. */
    concurrency: z.number().int().min(1).default(1),
  })
  .strict()
  .refine((b) => b.defaultBatch <= b.maxBatch, { message: 'defaultBatch must not exceed maxBatch', path: ['defaultBatch'] });
export type BatchingPolicy = z.output<typeof batchingSchema>;

/** A model name, or a glob of them with * (any run of characters) and ? (one character). */
const MODEL_GLOB = /^[a-z0-9*?][a-z0-9._*?-]{0,63}$/;

/**
 * Which providers serve a model of a device's set: the first rule whose model (a name or glob)
 * matches wins, and its providers, in order, replace the profile's chain for that model (each
 * with the options the chain gives it). A model no rule matches runs on the chain.
 */
export const modelProviderRuleSchema = z
  .object({
    model: z.string().regex(MODEL_GLOB, 'expected a model name or a glob such as detector-*'),
    providers: z
      .array(z.enum(EXECUTION_PROVIDERS))
      .min(1)
      .refine((names) => new Set(names).size === names.length, { message: 'each provider appears once' }),
  })
  .strict();
export type ModelProviderRule = z.output<typeof modelProviderRuleSchema>;

/** Whether a model name matches a rule's name or glob. */
export function modelMatches(pattern: string, model: string): boolean {
  // MODEL_GLOB leaves '.' as the one character to escape.
  const regex = new RegExp(`^${pattern.replace(/\./g, '\\.').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return regex.test(model);
}

/** "HH:MM-HH:MM" in UTC; a window whose end is before its start runs past midnight. */
const TIME_WINDOW = /^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$/;

/**
 * When and how much the on-device learner (agent/learner/) may train for federated rounds.
 * Training shares the device with inference, which always comes first.
 */
export const learnerGuardsSchema = z
  .object({
    /** Whether this class of device takes part in federated rounds at all. */
    enabled: z.boolean().default(true),
    /** UTC windows ("01:00-05:00") in which training may start; empty: any time. */
    timeWindows: z.array(z.string().regex(TIME_WINDOW, 'expected a UTC window such as 01:00-05:00')).default([]),
    /** No training while the hottest sensor reads above this (°C); absent: no temperature guard. */
    maxTemperatureC: z.number().min(0).max(150).optional(),
    /** Training starts only while local inference runs below this many requests per second (over the last minute); absent: no idle guard. */
    maxInferencesPerSecond: z.number().nonnegative().optional(),
    /** CPU time one round's work may take (embeddings and training); past it the work stops with LEARNER_BUDGET_EXCEEDED. */
    cpuTimePerRound: duration.prefault('60s'),
    /** Memory one round's work may take (embeddings, head copies, optimizer state), checked before the work starts. */
    memoryPerRound: byteSize.prefault('256MiB'),
    /** Training pauses while inference p95 during training exceeds this multiple of the p95 before it. */
    inferenceP95Factor: z.number().positive().default(1.5),
    /** How long one such pause lasts before training tries again. */
    pause: duration.prefault('200ms'),
    /** Training batches run between two yields to the event loop (inference's answers, the uplink). */
    batchesPerSlice: z.number().int().min(1).max(1000).default(4),
  })
  .strict();
export type LearnerGuards = z.output<typeof learnerGuardsSchema>;

export const firmwareProfileSchema = z
  .object({
    name: z.string().regex(PROFILE_NAME, 'expected a profile name such as jetson-orin-nano-jp6'),
    description: z.string().min(1),
    arch: z.enum(['x86_64', 'arm64']),
    accelerator: z.enum(['none', 'nvidia-gpu', 'nvidia-jetson']),
    /** Facts that identify this hardware; a profile without them is only chosen by name or as the fallback. */
    detect: z
      .object({
        /** Substrings of /proc/device-tree/model, any of which matches. */
        deviceTreeModel: z.array(z.string().min(1)).min(1).optional(),
        /** Prefix of /etc/nv_tegra_release, e.g. "# R36" for JetPack 6. */
        tegraRelease: z.string().min(1).optional(),
        /** nvidia-smi must be on the host. */
        nvidiaSmi: z.boolean().optional(),
      })
      .strict()
      .optional(),
    onnxruntime: z
      .object({
        /**
         * A folder holding an onnxruntime shared library (libonnxruntime.so.1) built for this
         * device, loaded instead of the one onnxruntime-node ships. The prebuilt linux-arm64
         * library is CPU-only (microsoft/onnxruntime#21232), so Jetson needs a JetPack build.
         */
        libraryPath: z.string().min(1).optional(),
      })
      .strict()
      .prefault({}),
    inference: z
      .object({
        /** Tried in order; the first that loads a model serves it, and the fallback is reported. */
        providers: z.array(executionProviderSchema).min(1),
        intraOpThreads: z.number().int().min(0),
        interOpThreads: z.number().int().min(0),
        /** Memory the models may use together. */
        memoryBudget: byteSize,
        /** Largest model file the agent accepts. */
        maxModelBytes: byteSize,
        batching: batchingSchema,
        /** Providers per model of the device's set, by name or glob (first match wins); absent: every model runs on providers. */
        modelProviders: z.array(modelProviderRuleSchema).optional(),
      })
      .strict()
      .refine((i) => new Set(i.providers.map((p) => p.name)).size === i.providers.length, { message: 'each provider appears once', path: ['providers'] }),
    buffer: z.object({ diskBudget: byteSize }).strict(),
    /** node-cron expressions with seconds, as in the agent's schedule configuration. */
    telemetry: z
      .object({
        /** Reported state. */
        heartbeat: cronExpression,
        /** System metrics sample. */
        system: cronExpression,
        /** Telemetry upload cap in bytes per second; 0: none. */
        uploadBytesPerSecond: byteSize.prefault(0),
      })
      .strict(),
    /** The on-device learner's guards; every field has a default. */
    learner: learnerGuardsSchema.prefault({}),
  })
  .strict();

export type FirmwareProfile = z.output<typeof firmwareProfileSchema>;
export type FirmwareProfileInput = z.input<typeof firmwareProfileSchema>;

/** The folder of profiles that ships with Driftline. */
export const SHIPPED_PROFILES_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'firmware-profiles');

/** The profile for hardware nothing else matches, per CPU architecture. */
export const FALLBACK_PROFILES = { x86_64: 'generic-x86_64-cpu', arm64: 'generic-arm64-cpu' } as const;

export function parseFirmwareProfile(input: unknown, source: string): FirmwareProfile {
  const result = firmwareProfileSchema.safeParse(input);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new DriftlineError('PROFILE_INVALID', `invalid firmware profile ${source}:\n  ${problems.join('\n  ')}`, { details: { source, problems } });
  }
  return result.data;
}

/** Reads one YAML profile; its name must match its file name. */
export function readFirmwareProfile(path: string): FirmwareProfile {
  let input: unknown;
  try {
    input = parseYaml(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new DriftlineError('PROFILE_INVALID', `cannot read firmware profile ${path}: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
      details: { source: path },
    });
  }
  const profile = parseFirmwareProfile(input, path);
  const expected = basename(path).replace(/\.ya?ml$/, '');
  if (profile.name !== expected) {
    throw new DriftlineError('PROFILE_INVALID', `firmware profile ${path} is named ${profile.name}; the file must be ${profile.name}.yaml`, {
      details: { source: path },
    });
  }
  return profile;
}

/** Every profile in a folder, by name; any invalid one fails the whole load. */
export function loadFirmwareProfiles(dir: string = SHIPPED_PROFILES_DIR): ReadonlyMap<string, FirmwareProfile> {
  let files: string[];
  try {
    files = readdirSync(dir)
      .filter((f) => /\.ya?ml$/.test(f))
      .sort();
  } catch (err) {
    throw new DriftlineError('PROFILE_INVALID', `cannot read the firmware profiles folder ${dir}`, { cause: err });
  }
  const profiles = new Map<string, FirmwareProfile>();
  for (const file of files) {
    const profile = readFirmwareProfile(join(dir, file));
    profiles.set(profile.name, profile);
  }
  for (const fallback of Object.values(FALLBACK_PROFILES)) {
    if (!profiles.has(fallback))
      throw new DriftlineError('PROFILE_INVALID', `the firmware profiles folder ${dir} has no ${fallback} profile, which unknown hardware falls back to`);
  }
  return profiles;
}
