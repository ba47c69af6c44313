import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { DriftStatus, DriftStatusRequest } from '../../common/proto/driftline/v1/drift.js';
import type { TelemetryRollups, TelemetryRollupsRequest, TelemetrySummary, TelemetrySummaryRequest } from '../../common/proto/driftline/v1/telemetry.js';
import type { ControlPlaneConfig } from '../config.js';
import type { DeviceLink } from '../device-link/ports.js';
import type { DriftEventFilter, DriftEventRecord } from '../drift/drift-watcher.js';
import type { DesiredStates } from '../fleet/desired-states.js';
import type { FleetStore } from '../fleet/fleet-store.js';
import type { OperatorTokenStore } from '../fleet/operator-tokens.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import type { ReleaseStore } from '../registry/release-store.js';
import type { DatasetService } from '../datasets/dataset-service.js';
import type { RawCapturePolicies } from '../datasets/ports.js';
import type { SampleStats } from '../../common/proto/driftline/v1/datasets.js';

/** Datasets from the fleet: snapshots, and the captured samples they are made of. */
export interface DatasetApi {
  datasets: Pick<DatasetService, 'create' | 'get' | 'list' | 'openTar'>;
  samples: Pick<RawCapturePolicies, 'setRawCapture'> & { stats(model: string): Promise<SampleStats> };
  clock: Clock;
}

/** Read side of telemetry, answered by the telemetry store. */
export interface TelemetryQueries {
  summary(request: TelemetrySummaryRequest): Promise<TelemetrySummary>;
}

/** Telemetry rollup sums per bucket and group, answered from the rollup tables. */
export interface TelemetryRollupQueries {
  rollups(request: TelemetryRollupsRequest): Promise<TelemetryRollups>;
}

/** Drift status per model version and cohort, answered by the drift rollups. */
export interface DriftQueries {
  status(request: DriftStatusRequest): Promise<DriftStatus[]>;
}

/** Recorded drift status changes, and a live feed of new ones (the drift watcher). */
export interface DriftEventFeed {
  list(filter: DriftEventFilter, limit: number): Promise<DriftEventRecord[]>;
  /** `onEnd` runs when the feed stops (shutdown); returns the unsubscribe function. */
  subscribe(listener: (event: DriftEventRecord) => void, onEnd?: () => void): () => void;
}

/** Everything the gRPC services are built from; the composition root provides it. */
export interface ApiDeps {
  fleet: FleetStore;
  tokens: OperatorTokenStore;
  registry: ModelRegistry;
  /** Drops a decommissioned device's live connection. */
  deviceLink: Pick<DeviceLink, 'disconnect'>;
  /** Where deploys go: stored, then sent to the devices. */
  desiredStates: Pick<DesiredStates, 'deploy' | 'undeploy'>;
  telemetry: TelemetryQueries;
  /** Rollups per bucket and group; without them GetRollups answers NOT_IMPLEMENTED. */
  telemetryRollups?: TelemetryRollupQueries | undefined;
  /** Fleet drift on merged sketches; without it DriftService answers NOT_IMPLEMENTED. */
  drift?: DriftQueries | undefined;
  /** Drift events; without them ListDriftEvents and WatchDriftEvents answer NOT_IMPLEMENTED. */
  driftEvents?: DriftEventFeed | undefined;
  /** Functions, because the listeners' ports are known only after they listen. */
  advertisedMqttUrl: () => string;
  advertisedHttpUrl: () => string;
  config: Pick<ControlPlaneConfig, 'enrollmentTokenTtl' | 'onlineWindow' | 'rollout'>;
  clock: Clock;
  logger: Logger;
  /** The latest signed root metadata (DSSE envelope) devices pin at enrollment; undefined without a trust root. */
  trustRoot?: () => Buffer | undefined;
  /** Signed releases; without them ReleaseService answers TRUST_NOT_CONFIGURED and deploys are unsigned. */
  releases?: ReleaseStore;
  /** Datasets; without them DatasetService answers NOT_IMPLEMENTED. */
  datasets?: DatasetApi | undefined;
}
