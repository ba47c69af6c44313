import { z } from 'zod';
import { byteSize, duration, parseConfig } from '../common/config.js';

const tlsFiles = z
  .object({
    cert: z.string().min(1).describe('PEM certificate chain file'),
    key: z.string().min(1).describe('PEM private key file'),
    clientCa: z.string().min(1).optional().describe('PEM CA bundle; when set, clients must present a certificate it signed (mTLS)'),
  })
  .strict();

const port = z.number().int().min(0).max(65535);

/** Configuration of `driftline serve`: one schema, validated once and frozen. */
export const controlPlaneConfigSchema = z
  .object({
    dataDir: z.string().min(1),
    grpc: z
      .object({ host: z.string().default('127.0.0.1'), port: port.default(7443), tls: tlsFiles.optional() })
      .strict()
      .prefault({}),
    http: z
      .object({ host: z.string().default('127.0.0.1'), port: port.default(7480) })
      .strict()
      .prefault({}),
    mqtt: z
      .object({
        /** When set, use this external broker (Mosquitto, EMQX, HiveMQ) instead of the embedded one. */
        url: z
          .string()
          .regex(/^mqtts?:\/\//, 'expected mqtt:// or mqtts://')
          .optional(),
        username: z.string().optional(),
        password: z.string().optional(),
        caFile: z.string().optional(),
        /** Shared-subscription group so several control-plane replicas split the ingest on an external broker. */
        sharedGroup: z
          .string()
          .regex(/^[A-Za-z0-9_-]+$/)
          .default('driftline'),
        host: z.string().default('127.0.0.1'),
        port: port.default(1883),
        tls: tlsFiles.omit({ clientCa: true }).optional(),
        /** The broker URL handed to devices at enrollment; defaults to the broker's own address. */
        advertisedUrl: z
          .string()
          .regex(/^mqtts?:\/\//)
          .optional(),
        maxPacketBytes: byteSize.prefault('1MiB'),
        /** Embedded broker: largest packet, and total bytes, a connection may send before it has logged in (a CONNECT is a few hundred bytes). */
        maxConnectPacketBytes: byteSize.prefault('8KiB'),
        /** Embedded broker: connections accepted but not yet logged in, at most. */
        maxPendingConnections: z.number().int().positive().default(1000),
        /** Embedded broker: a connection that has not logged in within this is closed. */
        connectTimeout: duration.prefault('10s'),
        /** Embedded broker: at most one log line per refusal reason per interval, with a count of those left out. */
        refusalLogInterval: duration.prefault('10s'),
      })
      .strict()
      .prefault({})
      // Compiled once into each device link's own options (Temporal's compiled options): the
      // external broker's when url is set, the embedded broker's (durations in milliseconds).
      .transform((m) => ({
        external: m.url === undefined ? undefined : { url: m.url, username: m.username, password: m.password, caFile: m.caFile, sharedGroup: m.sharedGroup },
        embedded: {
          host: m.host,
          port: m.port,
          tls: m.tls,
          maxPacketBytes: m.maxPacketBytes,
          maxConnectPacketBytes: m.maxConnectPacketBytes,
          maxPendingConnections: m.maxPendingConnections,
          connectTimeoutMs: m.connectTimeout,
          refusalLogIntervalMs: m.refusalLogInterval,
        },
        advertisedUrl: m.advertisedUrl,
      })),
    /** Base URL devices use to download artifacts; defaults to the HTTP listener's own address. */
    advertisedHttpUrl: z.string().url().optional(),
    enrollmentTokenTtl: duration.prefault('24h'),
    ingest: z
      .object({
        /** Records a telemetry batch may hold; counted on the wire before any is decoded (PAYLOAD_TOO_MANY_ENTRIES). */
        maxRecordsPerBatch: z.number().int().positive().default(10_000),
        /** A deflated batch may inflate to at most this; inflation stops there (PAYLOAD_TOO_LARGE). */
        maxInflatedBytes: byteSize.prefault('64MiB'),
        /** Largest reported state (up/state) and command result (up/result) accepted. */
        maxStateBytes: byteSize.prefault('64KiB'),
        maxResultBytes: byteSize.prefault('64KiB'),
        /** Entries a reported state's warnings and a command result's outputs may hold. */
        maxStateWarnings: z.number().int().positive().default(64),
        /** Models a reported state may list (active_models). */
        maxStateModels: z.number().int().positive().default(64),
        maxResultOutputs: z.number().int().positive().default(256),
        /** Per-device token bucket over every message a device sends up; over it, refused before decoding (DEVICE_RATE_LIMITED). */
        deviceRate: z
          .object({
            messagesPerSecond: z.number().positive().default(50),
            burst: z.number().int().positive().default(500),
          })
          .strict()
          .prefault({}),
        /** Refusals are logged at most once per this interval per device (with the counts since the last line). */
        refusalLogInterval: duration.prefault('1m'),
        /** A device's last-seen time is written at most once per this (instead of a store commit per message). */
        lastSeenResolution: duration.prefault('1s'),
      })
      .strict()
      .prefault({}),
    /** How long telemetry is kept: raw records by arrival, rollups by bucket. */
    telemetry: z
      .object({
        rawRetention: duration.prefault('7d'),
        minuteRollupRetention: duration.prefault('48h'),
        hourRollupRetention: duration.prefault('90d'),
        pruneInterval: duration.prefault('10m'),
      })
      .strict()
      .prefault({}),
    /** Captured samples (inputs and outputs the agents' capture policy sends up, joined with their labels): their own retention and disk budget. */
    samples: z
      .object({
        /** Samples (and labels still waiting for their sample) older than this are dropped, counted. */
        maxAge: duration.prefault('30d'),
        /** Bytes the kept samples may take; over it the oldest are dropped, counted (never a silent disk fill). */
        maxBytes: byteSize.prefault('1GiB'),
        /** A sample whose input or output tensor is larger is refused at ingest (SAMPLE_TOO_LARGE), counted. */
        maxTensorBytes: byteSize.prefault('1MiB'),
      })
      .strict()
      .prefault({}),
    /** Dataset snapshots of the captured samples. */
    datasets: z
      .object({
        /** Rows a snapshot may hold (its replayed parent rows included); more is refused (DATASET_TOO_LARGE) before it is built. */
        maxRows: z.number().int().positive().default(1_000_000),
      })
      .strict()
      .prefault({}),
    /** Fleet drift tests on merged sketches. */
    drift: z
      .object({
        /** Window drift status covers when a request names none. */
        window: duration.prefault('15m'),
        /** Windows up to this long use 1-minute buckets, longer ones 1-hour buckets. */
        minuteBucketsUpTo: duration.prefault('6h'),
        /** A longer window tested alongside (Bonferroni over the two), so a small persistent shift is named; 0: off. */
        longWindow: duration.prefault('24h'),
        /** Effect floors: a significant feature below both is below_floor, not drifted. A model's reference policy overrides these. */
        psiWarn: z.number().positive().default(0.1),
        /** Severity: a drifted feature with PSI at or above this alerts its cohort. */
        psiAlert: z.number().positive().default(0.2),
        jensenShannon: z.number().positive().default(0.1),
        /** Significance after Benjamini-Hochberg correction across features. */
        alpha: z.number().gt(0).lt(1).default(0.05),
        /** Importance-weighted share of drifted features at which the dataset counts as drifted (alert). */
        datasetShare: z.number().gt(0).max(1).default(0.5),
        /** Floor under the minimum rows from the test's power. */
        minRows: z.number().int().positive().default(50),
        /** Power against a psiAlert shift of one feature that sets the minimum rows of a verdict. */
        power: z.number().gt(0).lt(1).default(0.8),
        /** What significant-but-below-the-floors features make of the verdict. */
        belowFloor: z.enum(['ok', 'warn']).default('ok'),
        /** Relative feature importance at which one severely drifted feature alerts (0: any feature). */
        severeImportance: z.number().min(0).max(1).default(0),
        /** Hysteresis: a lower status is recorded only after this many evaluations in a row agree. */
        clearAfter: z.number().int().positive().default(3),
        /** How often the drift watcher re-evaluates every version and cohort and records status changes as events. */
        evaluateInterval: duration.prefault('30s'),
        /** How long drift events are kept. */
        eventRetention: duration.prefault('90d'),
      })
      .strict()
      .prefault({}),
    rollout: z
      .object({
        /** How often the rollout driver moves rollouts along (bakes end, gates are judged). */
        tickInterval: duration.prefault('5s'),
        /** How often `rollout status --watch` streams refreshed device counts. */
        watchInterval: duration.prefault('1s'),
        /** Lifetime of the signed rollback directive an aborted rollout sends (with online rollback signing). */
        rollbackTtl: duration.prefault('7d'),
      })
      .strict()
      .prefault({}),
    /** Retraining triggers: the watcher that applies each model's retraining policy (`driftline training policy`). */
    retraining: z
      .object({
        /** How often schedules and labelled-sample counts are checked (drift alerts are heard as they are recorded). */
        tickInterval: duration.prefault('1m'),
        /** On the first start, drift events this far back are considered. */
        driftCatchUp: duration.prefault('24h'),
        /** A schedule moment missed while the control plane was down still fires within this. */
        scheduleCatchUp: duration.prefault('1h'),
        /** How long trigger decisions are kept (each model's last fired one always stays). */
        decisionRetention: duration.prefault('180d'),
      })
      .strict()
      .prefault({}),
    /** Training jobs (TrainingService) and the GPU workers that lease them (WorkerService). */
    training: z
      .object({
        /** A lease not heartbeated within this expires: the sweep re-queues its job (a worker heartbeats at a third of it). */
        leaseTtl: duration.prefault('60s'),
        /** How often expired leases are swept (and candidates left unjudged by a stopped control plane are judged). */
        sweepInterval: duration.prefault('10s'),
        /** How long a worker that found nothing to lease waits before asking again. */
        workerPollInterval: duration.prefault('10s'),
        /** Attempts of a job that names none. */
        defaultMaxAttempts: z.number().int().min(1).max(100).default(3),
        /** How long an attempt of a job that names none may run before its worker stops the trainer. */
        defaultMaxDuration: duration.prefault('6h'),
        /** Largest candidate a worker may upload (UploadCandidate); a larger one is refused (PAYLOAD_TOO_LARGE) before a byte is stored. */
        maxCandidateBytes: byteSize.prefault('1GiB'),
        /** A test split with fewer labelled rows makes the evaluation gates that read it inconclusive. */
        minSplitRows: z.number().int().positive().default(50),
        /** Trainer log lines kept per job (the oldest go first). */
        maxLogLinesPerJob: z.number().int().positive().max(1_000_000).default(5000),
      })
      .strict()
      .prefault({}),
    /** Federated tasks (FederatedService): rounds over the devices' own samples. */
    federated: z
      .object({
        /** An update larger than this on the wire is refused (FEDERATED_UPDATE_TOO_LARGE) before it is decoded. */
        maxUpdateBytes: byteSize.prefault('16MiB'),
        /** The round deadline of a task that names none. */
        defaultRoundDeadline: duration.prefault('10m'),
        /** Most rounds a task may ask for. */
        maxRounds: z.number().int().min(1).max(100_000).default(1000),
        /** Most clients per round a task may ask for (over-selection included): bounds a round's kept updates. */
        maxClientsPerRound: z.number().int().min(1).max(1_000_000).default(1000),
        /** Updates with a larger L2 norm are refused (FEDERATED_UPDATE_NORM) when a task names no max_update_norm. */
        maxUpdateNorm: z.number().positive().default(1000),
        /** How often round deadlines are checked. */
        tickInterval: duration.prefault('1s'),
        /** How often WatchFederatedTask re-reads a task it has no event for. */
        watchInterval: duration.prefault('1s'),
      })
      .strict()
      .prefault({}),
    /** Signed releases: the root metadata (from `driftline keys init`) and, opted in, the online rollback key. */
    trust: z
      .object({
        /** The keys folder's root/ (every root.v<N>.json) or one root file. Without it releases are unsigned. */
        root: z.string().min(1).optional(),
        /** Online signing of rollback directives only: the rollback key file (encrypted at rest when it was created with a passphrase). */
        rollbackKey: z.string().min(1).optional(),
        /** Environment variable holding the rollback key's passphrase. */
        rollbackKeyPassphraseEnv: z.string().default('DRIFTLINE_ROLLBACK_KEY_PASSPHRASE'),
        /**
         * Opt-in online signing of scoped canaries (control-plane/registry/release-signing.ts): the
         * automation key file from `driftline keys create-automation`, always encrypted at rest.
         * Without it a released candidate waits for `driftline models sign`.
         */
        automationKey: z.string().min(1).optional(),
        /** Environment variable holding the automation key's passphrase. */
        automationKeyPassphraseEnv: z.string().default('DRIFTLINE_AUTOMATION_KEY_PASSPHRASE'),
        /** Warn (at start, in /healthz) when the root expires within this. */
        expiryWarning: duration.prefault('30d'),
        /** How often the trust warnings are re-evaluated (the root's expiry approaches while serve runs). */
        checkInterval: duration.prefault('10m'),
      })
      .strict()
      .prefault({}),
    /** A device counts as online when it was seen within this window. */
    onlineWindow: duration.prefault('90s'),
    maxModelBytes: byteSize.prefault('2GiB'),
    shutdownGrace: duration.prefault('10s'),
  })
  .strict();

export type ControlPlaneConfig = z.output<typeof controlPlaneConfigSchema>;
export type ControlPlaneConfigInput = z.input<typeof controlPlaneConfigSchema>;

export const parseControlPlaneConfig = (input: unknown, source = 'control-plane options'): Readonly<ControlPlaneConfig> =>
  parseConfig(controlPlaneConfigSchema, input, source);
