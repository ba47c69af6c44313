import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { systemClock, type Clock } from '../common/clock.js';
import { asDriftlineError, DriftlineError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { Outcome } from '../common/proto/driftline/v1/device_link.js';
import { DRIFTLINE_VERSION } from '../common/version.js';
import type { AgentConfig } from './config.js';
import { SqliteBuffer } from './buffer/sqlite-buffer.js';
import { artifactCredential, readIdentity, writeIdentity, type DeviceIdentity } from './enrollment/identity.js';
import { InferenceEngine } from './inference/engine.js';
import { registerInferenceMetrics } from './inference/metrics.js';
import { preloadOnnxRuntimeLibrary } from './inference/onnxruntime-library.js';
import { chooseProfile, type HostProbe } from './profiles/detect.js';
import { systemHostProbe } from './profiles/host-probe.js';
import { inferenceSettings, providersForModel, providerWarnings } from './profiles/inference-settings.js';
import { loadFirmwareProfiles } from '../common/firmware-profile.js';
import { checkLocalApiPort, startLocalApi, type LocalApi } from './local-api/server.js';
import { runGoldenSelfTest } from './models/golden-self-test.js';
import { ModelSet } from './models/model-set.js';
import { desiredModelsOf } from '../common/device-protocol/model-set.js';
import { PinnedRoot } from './trust/pinned-root.js';
import { ensurePrivateDir } from '../common/private-files.js';
import { Stream } from '../common/proto/driftline/v1/device_link.js';
import { dropAttributes } from './buffer/ports.js';
import { DriftMonitors } from './drift/monitor.js';
import type { InferenceService } from './inference/engine.js';
import { HostSensors } from './telemetry/host-sensors.js';
import { SampleCapture, type CaptureOutcome } from './telemetry/sample-capture.js';
import { TelemetryRecorder } from './telemetry/recorder.js';
import { TelemetryUploader } from './telemetry/uploader.js';
import { createUplink } from './uplink/create-uplink.js';
import type { Uplink } from './uplink/ports.js';
import { createScheduler, type ScheduledTask } from './schedule.js';
import { component, Lifecycle } from '../common/lifecycle.js';
import { DropReporter } from './buffer/drop-report.js';
import { CommandHandler } from './commands.js';
import { downlinkDispatcher } from './downlink.js';
import { DriftReferences } from './drift/references.js';
import { agentHealth } from './health.js';
import { agentPaths } from './paths.js';
import { isSingleExecutable } from './native-addons.js';
import { reportedModels, stateReporter } from './reported-state.js';
import { repositoryIndex } from './local-api/routes.js';
import { FederatedReport } from '../common/proto/driftline/v1/device_link.js';
import { join } from 'node:path';
import { InferenceLatency } from './learner/inference-latency.js';
import { FederatedLearner, type LearnerStats } from './learner/learner.js';
import type { SampleStoreStats } from './learner/ports.js';
import { SqliteLearnerStore } from './learner/sqlite/learner-store.js';
import { HttpHeadSource } from './learner/http/head-download.js';
import { OnnxBackboneSource } from './learner/onnxruntime/backbone.js';

export type AgentState = 'starting' | 'running' | 'stopping' | 'stopped';

export interface AgentStats {
  recordsEnqueued: number;
  recordsAcknowledged: number;
  recordsDropped: number;
  bufferDepth: number;
}

export interface AgentHandle {
  readonly deviceId: string;
  /** Record accounting; after shutdown, the final figures. */
  stats(): AgentStats;
  readonly localApiUrl: string;
  readonly state: AgentState;
  /** The on-device learner, when config.learner.enabled: what it did per invitation, and its sample store. */
  readonly learner: { stats(): LearnerStats; samples(): SampleStoreStats } | undefined;
  reportState(): Promise<void>;
  shutdown(): Promise<void>;
}

/** A cron schedule of the agent, by its name in config.schedule. */
export type ScheduleName = keyof AgentConfig['schedule'];

const DOWNLOAD_TIMEOUT_MS = 10 * 60_000;
const ENROLL_TIMEOUT_MS = 15_000;

/**
 * Enrolls the device if it has to, then composes buffer, uplink, inference, model manager and
 * local API into one ordered list of components: started in order, stopped in reverse within
 * the configured shutdownGrace. The behaviour lives in the parts; nothing here handles signals:
 * the entry point does.
 */
export async function startAgent(
  config: Readonly<AgentConfig>,
  /** onFatal: the agent cannot go on (its device was decommissioned); the entry point shuts it down and exits. */
  deps: {
    logger: Logger;
    clock?: Clock;
    /**
     * The clock a cron schedule waits on, by its name in config.schedule; the agent's clock for
     * those not named. A test hands the schedules it fires itself a ManualClock and advances it.
     */
    scheduleClocks?: Partial<Record<ScheduleName, Clock>>;
    hostProbe?: HostProbe;
    onFatal?: (err: DriftlineError) => void;
  },
): Promise<AgentHandle> {
  const { logger } = deps;
  const clock = deps.clock ?? systemClock;
  const startedAt = clock.now();
  const paths = agentPaths(config.dataDir);
  let state: AgentState = 'starting';
  let finalDepth: number | undefined;
  // Before anything is created or an enrollment token spent: a local API port that is taken fails the start now.
  await checkLocalApiPort(config.localApi);
  // Created or tightened to 0700: it holds the device's credential and its buffered telemetry.
  ensurePrivateDir(paths.dataDir);

  // The firmware profile (named, or detected from the host's facts) supplies providers, threads, batching and limits; config overrides.
  const hostFacts = await (deps.hostProbe ?? systemHostProbe()).facts();
  const profileChoice = chooseProfile(config.firmwareProfile, loadFirmwareProfiles(config.inference.profilesDir), hostFacts);
  const profile = profileChoice.profile;
  const firmwareProfile = profile.name;
  const inference = inferenceSettings(profile, { ...config.inference, maxModelBytes: config.maxModelBytes });
  // A device-specific onnxruntime (Jetson) must be in the process before onnxruntime-node's binding loads.
  // Without it the agent still serves, on onnxruntime-node's own library, and says why.
  const warnings = [...profileChoice.warnings];
  if (inference.libraryPath !== undefined) {
    try {
      logger.info({ library: preloadOnnxRuntimeLibrary(inference.libraryPath) }, 'onnxruntime library loaded');
    } catch (err) {
      warnings.push(`${err instanceof Error ? err.message : String(err)}; serving with onnxruntime-node's own library`);
      inference.libraryPath = undefined;
    }
  }
  const { createOnnxRuntime } = await import('./inference/onnxruntime-runtime.js');
  // Models run on a worker thread, so an inference never stops the event loop that serves the
  // local API, the buffer and the uplink. The single executable keeps them on the main thread:
  // its onnxruntime-node JavaScript lives only inside the embedded bundle, which a worker
  // thread cannot load (it would need a second embedded entry point).
  const runtime = createOnnxRuntime({
    logger,
    libraryPath: inference.libraryPath,
    thread: isSingleExecutable() ? 'main' : 'worker',
    // The event loop shares the cores with onnxruntime's threads: spinning ones would take them between runs.
    spinning: false,
  });
  const providerNames = inference.providers.map((p) => p.name);
  warnings.push(...providerWarnings(inference, runtime.availableProviders(), hostFacts));
  logger.info(
    { firmwareProfile, reason: profileChoice.reason, providers: providerNames, batching: inference.batching, maxModelBytes: inference.maxModelBytes },
    'firmware profile',
  );
  for (const warning of warnings) logger.warn({ firmwareProfile }, warning);
  const identity = await ensureIdentity(config, firmwareProfile, logger, clock);
  const deviceId = identity.deviceId;
  const { quotas, ...bufferOptions } = config.buffer;
  // Disk budget and upload cap: the firmware profile's unless the configuration sets them.
  const bufferBudgetBytes = config.buffer.maxBytes ?? profile.buffer.diskBudget;
  const uploadBytesPerSecond = config.uplink.maxBytesPerSecond ?? profile.telemetry.uploadBytesPerSecond;
  const buffer = SqliteBuffer.open({
    ...bufferOptions,
    file: paths.buffer,
    limits: {
      maxBytes: bufferBudgetBytes,
      maxRecords: {
        [Stream.STREAM_EVENTS]: quotas.events,
        [Stream.STREAM_INFERENCE]: quotas.inference,
        [Stream.STREAM_SYSTEM]: quotas.system,
        [Stream.STREAM_SAMPLES]: quotas.samples,
      },
      ttlMs: config.buffer.ttlMs,
    },
    clock,
  });
  const droppedAtStart = buffer.droppedTotal();
  logger.info({ deviceId, boot: buffer.boot, firmwareProfile }, 'agent starting');

  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });
  new Gauge({
    name: 'driftline_agent_buffer_depth',
    help: 'Telemetry records waiting for acknowledgement',
    registers: [metrics],
    collect() {
      this.set(buffer.depth());
    },
  });

  const uplink: Uplink = createUplink({ mqtt: config.mqtt, identity, logger });
  new Gauge({
    name: 'driftline_agent_uplink_connected',
    help: '1 when connected to the broker',
    registers: [metrics],
    collect() {
      this.set(uplink.connected ? 1 : 0);
    },
  });
  const uploader = new TelemetryUploader({ ...config.uplink, buffer, uplink, clock, logger, maxBytesPerSecond: uploadBytesPerSecond });
  const recorder = new TelemetryRecorder(buffer, clock, logger, () => uploader.notify());
  const hostSensors = new HostSensors({ accelerator: profile.accelerator });

  // Drift: each model's reference is kept per version, so a restart or rollback finds it again; one monitor per model served.
  const drift = new DriftMonitors(recorder, clock, logger);
  const references = new DriftReferences(buffer.state, logger);
  const syncDrift = (): void => {
    drift.setModels(engine.models().map((m) => ({ name: m.name, version: m.version, reference: references.forModel(m.name, m.version) })));
  };
  const dropReports = new DropReporter(buffer, (drops, byModel) =>
    recorder.event('buffer.dropped', 'telemetry records dropped by the buffer policy', dropAttributes(drops, byModel)),
  );
  const maintainBuffer = (): void => {
    try {
      buffer.maintain();
    } catch (err) {
      logger.warn({ err }, 'buffer maintenance failed');
    }
    dropReports.check();
  };

  // The on-device learner (federated rounds): its samples in learner.db, apart from the buffer.
  const learnerStore = config.learner.enabled
    ? SqliteLearnerStore.open({
        file: paths.learner,
        maxSamples: config.learner.maxSamples,
        maxBytes: config.learner.maxBytes,
        maxSampleBytes: config.learner.maxSampleBytes,
        embeddingCacheRows: config.learner.embeddingCacheRows,
        reportMemory: config.learner.reportMemory,
      })
    : undefined;
  const inferenceLatency = new InferenceLatency(clock);

  const inferenceMetrics = registerInferenceMetrics(metrics);
  const engine = await InferenceEngine.create({
    runtime,
    providers: inference.providers,
    intraOpThreads: inference.intraOpThreads,
    interOpThreads: inference.interOpThreads,
    batching: inference.batching,
    // Models of the set load only while they fit the budget beside the others (measured after the load).
    memoryBudgetBytes: profile.inference.memoryBudget,
    logger,
    clock,
    observer: {
      onInference(rec) {
        inferenceMetrics.onInference(rec);
        if (rec.ok) inferenceLatency.observe(rec.latencyMs);
        recorder.inference({
          model: rec.model,
          version: rec.version,
          provider: rec.provider,
          latencyMs: rec.latencyMs,
          outcome: rec.ok ? Outcome.OUTCOME_OK : Outcome.OUTCOME_ERROR,
          errorCode: rec.errorCode ?? '',
          topClass: rec.topClass ?? -1,
          confidence: rec.confidence ?? 0,
          batchSize: rec.batchSize,
        });
      },
    },
  });

  const models = new ModelSet({
    modelsDir: paths.models,
    // Each model on the providers the profile's inference.modelProviders rules give it (the chain by default).
    host: {
      load: (model) => engine.load({ ...model, providers: providersForModel(inference, model.name) }),
      unload: (name) => engine.unload(name),
      model: (name) => engine.model(name),
    },
    state: buffer.state,
    artifactBaseUrl: identity.artifactBaseUrl,
    credential: artifactCredential(identity),
    downloadTimeoutMs: DOWNLOAD_TIMEOUT_MS,
    activationRetries: config.models.activationRetries,
    maxModelBytes: inference.maxModelBytes,
    logger,
    clock,
    // Signed releases: verified against the root pinned at enrollment (none pinned: unsigned mode).
    trust: PinnedRoot.open(paths.dataDir),
    // What a release's constraints are checked against: the firmware profile's facts.
    device: {
      deviceId,
      arch: profile.arch,
      providers: providerNames,
      memoryBytes: profile.inference.memoryBudget,
      flags: [profile.name, profile.accelerator],
    },
    selfTest: (path, golden) => runGoldenSelfTest(runtime, providerNames, path, golden),
    onChange(change) {
      void recorder.event(change.kind, change.error?.message ?? `${change.model.name} v${change.model.version}`, {
        model: change.model.name,
        version: String(change.model.version),
        ...(change.error ? { code: change.error.code } : {}),
      });
      syncDrift();
      void reportState();
    },
  });
  const reportState = stateReporter(
    uplink,
    () => ({
      firmwareProfile,
      activeModel: engine.active(),
      bufferDepth: buffer.depth(),
      boot: buffer.boot,
      startedAtMs: startedAt,
      nowMs: clock.now(),
      models: reportedModels(models.entries(), (name) => engine.model(name)),
      desiredRevision: models.desiredRevision,
      lastError: models.error,
      droppedRecords: recorder.dropped + buffer.droppedTotal(),
      warnings,
    }),
    logger,
  );
  // Only now: restoring may finish an interrupted activation, and its onChange reports the state.
  await models.restore().catch((err: unknown) => logger.error({ err }, 'could not restore the previously active models'));
  syncDrift();

  const learner = learnerStore
    ? new FederatedLearner({
        samples: learnerStore,
        embeddings: learnerStore,
        reports: learnerStore.reportMemory(),
        backbones: new OnnxBackboneSource((name, version) => {
          const served = engine.model(name);
          return served && served.version === version ? { path: join(paths.models, `${served.sha256}.onnx`), sha256: served.sha256 } : undefined;
        }),
        heads: new HttpHeadSource({
          artifactBaseUrl: identity.artifactBaseUrl,
          credential: artifactCredential(identity),
          dir: paths.learnerHeads,
          maxHeadBytes: config.learner.maxHeadBytes,
          timeoutMs: DOWNLOAD_TIMEOUT_MS,
        }),
        publish: (report) => uplink.publish('federated', FederatedReport.encode(report).finish()),
        latency: inferenceLatency,
        guards: profile.learner,
        minSamples: config.learner.minSamples,
        maxSamplesPerRound: config.learner.maxSamples,
        temperature: () => hostSensors.read().then((reading) => reading.temperatureC),
        clock,
        logger,
      })
    : undefined;

  const commands = new CommandHandler({ clock, boot: buffer.boot, reportState, publishResult: (result) => uplink.publish('result', result) });
  uplink.onMessage(
    downlinkDispatcher({
      logger,
      desired(desired) {
        for (const model of desiredModelsOf(desired)) {
          if (model.driftReference) references.remember(model.name, model.version, model.driftReference);
        }
        void models.apply(desired).then(() => {
          syncDrift();
          return reportState();
        });
      },
      command: (payload) => commands.handle(payload),
      ...(learner ? { federated: (invitation) => learner.handle(invitation) } : {}),
    }),
  );
  uplink.onStatus((status) => {
    if (status.type === 'connected') {
      logger.info('connected to the control plane broker');
      void reportState();
    } else if (status.type === 'reconnecting') {
      logger.info({ attempt: status.attempt, delayMs: status.delayMs }, 'broker unreachable; reconnecting');
    } else if (status.type === 'refused') {
      const err = new DriftlineError(
        'DEVICE_DECOMMISSIONED',
        `the control plane refused device ${deviceId} (${status.message}): it was decommissioned; enroll it again with a new token from \`driftline devices token ${deviceId}\``,
      );
      logger.error({ deviceId }, err.message);
      deps.onFatal?.(err);
    }
  });

  // The components in start order; shutdown runs it backwards within config.shutdownGrace.
  const lifecycle = new Lifecycle({
    clock,
    onShutdownError(name, err) {
      const error = asDriftlineError(err);
      if (error.code === 'SHUTDOWN_GRACE_EXPIRED') logger.warn({ component: name, graceMs: error.details?.graceMs }, 'shutdown grace expired; forced');
      else logger.error({ component: name, err }, 'component failed to shut down');
    },
  });
  // Closed last, also when the grace is spent: it commits what is still waiting.
  const closeBuffer = (): Promise<void> => {
    // The agent's last figures, taken once nothing records any more.
    finalDepth ??= buffer.depth();
    return buffer.close();
  };
  lifecycle.add(component('buffer', { drain: closeBuffer, force: closeBuffer }, clock));
  lifecycle.add(
    component(
      'inference-engine',
      {
        drain: async (graceMs) => {
          await engine.shutdown({ graceMs });
          // The engine waited its grace for the runs in flight: any still running were given up.
          await runtime.close({ graceMs: 0 });
        },
        force: () => runtime.close({ graceMs: 0 }),
      },
      clock,
    ),
  );
  if (learner && learnerStore) {
    // Stopped before the engine and the uplink: training stops at its next slice, the store commits what it queued.
    const stopLearner = async (): Promise<void> => {
      await learner.shutdown();
      learnerStore.close();
    };
    lifecycle.add(component('learner', { drain: stopLearner, force: async () => learnerStore.close() }, clock));
  }
  lifecycle.add(component('uplink', { drain: () => uplink.shutdown() }, clock));
  // The last report, after the drain, so the control plane sees what stays buffered.
  lifecycle.add(component('final-state-report', { drain: () => (uploader.stop(), reportState()) }, clock));
  lifecycle.add(
    component(
      'telemetry',
      {
        async drain(graceMs) {
          // The last drift window goes up with the rest.
          drift.flush();
          recorder.flush();
          // Drain: give acknowledged delivery a chance before going; what is left stays buffered.
          const drained = await uploader.drain(graceMs);
          if (!drained) logger.warn({ remaining: buffer.depth() }, 'shutting down with unacknowledged telemetry; it stays buffered for the next start');
          return drained;
        },
        force: () => uploader.stop(),
      },
      clock,
    ),
  );
  let localApi: LocalApi | undefined;
  lifecycle.add(
    component(
      'local-api',
      {
        async run() {
          localApi = await startLocalApi({
            ...config.localApi,
            engine: observed(
              engine,
              drift,
              new SampleCapture(config.capture),
              recorder,
              learnerStore && {
                store: learnerStore,
                capture: new SampleCapture({ sampleRate: config.learner.sampleRate, errors: false, maxSampleBytes: config.learner.maxSampleBytes }),
              },
            ),
            health: () =>
              agentHealth({
                state,
                deviceId,
                boot: buffer.boot,
                uplinkConnected: uplink.connected,
                bufferDepth: buffer.depth(),
                bufferBytes: buffer.usedBytes(),
                bufferBudgetBytes,
                uploadBytesPerSecond,
                recordsEnqueued: recorder.enqueued,
                recordsDropped: recorder.dropped,
                recordsAcknowledged: uploader.stats.recordsAcknowledged,
                activeModel: engine.active(),
                firmwareProfile,
                warnings,
                inferenceQueue: engine.queueStats(),
              }),
            metrics,
            logger,
            repository: () => repositoryIndex(models.entries(), engine.models()),
            memoryBudgetBytes: profile.inference.memoryBudget,
            inferTimeoutMs: config.inference.timeoutMs,
            // Applications label answered requests by response id; each label is one record on the inference stream.
            // Labels also join the learner's local samples (by request id): its training data, which never leaves the device.
            feedback: {
              memory: config.localApi.feedbackMemory,
              record: (label) => {
                learnerStore?.label(label.requestId, label.model, label.label);
                return recorder.label(label);
              },
              clock,
            },
            clock,
          });
        },
        drain: (graceMs) => localApi?.close(graceMs),
      },
      clock,
    ),
  );
  const scheduler = createScheduler({ clock, onError: (task, err) => logger.warn({ task, err }, 'scheduled task failed') });
  const every = (schedule: ScheduleName, expression: string, name: string, task: () => unknown): Promise<ScheduledTask> =>
    scheduler.every(expression, name, task, deps.scheduleClocks?.[schedule]);
  let tasks: ScheduledTask[] = [];
  lifecycle.add(
    component(
      'schedules',
      {
        async run() {
          tasks = await Promise.all([
            every('heartbeat', config.schedule.heartbeat ?? profile.telemetry.heartbeat, 'heartbeat', () => reportState()),
            every('system', config.schedule.system ?? profile.telemetry.system, 'system-metrics', () =>
              hostSensors.read().then((host) => recorder.system(config.dataDir, host)),
            ),
            every('uplinkCheck', config.schedule.uplinkCheck, 'uplink-check', () => uploader.checkTimeouts()),
            every('driftWindow', config.schedule.driftWindow, 'drift-window', () => drift.flush()),
            every('bufferMaintenance', config.schedule.bufferMaintenance, 'buffer-maintenance', maintainBuffer),
          ]);
        },
        drain: async () => {
          for (const task of tasks) await task.destroy();
        },
      },
      clock,
    ),
  );
  // Connecting comes last, once everything a desired state or a command reaches is up (its shutdown is the uplink's, above).
  lifecycle.add(component('uplink-connect', { run: () => uplink.start() }, clock));
  await lifecycle.run();
  void recorder.event('agent.started', `driftline-agent ${DRIFTLINE_VERSION}`, { boot: String(buffer.boot), profile: firmwareProfile });
  state = 'running';
  const localApiUrl = localApi!.url;
  logger.info({ deviceId, localApi: localApiUrl }, 'agent ready');

  let stopping: Promise<void> | undefined;
  return {
    deviceId,
    localApiUrl,
    get state() {
      return state;
    },
    reportState,
    learner: learner && learnerStore ? { stats: () => learner.stats(), samples: () => learnerStore.stats() } : undefined,
    stats: () => ({
      recordsEnqueued: recorder.enqueued,
      recordsAcknowledged: uploader.stats.recordsAcknowledged,
      // Refused by the buffer, plus dropped by its policy during this run.
      recordsDropped: recorder.dropped + buffer.droppedTotal() - droppedAtStart,
      bufferDepth: finalDepth ?? buffer.depth(),
    }),
    shutdown() {
      stopping ??= (async () => {
        state = 'stopping';
        await lifecycle.shutdown(config.shutdownGrace);
        finalDepth ??= buffer.depth();
        state = 'stopped';
        logger.info('agent stopped');
      })();
      return stopping;
    },
  };
}

/**
 * The engine as the local API sees it: every answer also feeds its model's drift monitor, the
 * sample capture and, when the learner is on, the learner's local samples (one-row requests
 * only: a label names one answer).
 */
function observed(
  engine: InferenceService,
  drift: DriftMonitors,
  capture: SampleCapture,
  recorder: TelemetryRecorder,
  learner: { store: SqliteLearnerStore; capture: SampleCapture } | undefined,
): InferenceService {
  return {
    active: () => engine.active(),
    models: () => engine.models(),
    model: (name) => engine.model(name),
    queueStats: (name) => engine.queueStats(name),
    async infer(model, inputs, options) {
      const started = performance.now();
      const keepSample = (outcome: Omit<CaptureOutcome, 'requestId'>): void => {
        const sample = capture.consider(inputs, { ...outcome, requestId: options?.requestId });
        if (sample) recorder.sample(sample);
      };
      try {
        const result = await engine.infer(model, inputs, options);
        drift.observe(result.model, result.version, inputs, result.outputs, performance.now() - started, true, result.probabilities);
        keepSample({ model: result.model, version: result.version, outputs: result.outputs });
        if (learner && options?.requestId && inputs.every((input) => input.shape[0] === 1)) {
          const local = learner.capture.consider(inputs, { model: result.model, version: result.version, outputs: [], requestId: options.requestId });
          if (local) learner.store.add({ id: options.requestId, model: result.model, version: result.version, inputs: local.inputs });
        }
        return result;
      } catch (err) {
        const active = engine.model(model);
        if (active) {
          drift.observe(active.name, active.version, inputs, undefined, performance.now() - started, false);
          keepSample({ model: active.name, version: active.version, errorCode: asDriftlineError(err).code });
        }
        throw err;
      }
    },
  };
}

async function ensureIdentity(config: Readonly<AgentConfig>, firmwareProfile: string, logger: Logger, clock: Clock): Promise<DeviceIdentity> {
  const existing = readIdentity(config.dataDir);
  if (existing && !config.enrollToken) {
    if (config.deviceId && config.deviceId !== existing.deviceId) {
      throw new DriftlineError('CONFIG_INVALID', `this data folder belongs to device ${existing.deviceId}, not ${config.deviceId}`);
    }
    return existing;
  }
  if (!config.enrollToken || !config.deviceId) {
    throw new DriftlineError('CONFIG_INVALID', 'the agent is not enrolled: pass --device-id and --enroll-token (from `driftline devices token <id>`)');
  }
  // gRPC (grpc-js and the fleet API's generated client) is loaded only to enroll: an enrolled
  // device never holds it in memory (bench:agent-footprint).
  const { enrollOverGrpc } = await import('./enrollment/grpc-enrollment.js');
  const response = await enrollOverGrpc({
    server: config.server,
    tls: config.serverTls,
    caFile: config.serverCaFile,
    token: config.enrollToken,
    deviceId: config.deviceId,
    firmwareProfile,
    agentVersion: DRIFTLINE_VERSION,
    timeoutMs: ENROLL_TIMEOUT_MS,
  });
  const identity: DeviceIdentity = {
    deviceId: response.deviceId,
    credential: { kind: 'mqtt-password', username: response.mqttUsername, password: response.mqttPassword },
    uplinkUrl: response.mqttUrl,
    artifactBaseUrl: response.artifactBaseUrl,
    enrolledAtMs: clock.now(),
  };
  // The root handed out at enrollment is checked before anything is written: a device that
  // cannot pin it must not come up in unsigned mode.
  const pinned = PinnedRoot.open(config.dataDir);
  const root = response.rootMetadata.length > 0 && !pinned.current() ? pinned.verifyForPinning(response.rootMetadata, clock) : undefined;
  writeIdentity(config.dataDir, identity);
  if (root) pinned.pin(root, clock);
  else if (response.rootMetadata.length === 0) logger.warn('the control plane has no trust root: this device accepts unsigned models');
  logger.info({ deviceId: identity.deviceId }, 'enrolled; credential stored');
  return identity;
}
