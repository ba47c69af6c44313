import { join } from 'node:path';
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { systemClock, type Clock } from '../common/clock.js';
import { asDriftlineError, DriftlineError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { Command, CommandResult, DesiredState, Outcome, ReportedState } from '../common/proto/driftline/v1/device_link.js';
import { DRIFTLINE_VERSION } from '../common/version.js';
import type { AgentConfig } from './config.js';
import { SqliteBuffer } from './buffer/sqlite-buffer.js';
import { artifactCredential, readIdentity, writeIdentity, type DeviceIdentity } from './enrollment/identity.js';
import { InferenceEngine } from './inference/engine.js';
import { registerInferenceMetrics } from './inference/metrics.js';
import { preloadOnnxRuntimeLibrary } from './inference/onnxruntime-library.js';
import { chooseProfile, type HostProbe } from './profiles/detect.js';
import { systemHostProbe } from './profiles/host-probe.js';
import { inferenceSettings, providerWarnings } from './profiles/inference-settings.js';
import { loadFirmwareProfiles } from '../common/firmware-profile.js';
import { checkLocalApiPort, startLocalApi } from './local-api/server.js';
import { runGoldenSelfTest } from './models/golden-self-test.js';
import { ModelManager } from './models/model-manager.js';
import { PinnedRoot } from './trust/pinned-root.js';
import { parseReference, type DriftReference } from '../common/drift/reference.js';
import { ensurePrivateDir } from '../common/private-files.js';
import { Stream } from '../common/proto/driftline/v1/device_link.js';
import { dropAttributes } from './buffer/ports.js';
import { DriftMonitor } from './drift/monitor.js';
import type { InferenceService } from './inference/engine.js';
import { HostSensors } from './telemetry/host-sensors.js';
import { SampleCapture, type CaptureOutcome } from './telemetry/sample-capture.js';
import { TelemetryRecorder } from './telemetry/recorder.js';
import { TelemetryUploader } from './telemetry/uploader.js';
import { createUplink } from './uplink/create-uplink.js';
import type { Uplink } from './uplink/ports.js';
import { schedule, type ScheduledTask } from './schedule.js';

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
  reportState(): Promise<void>;
  shutdown(): Promise<void>;
}

const DOWNLOAD_TIMEOUT_MS = 10 * 60_000;
const ENROLL_TIMEOUT_MS = 15_000;

/**
 * Enrolls the device if it has to, then wires buffer, uplink, inference, model manager
 * and local API together. Nothing here handles signals: the entry point does.
 */
export async function startAgent(
  config: Readonly<AgentConfig>,
  /** onFatal: the agent cannot go on (its device was decommissioned); the entry point shuts it down and exits. */
  deps: { logger: Logger; clock?: Clock; hostProbe?: HostProbe; onFatal?: (err: DriftlineError) => void },
): Promise<AgentHandle> {
  const { logger } = deps;
  const clock = deps.clock ?? systemClock;
  const startedAt = clock.now();
  let state: AgentState = 'starting';
  let finalDepth: number | undefined;
  // Before anything is created or an enrollment token spent: a local API port that is taken fails the start now.
  await checkLocalApiPort(config.localApi);
  // Created or tightened to 0700: it holds the device's credential and its buffered telemetry.
  ensurePrivateDir(config.dataDir);

  // The firmware profile (named, or detected from the host's facts) supplies providers, threads, batching and limits; config overrides.
  const hostFacts = await (deps.hostProbe ?? systemHostProbe()).facts();
  const profileChoice = chooseProfile(config.firmwareProfile, loadFirmwareProfiles(config.inference.profilesDir), hostFacts);
  const firmwareProfile = profileChoice.profile.name;
  const inference = inferenceSettings(profileChoice.profile, {
    ...config.inference,
    batching: { ...config.inference.batching, maxQueueDelayMs: config.inference.batching.maxQueueDelay },
    maxModelBytes: config.maxModelBytes,
  });
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
  const runtime = createOnnxRuntime({ logger, libraryPath: inference.libraryPath });
  const providerNames = inference.providers.map((p) => p.name);
  warnings.push(...providerWarnings(inference, runtime.availableProviders(), hostFacts));
  logger.info({ firmwareProfile, reason: profileChoice.reason, providers: providerNames, batching: inference.batching, maxModelBytes: inference.maxModelBytes }, 'firmware profile');
  for (const warning of warnings) logger.warn({ firmwareProfile }, warning);
  const identity = await ensureIdentity(config, firmwareProfile, logger, clock);
  const deviceId = identity.deviceId;
  const { quotas } = config.buffer;
  // Disk budget and upload cap: the firmware profile's unless the configuration sets them.
  const bufferBudgetBytes = config.buffer.maxBytes ?? profileChoice.profile.buffer.diskBudget;
  const uploadBytesPerSecond = config.uplink.maxBytesPerSecond ?? profileChoice.profile.telemetry.uploadBytesPerSecond;
  const buffer = SqliteBuffer.open({
    file: join(config.dataDir, 'buffer.db'),
    synchronous: config.buffer.synchronous,
    commitDelayMs: config.buffer.commitDelay,
    maxFileBytes: config.buffer.maxFileBytes,
    limits: {
      maxBytes: bufferBudgetBytes,
      maxRecords: { [Stream.STREAM_EVENTS]: quotas.events, [Stream.STREAM_INFERENCE]: quotas.inference, [Stream.STREAM_SYSTEM]: quotas.system, [Stream.STREAM_SAMPLES]: quotas.samples },
      ttlMs: config.buffer.ttl,
    },
    clock,
  });
  const droppedAtStart = buffer.droppedTotal();
  logger.info({ deviceId, boot: buffer.boot, firmwareProfile }, 'agent starting');

  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });
  new Gauge({ name: 'driftline_agent_buffer_depth', help: 'Telemetry records waiting for acknowledgement', registers: [metrics], collect() { this.set(buffer.depth()); } });

  const uplink: Uplink = createUplink({ mqtt: config.mqtt, identity, logger });
  new Gauge({ name: 'driftline_agent_uplink_connected', help: '1 when connected to the broker', registers: [metrics], collect() { this.set(uplink.connected ? 1 : 0); } });
  const uploader = new TelemetryUploader({
    buffer,
    uplink,
    clock,
    logger,
    maxBatchRecords: config.uplink.maxBatchRecords,
    maxInflightBatches: config.uplink.maxInflightBatches,
    batchDelayMs: config.uplink.batchDelay,
    ackTimeoutMs: config.uplink.ackTimeout,
    compressMinBytes: config.uplink.compressMinBytes,
    maxBytesPerSecond: uploadBytesPerSecond,
    liveEvery: config.uplink.liveEvery,
  });
  const recorder = new TelemetryRecorder(buffer, clock, logger, () => uploader.notify());
  const hostSensors = new HostSensors({ accelerator: profileChoice.profile.accelerator });

  // Drift: the desired model's reference is kept per version, so a restart or rollback finds it again.
  const drift = new DriftMonitor(recorder, clock, logger);
  const referenceKey = (name: string, version: number): string => `drift.reference:${name}@${version}`;
  const parsedReferences = new Map<string, DriftReference | undefined>();
  const syncDrift = (): void => {
    const active = engine.active();
    const json = active ? buffer.getState(referenceKey(active.name, active.version)) : undefined;
    if (json !== undefined && !parsedReferences.has(json)) {
      try {
        parsedReferences.set(json, parseReference(json));
      } catch (err) {
        logger.warn({ err }, 'the model\'s drift reference is invalid; drift sketches are off for it');
        parsedReferences.set(json, undefined);
      }
    }
    drift.setModel(active?.name ?? '', active?.version ?? 0, json === undefined ? undefined : parsedReferences.get(json));
  };
  let reportedDrops = JSON.stringify(buffer.dropped());
  const maintainBuffer = (): void => {
    try {
      buffer.maintain();
    } catch (err) {
      logger.warn({ err }, 'buffer maintenance failed');
    }
    // Records the policy dropped are themselves reported, as an event with the running counts.
    const drops = JSON.stringify(buffer.dropped());
    if (drops !== reportedDrops) {
      reportedDrops = drops;
      // The report is a record too: in a full buffer it pushes an older one out (in its own
      // commit). Such drops count but do not trigger a report of their own, or an idle agent
      // offline would report, and drop, once a tick for as long as it is offline.
      void recorder.event('buffer.dropped', 'telemetry records dropped by the buffer policy', dropAttributes(buffer.dropped())).then(() => {
        reportedDrops = JSON.stringify(buffer.dropped());
      });
    }
  };

  const inferenceMetrics = registerInferenceMetrics(metrics);
  const engine = await InferenceEngine.create({
    runtime,
    providers: inference.providers,
    intraOpThreads: inference.intraOpThreads,
    interOpThreads: inference.interOpThreads,
    batching: inference.batching,
    logger,
    clock,
    observer: {
      onInference(rec) {
        inferenceMetrics.onInference(rec);
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

  const models = new ModelManager({
    modelsDir: join(config.dataDir, 'models'),
    host: engine,
    state: buffer,
    artifactBaseUrl: identity.artifactBaseUrl,
    credential: artifactCredential(identity),
    downloadTimeoutMs: DOWNLOAD_TIMEOUT_MS,
    activationRetries: config.models.activationRetries,
    maxModelBytes: inference.maxModelBytes,
    logger,
    clock,
    // Signed releases: verified against the root pinned at enrollment (none pinned: unsigned mode).
    trust: PinnedRoot.open(config.dataDir),
    // What a release's constraints are checked against: the firmware profile's facts.
    device: {
      deviceId,
      arch: profileChoice.profile.arch,
      providers: providerNames,
      memoryBytes: profileChoice.profile.inference.memoryBudget,
      flags: [profileChoice.profile.name, profileChoice.profile.accelerator],
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
  await models.restore().catch((err: unknown) => logger.error({ err }, 'could not restore the previously active model'));
  syncDrift();

  async function reportState(): Promise<void> {
    if (!uplink.connected) return;
    const active = engine.active();
    const error = models.error;
    const reported: ReportedState = {
      agentVersion: DRIFTLINE_VERSION,
      firmwareProfile,
      activeModel: active ? { name: active.name, version: active.version, sha256: active.sha256, provider: active.provider } : undefined,
      bufferDepth: buffer.depth(),
      boot: buffer.boot,
      uptimeS: Math.round((clock.now() - startedAt) / 1000),
      desiredRevision: models.desiredRevision,
      lastErrorCode: error?.code ?? '',
      lastError: error?.message ?? '',
      droppedRecords: recorder.dropped + buffer.droppedTotal(),
      reportedAtMs: clock.now(),
      warnings,
    };
    await uplink.publish('state', ReportedState.encode(reported).finish()).catch((err: unknown) => logger.debug({ err }, 'state report not sent'));
  }

  const seenCommands = new Set<string>();
  async function runCommand(payload: Buffer): Promise<void> {
    const command = Command.decode(payload);
    // Replayed commands are answered again but not executed twice.
    const replay = seenCommands.has(command.id);
    seenCommands.add(command.id);
    if (seenCommands.size > 1024) seenCommands.delete(seenCommands.values().next().value!);
    let result: CommandResult;
    if (command.expiresAtMs > 0 && command.expiresAtMs < clock.now()) {
      result = { id: command.id, ok: false, errorCode: 'REQUEST_INVALID', message: 'command expired', output: {} };
    } else if (command.kind === 'ping') {
      result = { id: command.id, ok: true, errorCode: '', message: 'pong', output: { boot: String(buffer.boot) } };
    } else if (command.kind === 'report-state') {
      if (!replay) await reportState();
      result = { id: command.id, ok: true, errorCode: '', message: 'state reported', output: {} };
    } else {
      result = { id: command.id, ok: false, errorCode: 'REQUEST_INVALID', message: `unknown command ${JSON.stringify(command.kind)}`, output: {} };
    }
    await uplink.publish('result', CommandResult.encode(result).finish());
  }

  uplink.onMessage((channel, payload) => {
    if (channel === 'desired') {
      let desired: DesiredState;
      try {
        desired = DesiredState.decode(payload);
      } catch (err) {
        logger.warn({ err }, 'ignoring malformed desired state');
        return;
      }
      if (desired.model?.driftReference) buffer.setState(referenceKey(desired.model.name, desired.model.version), desired.model.driftReference);
      void models.apply(desired).then(() => {
        syncDrift();
        return reportState();
      });
    } else if (channel === 'command') {
      runCommand(payload).catch((err: unknown) => logger.warn({ err }, 'command failed'));
    }
  });
  uplink.onStatus((status) => {
    if (status.type === 'connected') {
      logger.info('connected to the control plane broker');
      void reportState();
    } else if (status.type === 'reconnecting') {
      logger.info({ attempt: status.attempt, delayMs: status.delayMs }, 'broker unreachable; reconnecting');
    } else if (status.type === 'refused') {
      const err = new DriftlineError('DEVICE_DECOMMISSIONED', `the control plane refused device ${deviceId} (${status.message}): it was decommissioned; enroll it again with a new token from \`driftline devices token ${deviceId}\``);
      logger.error({ deviceId }, err.message);
      deps.onFatal?.(err);
    }
  });

  const localApi = await startLocalApi({
    engine: observed(engine, drift, new SampleCapture(config.capture), recorder),
    health: () => ({
      ok: state === 'running',
      details: {
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
        activeModel: engine.active() ?? null,
        firmwareProfile,
        warnings,
        inferenceQueue: engine.queueStats(),
      },
    }),
    metrics,
    logger,
    host: config.localApi.host,
    port: config.localApi.port,
    socketPath: config.localApi.socketPath,
    maxBodyBytes: config.localApi.maxBodyBytes,
    memoryBudgetBytes: profileChoice.profile.inference.memoryBudget,
    inferTimeoutMs: config.inference.timeout,
    // Applications label answered requests by response id; each label is one record on the inference stream.
    feedback: { memory: config.localApi.feedbackMemory, record: (label) => recorder.label(label), clock },
    clock,
  });

  const every = (expression: string, name: string, task: () => unknown): Promise<ScheduledTask> =>
    schedule(expression, task, { name, clock, onError: (task, err) => logger.warn({ task, err }, 'scheduled task failed') });
  const tasks: ScheduledTask[] = await Promise.all([
    every(config.schedule.heartbeat ?? profileChoice.profile.telemetry.heartbeat, 'heartbeat', () => reportState()),
    every(config.schedule.system ?? profileChoice.profile.telemetry.system, 'system-metrics', () => hostSensors.read().then((host) => recorder.system(config.dataDir, host))),
    every(config.schedule.uplinkCheck, 'uplink-check', () => uploader.checkTimeouts()),
    every(config.schedule.driftWindow, 'drift-window', () => drift.flush()),
    every(config.schedule.bufferMaintenance, 'buffer-maintenance', maintainBuffer),
  ]);
  await uplink.start();
  void recorder.event('agent.started', `driftline-agent ${DRIFTLINE_VERSION}`, { boot: String(buffer.boot), profile: firmwareProfile });
  state = 'running';
  logger.info({ deviceId, localApi: localApi.url }, 'agent ready');

  return {
    deviceId,
    localApiUrl: localApi.url,
    get state() {
      return state;
    },
    reportState,
    stats: () => ({
      recordsEnqueued: recorder.enqueued,
      recordsAcknowledged: uploader.stats.recordsAcknowledged,
      // Refused by the buffer, plus dropped by its policy during this run.
      recordsDropped: recorder.dropped + buffer.droppedTotal() - droppedAtStart,
      bufferDepth: finalDepth ?? buffer.depth(),
    }),
    async shutdown() {
      if (state === 'stopping' || state === 'stopped') return;
      state = 'stopping';
      for (const task of tasks) await task.destroy();
      await localApi.close();
      // The last drift window goes up with the rest.
      drift.flush();
      recorder.flush();
      // Drain: give acknowledged delivery a chance before going; what is left stays buffered.
      const drained = await uploader.drain(config.shutdownGrace);
      if (!drained) logger.warn({ remaining: buffer.depth() }, 'shutting down with unacknowledged telemetry; it stays buffered for the next start');
      uploader.stop();
      await reportState();
      await uplink.shutdown();
      await engine.shutdown();
      finalDepth = buffer.depth();
      await buffer.close();
      state = 'stopped';
      logger.info('agent stopped');
    },
  };
}

/** The engine as the local API sees it: every answer also feeds the drift monitor and the sample capture. */
function observed(engine: InferenceService, drift: DriftMonitor, capture: SampleCapture, recorder: TelemetryRecorder): InferenceService {
  return {
    active: () => engine.active(),
    queueStats: () => engine.queueStats(),
    async infer(model, inputs, options) {
      const started = performance.now();
      const keepSample = (outcome: CaptureOutcome): void => {
        const sample = capture.consider(inputs, outcome);
        if (sample) recorder.sample(sample);
      };
      try {
        const result = await engine.infer(model, inputs, options);
        drift.observe(result.model, result.version, inputs, result.outputs, performance.now() - started, true);
        keepSample({ model: result.model, version: result.version, outputs: result.outputs });
        return result;
      } catch (err) {
        const active = engine.active();
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
