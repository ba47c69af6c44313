import { z } from 'zod';
import { byteSize, duration, environmentLayer, layerConfig, parseConfig, readConfigFile } from '../common/config.js';
import { EXECUTION_PROVIDERS } from '../common/firmware-profile.js';

const cronExpression = z.string().regex(/^(\S+\s+){4,5}\S+$/, 'expected a cron expression (5 or 6 fields)');

/** The agent's configuration: one schema, validated once at start and frozen. */
export const agentConfigSchema = z
  .object({
    /** Required to enroll; afterwards the enrolled identity is authoritative. */
    deviceId: z.string().optional(),
    dataDir: z.string().min(1).default('./.driftline-agent'),
    /** The control plane's gRPC address, used to enroll. */
    server: z
      .string()
      .regex(/^[^\s/:]+:\d+$/, 'expected host:port')
      .default('127.0.0.1:7443'),
    serverCaFile: z.string().optional(),
    serverTls: z.boolean().default(false),
    enrollToken: z.string().optional(),
    /** A firmware profile name, or "auto" to detect it. */
    firmwareProfile: z.string().default('auto'),
    mqtt: z
      .object({
        /** Overrides the broker URL handed out at enrollment. */
        url: z
          .string()
          .regex(/^mqtts?:\/\//, 'expected mqtt:// or mqtts://')
          .optional(),
        caFile: z.string().optional(),
        keepalive: duration.prefault('30s'),
        reconnectMin: duration.prefault('1s'),
        reconnectMax: duration.prefault('60s'),
        connectTimeout: duration.prefault('10s'),
      })
      .strict()
      .prefault({})
      // Compiled once into what the MQTT uplink takes (Temporal's compiled options): milliseconds,
      // MQTT's keepalive in whole seconds, and a PUBACK waited for as long as a connect.
      .transform(({ url, caFile, keepalive, reconnectMin, reconnectMax, connectTimeout }) => ({
        url,
        caFile,
        keepaliveSeconds: Math.max(1, Math.round(keepalive / 1000)),
        reconnectMinMs: reconnectMin,
        reconnectMaxMs: reconnectMax,
        connectTimeoutMs: connectTimeout,
        publishTimeoutMs: connectTimeout,
      })),
    buffer: z
      .object({
        /** FULL: nothing committed is lost even on power loss. NORMAL: faster; the last commits may be lost on power loss. */
        synchronous: z.enum(['FULL', 'NORMAL']).default('FULL'),
        /**
         * How long a new record may wait for others before its group commit (one fsync for all of
         * them). Telemetry is acknowledged to nobody when it is recorded, so this only delays its
         * upload; what the uplink sends is always committed first. 0: commit at the end of each
         * event-loop turn.
         */
        commitDelay: duration.prefault('20ms').pipe(z.number().max(1_000, 'at most 1s: records wait for company, not for an upload')),
        /** Disk budget for buffered records (the firmware profile's buffer.diskBudget when absent); when full, the oldest records of the lowest-priority stream go (counted, reported). */
        maxBytes: byteSize.optional(),
        /** Hard ceiling for buffer.db itself (SQLite max_page_count): past it writes fail as on a full disk and the drop policy makes room. */
        maxFileBytes: byteSize.optional(),
        /** Per-stream record quotas (0: only the budget applies). */
        quotas: z
          .object({
            events: z.number().int().nonnegative().default(100_000),
            inference: z.number().int().nonnegative().default(2_000_000),
            system: z.number().int().nonnegative().default(100_000),
            samples: z.number().int().nonnegative().default(10_000),
          })
          .strict()
          .prefault({}),
        /** Records older than this are dropped (counted); 0: kept until acknowledged or evicted. */
        ttl: duration.prefault('7d'),
      })
      .strict()
      .prefault({})
      // Compiled once: the buffer takes this slice with millisecond names.
      .transform(({ commitDelay, ttl, ...rest }) => ({ ...rest, commitDelayMs: commitDelay, ttlMs: ttl })),
    uplink: z
      .object({
        maxBatchRecords: z.number().int().min(1).max(10_000).default(500),
        maxInflightBatches: z.number().int().min(1).max(64).default(4),
        batchDelay: duration.prefault('50ms'),
        ackTimeout: duration.prefault('15s'),
        /** Batches at least this large are deflated when that saves 10 % or more; 0: never. */
        compressMinBytes: byteSize.prefault('2KiB'),
        /** Upload cap in bytes per second, 0: none; the firmware profile's telemetry.uploadBytesPerSecond when absent. */
        maxBytesPerSecond: byteSize.optional(),
        /** While a backlog drains, every Nth batch carries the newest records; 0: strictly oldest first. */
        liveEvery: z.number().int().nonnegative().default(4),
      })
      .strict()
      .prefault({})
      // Compiled once: the uploader takes this slice as its options.
      .transform(({ batchDelay, ackTimeout, ...rest }) => ({ ...rest, batchDelayMs: batchDelay, ackTimeoutMs: ackTimeout })),
    localApi: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(7390),
        socketPath: z.string().optional(),
        /**
         * Largest request body; absent: derived from the active model's largest input (its shape,
         * as JSON numbers or raw bytes) and, for dynamic dimensions, the profile's memory budget.
         */
        maxBodyBytes: byteSize.optional(),
        /** Answered requests remembered for feedback (POST .../feedback); older ids are forgotten. */
        feedbackMemory: z.number().int().min(1).max(1_000_000).default(10_000),
      })
      .strict()
      .prefault({}),
    /** Overrides of the firmware profile's inference settings; absent fields come from the profile. */
    inference: z
      .object({
        /** Execution providers in order of preference (the profile's options for each are kept). */
        providers: z.array(z.enum(EXECUTION_PROVIDERS)).min(1).optional(),
        intraOpThreads: z.number().int().min(0).optional(),
        interOpThreads: z.number().int().min(0).optional(),
        /** Folder with an onnxruntime library built for this device (Jetson: for its JetPack). */
        libraryPath: z.string().min(1).optional(),
        batching: z
          .object({
            defaultBatch: z.number().int().min(1).optional(),
            maxBatch: z.number().int().min(1).optional(),
            maxQueueDelay: duration.optional(),
            maxQueue: z.number().int().min(1).optional(),
            concurrency: z.number().int().min(1).optional(),
          })
          .strict()
          .prefault({})
          .transform(({ maxQueueDelay, ...rest }) => ({ ...rest, maxQueueDelayMs: maxQueueDelay })),
        /** Deadline for each local API request; none when absent. */
        timeout: duration.optional(),
        /** A folder of firmware profiles instead of the shipped ones. */
        profilesDir: z.string().min(1).optional(),
      })
      .strict()
      .prefault({})
      // Compiled once: inferenceSettings() takes this slice as the profile's overrides.
      .transform(({ timeout, ...rest }) => ({ ...rest, timeoutMs: timeout })),
    /** Raw inputs and outputs kept for labelling and retraining, on the samples stream (the first evicted). */
    capture: z
      .object({
        /** Share of successful requests captured, 0 to 1. */
        sampleRate: z.number().min(0).max(1).default(0),
        /** Capture every failed request (what callers really send when it goes wrong). */
        errors: z.boolean().default(false),
        /** Larger samples are skipped and counted. */
        maxSampleBytes: byteSize.prefault('64KiB'),
      })
      .strict()
      .prefault({}),
    /**
     * The on-device learner (federated rounds, agent/learner/): labelled samples kept on the device
     * for local training and evaluation, whatever the upload capture does (a model marked
     * no-raw-capture still learns here; its raw data never leaves the device). The firmware
     * profile's learner section says when training may run.
     */
    learner: z
      .object({
        /** Keep local samples and answer federated invitations (the profile's learner.enabled must allow it too). */
        enabled: z.boolean().default(false),
        /** Share of answered one-row requests whose inputs are kept locally, 0 to 1. */
        sampleRate: z.number().min(0).max(1).default(1),
        /** Samples kept, oldest out first. */
        maxSamples: z.number().int().min(1).max(10_000_000).default(10_000),
        /** Bytes of inputs kept, oldest out first. */
        maxBytes: byteSize.prefault('64MiB'),
        /** Larger inputs are not kept. */
        maxSampleBytes: byteSize.prefault('64KiB'),
        /** Fewer labelled training samples than this: the device declines a round (LEARNER_NOT_ENOUGH_SAMPLES). */
        minSamples: z.number().int().min(1).default(32),
        /** Largest head artifact downloaded for a round. */
        maxHeadBytes: byteSize.prefault('64MiB'),
        /** Embeddings cached (per model sha256 and sample), newest kept. */
        embeddingCacheRows: z.number().int().min(0).default(20_000),
        /** Answers remembered per (task, round, kind), so a replayed invitation gets the same report without new work. */
        reportMemory: z.number().int().min(1).max(100_000).default(1_000),
      })
      .strict()
      .prefault({}),
    schedule: z
      .object({
        /** Reported state (heartbeat), with seconds: node-cron syntax; the firmware profile's when absent. */
        heartbeat: cronExpression.optional(),
        /** System metrics sample; the firmware profile's when absent. */
        system: cronExpression.optional(),
        /** Checks for unacknowledged telemetry to resend. */
        uplinkCheck: cronExpression.default('*/5 * * * * *'),
        /** Closes a drift window: its sketch goes up as telemetry. */
        driftWindow: cronExpression.default('*/15 * * * * *'),
        /** Buffer TTL, compaction and the report of records dropped by policy. */
        bufferMaintenance: cronExpression.default('0 * * * * *'),
      })
      .strict()
      .prefault({}),
    models: z
      .object({
        /**
         * Times an activation cut short by the process dying (kill -9, power loss) is tried again
         * after the restart before the release is refused as RELEASE_ACTIVATION_INTERRUPTED: a
         * model that kills the agent while loading crashes it this many times more, not forever.
         */
        activationRetries: z.number().int().min(0).max(10).default(1),
      })
      .strict()
      .prefault({}),
    shutdownGrace: duration.prefault('10s'),
    /** Largest model accepted; the firmware profile's when absent. */
    maxModelBytes: byteSize.optional(),
    logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  })
  .strict();

export type AgentConfig = z.output<typeof agentConfigSchema>;
export type AgentConfigInput = z.input<typeof agentConfigSchema>;

/** Environment variables the agent reads, and the setting each one sets. */
export const AGENT_ENVIRONMENT: Readonly<Record<string, (value: string) => Record<string, unknown>>> = {
  DRIFTLINE_AGENT_DEVICE_ID: (v) => ({ deviceId: v }),
  DRIFTLINE_AGENT_DATA_DIR: (v) => ({ dataDir: v }),
  DRIFTLINE_AGENT_SERVER: (v) => ({ server: v }),
  DRIFTLINE_AGENT_ENROLL_TOKEN: (v) => ({ enrollToken: v }),
  DRIFTLINE_AGENT_PROFILE: (v) => ({ firmwareProfile: v }),
  DRIFTLINE_AGENT_MQTT_URL: (v) => ({ mqtt: { url: v } }),
  DRIFTLINE_AGENT_LOCAL_PORT: (v) => ({ localApi: { port: Number(v) } }),
  DRIFTLINE_AGENT_LOG_LEVEL: (v) => ({ logLevel: v }),
};

/** Defaults < configuration file < environment < command-line flags. */
export function loadAgentConfig(options: { file?: string | undefined; env?: NodeJS.ProcessEnv; flags?: Record<string, unknown> }): Readonly<AgentConfig> {
  const fromFile = options.file ? readConfigFile(options.file) : {};
  const fromEnv = environmentLayer(options.env ?? {}, AGENT_ENVIRONMENT);
  const source = [
    options.file,
    Object.keys(fromEnv).length ? 'environment' : undefined,
    options.flags && Object.keys(options.flags).length ? 'flags' : undefined,
  ]
    .filter(Boolean)
    .join(' + ');
  // A file that is not an object is named alone: the environment and flags are not what is wrong.
  if (fromFile === null || typeof fromFile !== 'object' || Array.isArray(fromFile))
    return parseConfig(agentConfigSchema, fromFile, options.file ?? 'configuration');
  return parseConfig(agentConfigSchema, layerConfig(fromFile, fromEnv, options.flags), source || 'defaults');
}
