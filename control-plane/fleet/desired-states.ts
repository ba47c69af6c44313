import type { Logger } from '../../common/logger.js';
import type { DesiredModel, DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import type { ModelVersion } from '../../common/proto/driftline/v1/models.js';
import type { DeviceLink } from '../device-link/ports.js';
import { artifactPath } from '../registry/artifact-store.js';
import type { DeviceRecord, FleetStore } from './fleet-store.js';

/** The signing side of releases (control-plane/registry/release-store.ts), when a trust root is configured. */
export interface DesiredModelSigner {
  desiredModel(model: ModelVersion): Promise<{ model: DesiredModel; rootChain: Buffer[] }>;
}

export interface DeployOptions {
  /** A signed rollback directive, for the devices it names only (anti-rollback lets them take an older version). */
  rollback?: { directive: Buffer; deviceIds: ReadonlySet<string> } | undefined;
}

/**
 * The one way a model version becomes what devices should run, whoever asks (DeployModel,
 * a rollout's waves and rollbacks, later training and federated rounds). Every target's new
 * desired state is stored first, so a device that is offline (or a send that fails) still
 * converges when it next connects and reports an older revision.
 */
export class DesiredStates {
  constructor(
    private readonly deps: {
      fleet: Pick<FleetStore, 'advanceDesired'>;
      /** With a trust root the signed envelope and the root chain travel with the desired model. */
      releases?: DesiredModelSigner | undefined;
      link: Pick<DeviceLink, 'sendDesired'>;
      logger: Logger;
    },
  ) {}

  /**
   * Gives each device the next revision of its desired state with `model`. Revisions are read
   * and written in one unit of work of the fleet store, so concurrent deploys cannot hand a
   * device the same revision twice. Resolves with how many devices the link took it for; the
   * others are logged and get it when they next report.
   */
  async deploy(model: ModelVersion, devices: ReadonlyArray<Pick<DeviceRecord, 'id'>>, options: DeployOptions = {}): Promise<number> {
    const { fleet, link, logger, releases } = this.deps;
    const signed = await releases?.desiredModel(model);
    const desiredModel = signed?.model ?? unsignedDesiredModel(model);
    const { rollback } = options;
    const desired = await fleet.advanceDesired(
      devices.map((device) => device.id),
      (deviceId, revision): DesiredState => ({
        revision,
        model: desiredModel,
        rootChain: signed?.rootChain ?? [],
        rollback: rollback?.deviceIds.has(deviceId) ? rollback.directive : Buffer.alloc(0),
        models: [],
      }),
    );
    const results = await Promise.allSettled(desired.map(([deviceId, state]) => link.sendDesired(deviceId, state)));
    results.forEach((result, i) => {
      if (result.status === 'rejected') logger.warn({ err: result.reason, deviceId: desired[i]![0] }, 'desired state stored but not yet published');
    });
    return results.filter((r) => r.status === 'fulfilled').length;
  }
}

/** Without a trust root: where to download the artifact and what to check it against. */
function unsignedDesiredModel(model: ModelVersion): DesiredModel {
  return {
    name: model.name,
    version: model.version,
    sha256: model.sha256,
    sizeBytes: model.sizeBytes,
    artifactPath: artifactPath(model.sha256),
    driftReference: model.metadata['driftline.reference'] ?? '',
    envelope: Buffer.alloc(0),
    rollback: Buffer.alloc(0),
  };
}
