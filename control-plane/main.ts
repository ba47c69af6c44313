import { resolve } from 'node:path';
import type { Logger } from '../common/logger.js';
import type { ControlPlaneConfigInput } from './config.js';
import { federatedAlgorithms } from './federated/algorithms.js';
import { startControlPlane, type ControlPlane } from './server.js';

/** Exit codes of a control-plane process once it has started (`driftline serve`'s own usage and listen errors come from the CLI). */
export const CONTROL_PLANE_EXIT = { ok: 0, failed: 1 } as const;

/**
 * The control plane's entry point, beside agent/main.ts: starts it from a configuration,
 * owns the process's signals (the only place that handles them: SIGINT/SIGTERM shut down
 * within the configured grace, a second signal exits at once), then prints the line a
 * supervisor waits for. `driftline serve` parses its flags into the configuration and calls this.
 */
export async function runControlPlane(config: ControlPlaneConfigInput, deps: { logger: Logger }): Promise<ControlPlane> {
  const { logger } = deps;
  // FederatedService with the real aggregation rules (strategies, central DP, update checks).
  const plane = await startControlPlane(config, { logger, federated: { algorithms: federatedAlgorithms() } });
  const { grpc, mqtt, http } = plane.addresses;

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting without waiting for shutdown');
      logger.flush();
      process.exit(CONTROL_PLANE_EXIT.failed);
    }
    stopping = true;
    logger.info({ signal }, 'shutting down');
    plane.shutdown().then(
      () => logger.flush(() => process.exit(CONTROL_PLANE_EXIT.ok)),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        logger.flush(() => process.exit(CONTROL_PLANE_EXIT.failed));
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  // Only now: a supervisor that signals on seeing this line must find the handlers in place.
  process.stdout.write(`driftline: listening grpc=${grpc} mqtt=${mqtt} http=${http} token-file=${resolve(plane.adminTokenFile)}\n`);
  return plane;
}
