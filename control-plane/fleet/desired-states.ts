import type { Logger } from '../../common/logger.js';
import { desiredModelsOf, desiredStateOf } from '../../common/device-protocol/model-set.js';
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
 * The one way what devices should run changes, whoever asks (DeployModel and UndeployModel,
 * a rollout's waves and rollbacks, later training and federated rounds). A device's desired
 * state is a set of models, unique by name (issue #12): a deploy adds one model to each
 * target's set or replaces the entry of the same name, an undeploy removes one, and the
 * other entries stay exactly as they were. Every target's new desired state is stored
 * first, so a device that is offline (or a send that fails) still converges when it next
 * connects and reports an older revision.
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
   * Gives each device the next revision of its desired state, with `model` added to its set
   * or in place of the entry of the same name; the rollback directive goes on that entry only
   * (for the devices it names). The previous set is read and the new one written in one unit
   * of work of the fleet store, so concurrent deploys (two rollouts of different models on
   * the same devices) neither hand a device the same revision twice nor lose each other's
   * entries. Resolves with how many devices the link took it for; the others are logged and
   * get it when they next report.
   */
  async deploy(model: ModelVersion, devices: ReadonlyArray<Pick<DeviceRecord, 'id'>>, options: DeployOptions = {}): Promise<number> {
    const signed = await this.deps.releases?.desiredModel(model);
    const desiredModel = signed?.model ?? unsignedDesiredModel(model);
    const { rollback } = options;
    return this.advance(devices, (deviceId, revision, previous) => {
      const entry: DesiredModel = { ...desiredModel, rollback: rollback?.deviceIds.has(deviceId) ? rollback.directive : Buffer.alloc(0) };
      const models = desiredModelsOf(previous);
      const at = models.findIndex((m) => m.name === model.name);
      return desiredStateOf({
        revision,
        models: at < 0 ? [...models, entry] : models.map((m, i) => (i === at ? entry : m)),
        rootChain: signed?.rootChain ?? previous?.rootChain ?? [],
      });
    });
  }

  /**
   * Removes the model named `name` from each device's set, in a new revision; a device whose
   * set does not hold it keeps its desired state. Resolves with the ids of the devices whose
   * set held it.
   */
  async undeploy(name: string, devices: ReadonlyArray<Pick<DeviceRecord, 'id'>>): Promise<string[]> {
    const changed: string[] = [];
    await this.advance(devices, (deviceId, revision, previous) => {
      const models = desiredModelsOf(previous);
      if (!models.some((m) => m.name === name)) return undefined;
      changed.push(deviceId);
      return desiredStateOf({ revision, models: models.filter((m) => m.name !== name), rootChain: previous?.rootChain ?? [] });
    });
    return changed;
  }

  private async advance(
    devices: ReadonlyArray<Pick<DeviceRecord, 'id'>>,
    next: (deviceId: string, revision: number, previous: DesiredState | undefined) => DesiredState | undefined,
  ): Promise<number> {
    const { fleet, link, logger } = this.deps;
    const desired = await fleet.advanceDesired(
      devices.map((device) => device.id),
      next,
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
