import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Server, ServerCredentials, setLogger } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { DriftlineError, listenFailed } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { DatasetServiceService } from '../../common/proto/driftline/v1/datasets.js';
import { DriftServiceService } from '../../common/proto/driftline/v1/drift.js';
import { AccessServiceService, DeviceServiceService, EnrollmentServiceService } from '../../common/proto/driftline/v1/fleet.js';
import { ModelServiceService } from '../../common/proto/driftline/v1/models.js';
import { ReleaseServiceService } from '../../common/proto/driftline/v1/releases.js';
import { TrainingServiceService, WorkerServiceService } from '../../common/proto/driftline/v1/learning.js';
import { RetrainingPolicyServiceService } from '../../common/proto/driftline/v1/retraining.js';
import { RolloutServiceService } from '../../common/proto/driftline/v1/rollouts.js';
import { TelemetryServiceService } from '../../common/proto/driftline/v1/telemetry.js';
import { datasetService } from './dataset-service.js';
import { driftService } from './drift-service.js';
import { accessService, deviceService, enrollmentService } from './fleet-services.js';
import { modelService } from './model-service.js';
import { releaseService } from './release-service.js';
import { retrainingPolicyService, type RetrainingApiDeps } from './retraining-policy-service.js';
import type { ApiDeps } from './ports.js';
import { rolloutService, type RolloutApiDeps } from './rollout-service.js';
import type { RpcContext } from './rpc.js';
import { telemetryService } from './telemetry-service.js';
import { trainingService, type TrainingApiDeps } from './training-service.js';
import { federatedService, type FederatedApiDeps } from './federated-service.js';
import { FederatedServiceService } from '../../common/proto/driftline/v1/federated.js';
import { workerService, type WorkerApiDeps } from './worker-service.js';

export interface GrpcServerOptions extends ApiDeps {
  host: string;
  port: number;
  /** PEM file paths; with clientCa, callers must present a certificate it signed (mTLS). */
  tls?: { cert: string; key: string; clientCa?: string | undefined } | undefined;
  /** The rollout engine; without it RolloutService answers UNIMPLEMENTED. */
  rollouts?: RolloutApiDeps | undefined;
  /** Retraining policies and their decision log; without them RetrainingPolicyService answers UNIMPLEMENTED. */
  retraining?: RetrainingApiDeps | undefined;
  /** The training engine; without it TrainingService and WorkerService answer UNIMPLEMENTED. */
  training?: (TrainingApiDeps & WorkerApiDeps) | undefined;
  /** The federated engine; without it FederatedService answers UNIMPLEMENTED. */
  federated?: FederatedApiDeps | undefined;
}

export interface GrpcServer {
  readonly port: number;
  /** Refuses new calls, lets calls in flight finish for graceMs, then cancels the rest. */
  shutdown(graceMs: number): Promise<void>;
}

const PROTO_ROOT = fileURLToPath(new URL('../../proto', import.meta.url));

/** Services this server always implements. */
const SERVED = [
  'DeviceService',
  'EnrollmentService',
  'ModelService',
  'TelemetryService',
  'AccessService',
  'DriftService',
  'ReleaseService',
  'DatasetService',
].map((s) => `driftline.v1.${s}`);

/**
 * grpc-js writes its own lines to stderr (`E No address added out of total 1 resolved` beside our
 * LISTEN_FAILED). Each failure that matters reaches us as an error we report with a stable code,
 * so its raw text goes to our log at debug level instead (GRPC_VERBOSITY still chooses what
 * grpc-js hands over; DRIFTLINE_LOG_LEVEL=debug shows it). grpc-js has one logger per process.
 */
function routeGrpcLogs(logger: Logger): void {
  const log = logger.child({ component: 'grpc-js' });
  const write = (message?: unknown, ...rest: unknown[]): void => log.debug(rest.length ? { args: rest } : {}, String(message));
  setLogger({ error: write, info: write, debug: write });
}

/** The fleet management API. */
export async function startGrpcServer(options: GrpcServerOptions): Promise<GrpcServer> {
  const { logger } = options;
  routeGrpcLogs(logger);
  const ctx: RpcContext = { tokens: options.tokens, logger };
  const server = new Server();
  server.addService(DeviceServiceService, deviceService(options, ctx));
  server.addService(EnrollmentServiceService, enrollmentService(options, ctx));
  server.addService(ModelServiceService, modelService(options, ctx));
  server.addService(TelemetryServiceService, telemetryService(options, ctx));
  server.addService(AccessServiceService, accessService(options, ctx));
  server.addService(DriftServiceService, driftService(options, ctx));
  server.addService(ReleaseServiceService, releaseService(options, ctx));
  server.addService(DatasetServiceService, datasetService(options, ctx));
  if (options.rollouts) server.addService(RolloutServiceService, rolloutService(options.rollouts, ctx));
  if (options.retraining) server.addService(RetrainingPolicyServiceService, retrainingPolicyService(options.retraining, ctx));
  if (options.federated) server.addService(FederatedServiceService, federatedService(options.federated, ctx));
  if (options.training) {
    server.addService(TrainingServiceService, trainingService(options.training, ctx));
    server.addService(WorkerServiceService, workerService(options.training, ctx));
  }
  const served = [
    ...SERVED,
    ...(options.rollouts ? ['driftline.v1.RolloutService'] : []),
    ...(options.retraining ? ['driftline.v1.RetrainingPolicyService'] : []),
    ...(options.training ? ['driftline.v1.TrainingService', 'driftline.v1.WorkerService'] : []),
    ...(options.federated ? ['driftline.v1.FederatedService'] : []),
  ];
  // Reflection lets grpcurl and other generic tools discover the API without the .proto files.
  new ReflectionService(loadProtos(), { services: served }).addToServer(server);

  const address = `${options.host.includes(':') ? `[${options.host}]` : options.host}:${options.port}`;
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(address, credentials(options.tls), (err, boundPort) => {
      if (err) {
        server.forceShutdown();
        reject(listenFailed('grpc', address, err));
      } else resolve(boundPort);
    });
  });
  logger.info({ host: options.host, port, tls: options.tls ? (options.tls.clientCa ? 'mtls' : 'tls') : 'none' }, 'gRPC API listening');

  return {
    port,
    shutdown: (graceMs) =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), graceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

function credentials(tls: GrpcServerOptions['tls']): ServerCredentials {
  if (!tls) return ServerCredentials.createInsecure();
  try {
    const clientCa = tls.clientCa ? readFileSync(tls.clientCa) : null;
    return ServerCredentials.createSsl(clientCa, [{ cert_chain: readFileSync(tls.cert), private_key: readFileSync(tls.key) }], clientCa !== null);
  } catch (err) {
    throw new DriftlineError('CONFIG_INVALID', 'cannot read the gRPC TLS files', { cause: err, details: { ...tls } });
  }
}

function loadProtos(): ReturnType<typeof loadSync> {
  const files = readdirSync(`${PROTO_ROOT}/driftline/v1`)
    .filter((f) => f.endsWith('.proto'))
    .map((f) => `driftline/v1/${f}`);
  return loadSync(files, { includeDirs: [PROTO_ROOT] });
}
