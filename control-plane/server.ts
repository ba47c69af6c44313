import { existsSync, rmSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { systemClock, type Clock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { component, Lifecycle } from '../common/lifecycle.js';
import { loadFirmwareProfiles } from '../common/firmware-profile.js';
import type { Logger } from '../common/logger.js';
import { ensurePrivateDir } from '../common/private-files.js';
import { startGrpcServer } from './api/grpc-server.js';
import { parseControlPlaneConfig, type ControlPlaneConfigInput } from './config.js';
import { createDeviceLink } from './device-link/create-device-link.js';
import { DesiredStates } from './fleet/desired-states.js';
import { controlPlaneMetrics } from './metrics.js';
import { FleetStore } from './fleet/fleet-store.js';
import { ensureAdminToken, OperatorTokenStore } from './fleet/operator-tokens.js';
import { artifactGrantSources, mayDownloadArtifact } from './registry/artifact-grants.js';
import { startArtifactServer } from './registry/artifact-http.js';
import { ArtifactStore } from './registry/artifact-store.js';
import { ModelRegistry } from './registry/model-registry.js';
import type { ReleaseSigning } from './registry/release-signing.js';
import { openReleaseSigner, openReleaseStore, watchTrust } from './registry/release-trust.js';
import { driftSourceFrom } from './rollout/drift-adapter.js';
import { RolloutDriver } from './rollout/driver.js';
import { RolloutEngine } from './rollout/engine.js';
import { DesiredStatePublisher, FleetStoreView, RegistryCatalog } from './rollout/fleet-adapters.js';
import { SqliteCohortMetrics } from './store/sqlite/cohort-metrics.js';
import { SqliteRolloutRepository } from './store/sqlite/rollout-repository.js';
import { openDatabase } from './store/sqlite/database.js';
import { SqliteFleetRepository } from './store/sqlite/fleet-repository.js';
import { SqliteModelVersionRepository } from './store/sqlite/model-version-repository.js';
import { SqliteReleaseRepository } from './store/sqlite/release-repository.js';
import { SqliteOperatorTokenRepository } from './store/sqlite/operator-token-repository.js';
import { TelemetryIngest } from './telemetry/ingest.js';
import { RetentionPruner } from './telemetry/retention-pruner.js';
import { SqliteRollupQueries } from './store/sqlite/rollup-queries.js';
import { SqliteTelemetryRepository } from './store/sqlite/telemetry-repository.js';
import { SqliteDriftRepository } from './store/sqlite/drift-repository.js';
import { DriftWatcher } from './drift/drift-watcher.js';
import { SqliteDriftEvents } from './store/sqlite/drift-events.js';
import { driftQueries, driftStatusSource } from './drift/wiring.js';
import { SqliteRetrainingPolicyRepository } from './store/sqlite/retraining-policy-repository.js';
import { TriggerWatcher } from './training/trigger-watcher.js';
import { connectRetrainingLoop } from './training/retraining-loop.js';
import { canarySigningOf } from './training/wiring.js';
import { RetrainedReleaseData } from './training/release-data.js';
import { OnnxRuntimeSessions } from './training/onnxruntime/ort-sessions.js';
import type { LabelledSampleCounter, TrainingJobStarter } from './training/retraining-ports.js';
import { DatasetService } from './datasets/dataset-service.js';
import { deviceSelectionOf, labelledSampleCounterOf, modelLineageOf, snapshotBlobsOf } from './datasets/wiring.js';
import { SqliteDatasetRepository } from './store/sqlite/dataset-repository.js';
import { SqliteSampleRepository } from './store/sqlite/sample-repository.js';
import { SqliteTrainingJobRepository } from './store/sqlite/training-job-repository.js';
import { SnapshotDatasetCatalog, SnapshotEvaluationData, TrainingArtifactsWithSnapshots } from './training/dataset-adapters.js';
import { TrainingEngine } from './training/engine.js';
import { OnnxRuntimeEvaluator } from './training/onnxruntime/onnx-evaluator.js';
import { ArtifactStoreTrainingArtifacts, RegistryBaseModels, RegistryCandidateSink, RegistryParentModels } from './training/registry-adapters.js';
import { TrainingSweeper } from './training/sweeper.js';
import { FederatedEngine } from './federated/engine.js';
import { FederatedDriver } from './federated/driver.js';
import { defaultFederatedAlgorithms } from './federated/algorithms.js';
import { ArtifactStoreHeads, DeviceLinkInvitations, federatedHeadsGrantedTo, FleetStoreCandidates, RegistryBaseHeads } from './federated/adapters.js';
import type { FederatedAlgorithms, FederatedRelease } from './federated/ports.js';
import { SqliteFederatedTaskRepository } from './store/sqlite/federated-task-repository.js';
import { createConsoleHttp, type ConsoleHttp } from './console/console-http.js';

export type ControlPlaneState = 'running' | 'stopping' | 'stopped';

export interface ControlPlane {
  readonly addresses: { grpc: string; mqtt: string; http: string };
  readonly adminTokenFile: string;
  readonly state: ControlPlaneState;
  readonly ingest: TelemetryIngest;
  /** Staged rollouts; tests with a ManualClock call rollouts.tick() themselves. */
  readonly rollouts: RolloutEngine;
  /** Drift status changes as events; tests with a ManualClock call driftWatcher.evaluate() themselves. */
  readonly driftWatcher: DriftWatcher;
  /** Retraining triggers; tests with a ManualClock advance it (or call triggerWatcher.tick()) and await triggerWatcher.idle(). */
  readonly triggerWatcher: TriggerWatcher;
  /**
   * Dataset snapshots of the captured samples. For training: `datasets.getDataset(id)` gives
   * `{id, sha256, sizeBytes, manifest}`, `datasets.readTar(id)` the verified tar bytes,
   * `datasets.openTar(id)` a stream of them, `datasets.getDatasetBySha256(sha256)` the record a hash names.
   */
  readonly datasets: DatasetService;
  /** Captured samples: stats, and the retention pass (tests with a ManualClock call samples.prune()). */
  readonly samples: SqliteSampleRepository;
  /**
   * Training jobs (TrainingService, WorkerService): tests with a ManualClock move the clock past a
   * lease's expiry and call training.sweep() themselves; training.settled() waits for evaluations.
   */
  readonly training: TrainingEngine;
  /**
   * Signs a released candidate as a scoped canary with the automation key (trust.automationKey),
   * or records its draft for `driftline models sign`: `releaseSigner.signCanary({model, version, audience})`.
   */
  readonly releaseSigner: ReleaseSigning;
  /**
   * Federated tasks (FederatedService), when aggregation rules are wired: tests with a
   * ManualClock call federated.tick() themselves; federated.idle() waits for the work queued.
   */
  readonly federated: FederatedEngine | undefined;
  shutdown(): Promise<void>;
}

/**
 * The composition root of `driftline serve`: SQLite store, artifact store, broker
 * (embedded or external), telemetry ingest, artifact HTTP server and the gRPC API, each
 * adopted into one Lifecycle as it starts. Shutdown runs it backwards within shutdownGrace:
 * it stops taking work first (gRPC, HTTP), then the device link, then the store.
 */
export async function startControlPlane(
  input: ControlPlaneConfigInput,
  deps: {
    logger: Logger;
    clock?: Clock;
    /** What retraining triggers start jobs with and count labelled samples by; without them decisions record TRAINING_SERVICE_UNAVAILABLE. */
    retraining?: { jobs?: TrainingJobStarter; labelledSamples?: LabelledSampleCounter };
    /**
     * Federated learning: the aggregation rules (default: control-plane/federated/algorithms.ts)
     * and the judge-and-release path; without a release a task that trained ends succeeded with
     * its head stored as an artifact and no version.
     */
    federated?: { algorithms?: FederatedAlgorithms; release?: FederatedRelease };
  },
): Promise<ControlPlane> {
  const config = parseControlPlaneConfig(input);
  const { logger } = deps;
  const clock = deps.clock ?? systemClock;
  // A start that fails (a port taken) leaves no half-made data dir or admin token behind.
  const createdByThisStart = pathsNotYetThere(config.dataDir);
  // Created or tightened to 0700: it holds device secrets, tokens and telemetry.
  ensurePrivateDir(config.dataDir);

  const db = openDatabase(join(config.dataDir, 'control-plane.db'));
  const fleet = new FleetStore(new SqliteFleetRepository(db));
  const tokens = new OperatorTokenStore(new SqliteOperatorTokenRepository(db));
  const admin = await ensureAdminToken(tokens, config.dataDir, clock);
  if (admin.created) logger.info({ file: admin.file }, 'created the first admin token');
  const artifacts = new ArtifactStore(join(config.dataDir, 'artifacts'));
  const registry = new ModelRegistry({ versions: new SqliteModelVersionRepository(db), artifacts, clock, maxModelBytes: config.maxModelBytes });
  const releases = openReleaseStore({ releases: new SqliteReleaseRepository(db), registry, clock, logger, trust: config.trust });
  const releaseSigner = openReleaseSigner({ releases, registry, clock, logger, trust: config.trust });
  const drift = new SqliteDriftRepository(db, logger);
  const samples = new SqliteSampleRepository(db, {
    maxAgeMs: config.samples.maxAge,
    maxBytes: config.samples.maxBytes,
    maxTensorBytes: config.samples.maxTensorBytes,
  });
  // Samples and labels reach the sample store inside the telemetry commit: exactly once, like the records.
  const telemetry = new SqliteTelemetryRepository(db, [drift.recordRoute(), ...samples.recordRoutes()]);
  const datasets = new DatasetService({
    samples,
    policies: samples,
    repository: new SqliteDatasetRepository(db),
    // Their own content-addressed folder: the artifact server never serves it to devices.
    blobs: snapshotBlobsOf(new ArtifactStore(join(config.dataDir, 'datasets'))),
    devices: deviceSelectionOf(fleet),
    lineage: modelLineageOf(registry),
    clock,
    maxRows: config.datasets.maxRows,
  });
  const verifyDeviceCredential = fleet.verifyDeviceCredential.bind(fleet);

  // Embedded broker or external one, as configured; started once ingest can take its messages.
  const link = createDeviceLink(config.mqtt, { clock, logger, verifyDeviceCredential });
  // Each part as it starts; shutdown stops them in reverse order, all within one shutdownGrace.
  const lifecycle = new Lifecycle({
    clock,
    onShutdownError(name, err) {
      if (err instanceof DriftlineError && err.code === 'SHUTDOWN_GRACE_EXPIRED')
        logger.warn({ component: name, graceMs: err.details?.graceMs }, 'shutdown grace expired; forced');
      else logger.error({ component: name, err }, 'shutdown step failed');
    },
  });
  const closers = {
    push: (name: string, close: (graceMs: number) => Promise<void> | void, force?: () => void): void =>
      void lifecycle.adopt(component(name, { drain: close, force }, clock)),
  };
  const closeDb = (): void => {
    if (db.open) db.close();
  };
  // Closed last, also when the grace is spent.
  closers.push('store', closeDb, closeDb);
  const shutdownAll = (): Promise<void> => lifecycle.shutdown(config.shutdownGrace);

  // Bound once the federated engine exists (it needs the device link the ingest starts with).
  let federatedReports: (deviceId: string, payload: Uint8Array) => Promise<void> = async () => undefined;
  try {
    const ingest = new TelemetryIngest({
      repository: telemetry,
      devices: fleet,
      downlink: link,
      clock,
      logger,
      limits: config.ingest,
      federated: (deviceId, payload) => federatedReports(deviceId, payload),
    });
    // Runs after the device link has stopped and before the store closes: no refusal count is lost.
    closers.push('ingest-refusals', () => ingest.flushRefusals());
    await link.start((deviceId, channel, payload) => ingest.handle(deviceId, channel, payload));
    closers.push('device-link', () => link.shutdown());
    const brokerUrl = link.deviceUrl;

    const metrics = controlPlaneMetrics({ ingest, link, drift, fleet, samples, clock, onlineWindowMs: config.onlineWindow });
    // Telemetry and drift rollups are kept as long per bucket size; rollup queries never read past it.
    const rollupRetention = { minuteMs: config.telemetry.minuteRollupRetention, hourMs: config.telemetry.hourRollupRetention };
    const pruner = RetentionPruner.create({
      // Samples keep their own maxAge (samples.maxAge), whatever the telemetry retention.
      stores: [telemetry, drift, samples],
      retention: { rawMs: config.telemetry.rawRetention, ...rollupRetention },
      intervalMs: config.telemetry.pruneInterval,
      clock,
      logger,
    });
    pruner.run();
    closers.push('retention-pruner', () => pruner.shutdown());

    const trustWarnings = await watchTrust({ releases, fleet, config: config.trust, logger });
    closers.push('trust-warnings', () => trustWarnings.stop());
    const rolloutRepository = new SqliteRolloutRepository(db);
    const grants = artifactGrantSources({ fleet, rollouts: rolloutRepository, registry });
    const federatedTasks = new SqliteFederatedTaskRepository(db);
    // The web console shares this listener; its routes exist once the engines it reads are made (below).
    let webConsole: ConsoleHttp | undefined;
    const consoleRoutes = {
      handle: async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
        if (webConsole) return webConsole.handle(req, res);
        res.writeHead(503, { 'Content-Type': 'text/plain; charset=utf-8', 'Retry-After': '1' });
        res.end('the console is starting\n');
        return true;
      },
    };
    const artifactServer = await startArtifactServer({
      console: consoleRoutes,
      host: config.http.host,
      port: config.http.port,
      artifacts,
      verifyDeviceCredential,
      // What its desired state names, and the heads of the federated rounds it is invited to.
      mayDownload: async (deviceId, sha256) =>
        (await mayDownloadArtifact(deviceId, sha256, grants)) || (await federatedHeadsGrantedTo(deviceId, federatedTasks)).has(sha256),
      // Operators of any role; a worker token reaches WorkerService and nothing else.
      authenticateOperator: async (token) => {
        const found = await tokens.authenticate(token);
        return found !== undefined && found.role !== 'worker';
      },
      metrics,
      health: () => ({
        ok: link.connected,
        details: { brokerConnected: link.connected, broker: link.kind, trust: { root: releases.rootVersion() ?? null, warnings: trustWarnings.current() } },
      }),
      logger,
    });
    closers.push('artifact-http', () => artifactServer.close());

    // Deploys, rollout waves and rollbacks all go through this one: stored, then sent.
    const desiredStates = new DesiredStates({ fleet, releases, link, logger });
    // One drift status query serves the rollout gates, the drift watcher and DriftService.
    const driftStatus = driftQueries({
      drift,
      registry,
      fleet,
      clock,
      logger,
      config: { window: config.drift.window, minuteBucketsUpTo: config.drift.minuteBucketsUpTo, longWindow: config.drift.longWindow, thresholds: config.drift },
    });
    const rollouts = new RolloutEngine({
      repository: rolloutRepository,
      fleet: new FleetStoreView(fleet, loadFirmwareProfiles()),
      metrics: new SqliteCohortMetrics(db),
      publisher: new DesiredStatePublisher({ fleet, registry, releases, desiredStates, rollbackTtlMs: config.rollout.rollbackTtl, logger }),
      catalog: new RegistryCatalog(registry, releases),
      drift: driftSourceFrom(driftStatus),
      clock,
      logger,
    });
    const rolloutDriver = RolloutDriver.create({ engine: rollouts, tickIntervalMs: config.rollout.tickInterval, logger });
    rolloutDriver.run();
    closers.push('rollout-driver', () => rolloutDriver.shutdown());

    const driftWatcher = DriftWatcher.create({
      source: driftStatusSource(drift, driftStatus),
      store: new SqliteDriftEvents(db),
      clock,
      logger,
      evaluateIntervalMs: config.drift.evaluateInterval,
      windowMs: config.drift.window,
      eventRetentionMs: config.drift.eventRetention,
      clearAfter: config.drift.clearAfter,
    });
    // Training jobs: leased by GPU workers (WorkerService), judged by the evaluation gate on the
    // snapshot's test splits with onnxruntime, registered as the model's next version with lineage.
    const trainingDatasets = new SnapshotDatasetCatalog(datasets);
    // A retrained version's drift reference (its training rows) and canary golden vectors (its test rows).
    const retrainedReleases = new RetrainedReleaseData({ registry, artifacts, snapshots: datasets, sessions: new OnnxRuntimeSessions(), logger });
    const training = new TrainingEngine({
      repository: new SqliteTrainingJobRepository(db),
      baseModels: new RegistryBaseModels(registry),
      datasets: trainingDatasets,
      // Workers download base models from the artifacts and snapshot tars from the datasets' own store.
      artifacts: new TrainingArtifactsWithSnapshots(new ArtifactStoreTrainingArtifacts(artifacts), datasets),
      evaluator: new OnnxRuntimeEvaluator({
        data: new SnapshotEvaluationData(datasets, deviceSelectionOf(fleet)),
        parents: new RegistryParentModels(registry, artifacts),
      }),
      sink: new RegistryCandidateSink(registry, artifacts, trainingDatasets, { data: retrainedReleases, logger }),
      limits: {
        leaseTtlMs: config.training.leaseTtl,
        defaultMaxAttempts: config.training.defaultMaxAttempts,
        defaultMaxDurationMs: config.training.defaultMaxDuration,
        maxCandidateBytes: config.training.maxCandidateBytes,
        minSplitRows: config.training.minSplitRows,
        maxLogLinesPerJob: config.training.maxLogLinesPerJob,
      },
      clock,
      logger,
    });
    // Expired leases go back to the queue on this timer; stopped after the gRPC server (no worker
    // call starts an evaluation then), and it waits for the evaluations in flight before the store closes.
    const trainingSweeper = TrainingSweeper.create({ engine: training, intervalMs: config.training.sweepInterval, clock, logger });
    trainingSweeper.run();
    closers.push('training-sweeper', () => trainingSweeper.shutdown());
    const trainingStreams = new AbortController();

    const federatedAlgorithms = deps.federated?.algorithms ?? defaultFederatedAlgorithms();
    const federated = federatedAlgorithms
      ? new FederatedEngine({
          repository: federatedTasks,
          fleet: new FleetStoreCandidates(fleet, clock, config.onlineWindow),
          invitations: new DeviceLinkInvitations(link),
          heads: new ArtifactStoreHeads(artifacts),
          baseHeads: new RegistryBaseHeads(registry, artifacts),
          algorithms: federatedAlgorithms,
          release: deps.federated?.release,
          limits: {
            maxUpdateBytes: config.federated.maxUpdateBytes,
            defaultRoundDeadlineMs: config.federated.defaultRoundDeadline,
            maxRounds: config.federated.maxRounds,
            maxClientsPerRound: config.federated.maxClientsPerRound,
            maxUpdateNorm: config.federated.maxUpdateNorm,
          },
          clock,
          logger,
        })
      : undefined;
    if (federated) {
      federatedReports = (deviceId, payload) => federated.handleReport(deviceId, payload);
      // The first tick resumes what a stopped control plane left (a round past its deadline closes then).
      const federatedDriver = FederatedDriver.create({ engine: federated, tickIntervalMs: config.federated.tickInterval, logger });
      federatedDriver.run();
      closers.push('federated-driver', () => federatedDriver.shutdown());
    }
    const federatedStreams = new AbortController();

    const retrainingPolicies = new SqliteRetrainingPolicyRepository(db);
    // The closed loop: a fired trigger snapshots a dataset and starts a job; a version it made is
    // signed as a canary for the drifted cohort (or waits for `models sign`) and rolled out to it.
    const retrainingLoop = connectRetrainingLoop({
      training,
      datasets,
      lineage: modelLineageOf(registry),
      policies: retrainingPolicies,
      rollouts,
      signing: canarySigningOf({ signer: releaseSigner, fleet, registry, releases, logger, release: retrainedReleases }),
      clock,
      logger,
      tickIntervalMs: config.retraining.tickInterval,
    });
    const triggerWatcher = TriggerWatcher.create({
      policies: retrainingPolicies,
      driftEvents: driftWatcher,
      labelledSamples: deps.retraining?.labelledSamples ?? labelledSampleCounterOf(samples, deviceSelectionOf(fleet)),
      jobs: deps.retraining?.jobs ?? retrainingLoop.jobs,
      clock,
      logger,
      tickIntervalMs: config.retraining.tickInterval,
      driftCatchUpMs: config.retraining.driftCatchUp,
      scheduleCatchUpMs: config.retraining.scheduleCatchUp,
      decisionRetentionMs: config.retraining.decisionRetention,
    });

    const grpc = await startGrpcServer({
      host: config.grpc.host,
      port: config.grpc.port,
      tls: config.grpc.tls,
      fleet,
      tokens,
      registry,
      releases,
      trustRoot: () => releases.latestRoot(),
      // Refusal counts are written in bulk; the summary flushes them first so it is exact.
      telemetry: {
        summary: async (request) => {
          await ingest.flushRefusals();
          return telemetry.summary(request);
        },
      },
      telemetryRollups: new SqliteRollupQueries({ db, devices: fleet, clock, retention: rollupRetention }),
      drift: driftStatus,
      driftEvents: driftWatcher,
      deviceLink: link,
      desiredStates,
      advertisedMqttUrl: () => config.mqtt.advertisedUrl ?? brokerUrl,
      advertisedHttpUrl: () => config.advertisedHttpUrl ?? artifactServer.url,
      config,
      rollouts: { rollouts, watchIntervalMs: config.rollout.watchInterval },
      retraining: { policies: retrainingPolicies, models: registry, clock },
      datasets: { datasets, samples, clock },
      training: { engine: training, shutdown: trainingStreams.signal, pollIntervalMs: config.training.workerPollInterval },
      federated: federated ? { engine: federated, shutdown: federatedStreams.signal, watchIntervalMs: config.federated.watchInterval } : undefined,
      clock,
      logger,
    });
    closers.push('grpc', (graceMs) => grpc.shutdown(graceMs));
    // Runs before the gRPC server stops: open WatchTrainingJob streams end instead of holding its drain.
    closers.push('training-watches', () => trainingStreams.abort());
    closers.push('federated-watches', () => federatedStreams.abort());
    // Started after the gRPC server and stopped before it: the watcher ends open drift event streams first.
    driftWatcher.run();
    closers.push('drift-watcher', () => driftWatcher.shutdown());
    // Stopped before the drift watcher it listens to.
    triggerWatcher.run();
    closers.push('trigger-watcher', () => triggerWatcher.shutdown());
    // After the rollout driver is up; stopped before it and the store.
    retrainingLoop.release.run();
    closers.push('release-canary', () => retrainingLoop.release.shutdown());

    webConsole = createConsoleHttp({
      fleet,
      tokens,
      registry,
      releases,
      rollouts,
      drift: driftStatus,
      driftEvents: driftWatcher,
      training,
      config: {
        onlineWindowMs: config.onlineWindow,
        sessionTtlMs: config.console.sessionTtl,
        idleTimeoutMs: config.console.idleTimeout,
        maxFailedLogins: config.console.maxFailedLogins,
        loginWindowMs: config.console.loginWindow,
        secureCookie: config.console.secureCookie,
        watchIntervalMs: config.rollout.watchInterval,
      },
      clock,
      logger,
    });
    // Before the HTTP server drains: open event streams would hold it.
    const consoleStreams = webConsole;
    closers.push('console-streams', () => consoleStreams.close());

    let state: ControlPlaneState = 'running';
    const grpcHost = config.grpc.host.includes(':') ? `[${config.grpc.host}]` : config.grpc.host;
    return {
      addresses: { grpc: `${grpcHost}:${grpc.port}`, mqtt: brokerUrl, http: artifactServer.url },
      adminTokenFile: admin.file,
      ingest,
      rollouts,
      driftWatcher,
      triggerWatcher,
      datasets,
      samples,
      training,
      releaseSigner,
      federated,
      get state() {
        return state;
      },
      async shutdown() {
        if (state !== 'running') return;
        state = 'stopping';
        await shutdownAll();
        state = 'stopped';
        logger.info('control plane stopped');
      },
    };
  } catch (err) {
    // An admin token minted into a store that stays would lock the operator out once its file is gone.
    const dbStays = !createdByThisStart.includes(join(config.dataDir, 'control-plane.db')) && !createdByThisStart.includes(config.dataDir);
    if (admin.created && dbStays && admin.token) {
      const minted = await tokens.authenticate(admin.token).catch(() => undefined);
      if (minted)
        await tokens.revoke(minted.id, clock.now()).catch((err: unknown) => logger.warn({ err }, 'could not revoke the admin token of the failed start'));
    }
    await shutdownAll();
    for (const path of createdByThisStart) removeCreated(path, logger);
    throw err;
  }
}

const DATA_DIR_ENTRIES = ['control-plane.db', 'admin.token', 'artifacts', 'datasets'];

/** The data dir, if it does not exist yet; otherwise the entries of it that do not. */
function pathsNotYetThere(dataDir: string): string[] {
  if (!existsSync(dataDir)) return [dataDir];
  return DATA_DIR_ENTRIES.map((entry) => join(dataDir, entry)).filter((path) => !existsSync(path));
}

function removeCreated(path: string, logger: Logger): void {
  const related = path.endsWith('.db') ? [path, `${path}-wal`, `${path}-shm`] : [path];
  for (const p of related) {
    try {
      rmSync(p, { recursive: true, force: true });
    } catch (err) {
      logger.warn({ err, path: p }, 'could not remove what the failed start created');
    }
  }
}
