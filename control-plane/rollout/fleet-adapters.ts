import { activeModelsOf, desiredModelsOf } from '../../common/device-protocol/model-set.js';
import type { Logger } from '../../common/logger.js';
import type { ActiveModel } from '../../common/proto/driftline/v1/device_link.js';
import type { ModelVersion } from '../../common/proto/driftline/v1/models.js';
import type { FirmwareProfile } from '../../common/firmware-profile.js';
import type { RollbackDirectiveRequest } from '../registry/ports.js';
import { peekManifest } from '../../common/trust/manifest.js';
import type { DesiredModelSigner, DesiredStates } from '../fleet/desired-states.js';
import { PROFILE_LABEL, type DeviceRecord, type FleetStore } from '../fleet/fleet-store.js';
import { constraintsFromMetadata, type ModelConstraints } from './cohorts.js';
import type { InstallStats } from './gates.js';
import type { FleetView, ModelCatalog, ReleasePublisher } from './ports.js';
import type { PlanningDevice } from './state-machine.js';

/** The device's entry for `model` among the models it reports (a device from before reports a set of one). */
const reportedEntry = (device: DeviceRecord, model: string): ActiveModel | undefined => activeModelsOf(device.reported).find((m) => m.name === model);

const activeVersion = (device: DeviceRecord, model: string): number => reportedEntry(device, model)?.version ?? 0;

/**
 * The install of `version` of `model` failed on this device: the device keeps its old version
 * of that model and reports the error on that model's entry (an agent from before: on the
 * device, as its single model's), while its desired state still asks for that version.
 */
function installFailed(device: DeviceRecord, model: string, version: number): boolean {
  if (desiredModelsOf(device.desired).find((m) => m.name === model)?.version !== version) return false;
  const entry = reportedEntry(device, model);
  if (entry?.state === 'refused' || entry?.lastErrorCode) return true;
  const legacy = (device.reported?.activeModels.length ?? 0) === 0;
  return legacy && Boolean(device.reported?.lastErrorCode);
}

/** The rollout's view of the fleet: targets, what they run and how their installs went, from reported state. */
export class FleetStoreView implements FleetView {
  /** @param profiles known firmware profiles by name (the shipped ones), for the hardware behind a device's profile */
  constructor(
    private readonly fleet: Pick<FleetStore, 'list' | 'get'>,
    private readonly profiles: ReadonlyMap<string, FirmwareProfile> = new Map(),
  ) {}

  async devices(selector: string, model: string): Promise<PlanningDevice[]> {
    return (await this.fleet.list(selector)).map((d) => {
      const profile = d.reported?.firmwareProfile || d.labels[PROFILE_LABEL] || '';
      const known = this.profiles.get(profile);
      return {
        id: d.id,
        labels: d.labels,
        profile,
        hardware: known ? { arch: known.arch, providers: known.inference.providers.map((p) => p.name), memoryBytes: known.inference.memoryBudget } : undefined,
        activeVersion: activeVersion(d, model),
      };
    });
  }

  async installStatus(model: string, version: number, deviceIds: readonly string[]): Promise<InstallStats> {
    const stats: InstallStats = { attempted: deviceIds.length, installed: 0, failed: 0, pending: 0 };
    for (const id of deviceIds) {
      const device = await this.fleet.get(id);
      if (activeVersion(device, model) === version) stats.installed++;
      else if (installFailed(device, model, version)) stats.failed++;
      else stats.pending++;
    }
    return stats;
  }

  async activeVersions(model: string, deviceIds: readonly string[]): Promise<Record<string, number>> {
    const devices = await Promise.all(deviceIds.map((id) => this.fleet.get(id)));
    return Object.fromEntries(devices.map((device, i) => [deviceIds[i]!, activeVersion(device, model)]));
  }
}

/**
 * Constraints of a version: profiles and labels from its registry metadata, and the hardware
 * constraints (arch, providers, memory) of its signed manifest when it has one.
 */
export class RegistryCatalog implements ModelCatalog {
  constructor(
    private readonly registry: { resolve(name: string, version: number): Promise<ModelVersion> },
    private readonly releases?: {
      envelopeOf(name: string, version: number): Promise<Buffer | undefined>;
      assertDeployable?(name: string, version: number): Promise<void>;
    },
  ) {}

  async assertDeployable(model: string, version: number): Promise<void> {
    await this.releases?.assertDeployable?.(model, version);
  }

  async constraints(model: string, version: number): Promise<ModelConstraints> {
    const base = constraintsFromMetadata((await this.registry.resolve(model, version)).metadata);
    const envelope = await this.releases?.envelopeOf(model, version);
    if (!envelope) return base;
    // The release store verified the envelope when it was published; here only its content is needed.
    const { constraints } = peekManifest(envelope);
    return { ...base, arch: constraints.arch, providers: constraints.providers, minMemoryBytes: constraints.minMemoryBytes };
  }
}

/** The signing side of releases (control-plane/registry/release-store.ts), when a trust root is configured. */
export interface SignedReleases extends DesiredModelSigner {
  rollbackDirective(input: RollbackDirectiveRequest): Promise<Buffer | undefined>;
}

/**
 * Publishes releases as desired state through DesiredStates.deploy, like DeployModel. With
 * signed releases the desired model carries its DSSE envelope and the root chain, and a
 * rollback carries a signed rollback directive for exactly the devices sent back (devices refuse an older version without one;
 * without online signing the rollback is still sent and the refusal shows in their state).
 */
export class DesiredStatePublisher implements ReleasePublisher {
  constructor(
    private readonly deps: {
      fleet: Pick<FleetStore, 'get'>;
      registry: { resolve(name: string, version: number): Promise<ModelVersion> };
      /** Signs rollback directives; the desired models are signed by desiredStates. */
      releases?: Pick<SignedReleases, 'rollbackDirective'> | undefined;
      desiredStates: Pick<DesiredStates, 'deploy' | 'undeploy'>;
      /** Lifetime of a signed rollback directive. */
      rollbackTtlMs: number;
      logger: Logger;
    },
  ) {}

  async deploy(model: string, version: number, deviceIds: readonly string[]): Promise<void> {
    return this.send(await this.deps.registry.resolve(model, version), deviceIds, undefined);
  }

  async rollback(model: string, devices: ReadonlyArray<{ deviceId: string; toVersion: number }>, reason: string, id: string): Promise<void> {
    const byVersion = new Map<number, string[]>();
    for (const { deviceId, toVersion } of devices) byVersion.set(toVersion, [...(byVersion.get(toVersion) ?? []), deviceId]);
    for (const [version, ids] of byVersion) {
      if (version === 0) {
        // Removing a model is no downgrade: no directive, and the device keeps its other models.
        this.deps.logger.warn({ model, devices: ids.length, reason }, 'removing the model from devices that had none before the rollout');
        await this.deps.desiredStates.undeploy(
          model,
          ids.map((id) => ({ id })),
        );
        continue;
      }
      const directive = await this.deps.releases?.rollbackDirective({
        model,
        toVersion: version,
        deviceIds: ids,
        reason,
        ttlMs: this.deps.rollbackTtlMs,
        id: `${id}-v${version}`,
      });
      this.deps.logger.warn({ model, version, devices: ids.length, reason, signed: Boolean(directive) }, 'rolling devices back');
      await this.send(await this.deps.registry.resolve(model, version), ids, directive);
    }
  }

  private async send(model: ModelVersion, deviceIds: readonly string[], rollback: Buffer | undefined): Promise<void> {
    const devices = deviceIds.map((id) => ({ id }));
    await this.deps.desiredStates.deploy(model, devices, { rollback: rollback ? { directive: rollback, deviceIds: new Set(deviceIds) } : undefined });
  }
}
