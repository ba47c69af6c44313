import { readFile } from 'node:fs/promises';
import { activeModelsOf } from '../../common/device-protocol/model-set.js';
import { DriftlineError } from '../../common/errors.js';
import type { DenseLayer } from '../../common/learning/dense-head.js';
import { findClassifierHead } from '../../common/onnx/classifier-head.js';
import type { FederatedInvitation } from '../../common/proto/driftline/v1/device_link.js';
import type { DeviceLink } from '../device-link/ports.js';
import type { FleetStore } from '../fleet/fleet-store.js';
import { artifactPath, type ArtifactStore } from '../registry/artifact-store.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import type { BaseHeads, FederatedCandidate, FederatedFleet, FederatedInvitations, FederatedTaskRepository, HeadArtifacts } from './ports.js';

/** Devices of the cohort that report running the base version (and are not decommissioned); online: seen within the window. */
export class FleetStoreCandidates implements FederatedFleet {
  constructor(
    private readonly fleet: Pick<FleetStore, 'list'>,
    private readonly clock: { now(): number },
    private readonly onlineWindowMs: number,
  ) {}

  async candidates(model: string, version: number, selector: string): Promise<FederatedCandidate[]> {
    const now = this.clock.now();
    return (await this.fleet.list(selector))
      .filter((d) => d.status !== 'decommissioned' && activeModelsOf(d.reported).some((m) => m.name === model && m.version === version))
      .map((d) => ({ deviceId: d.id, online: now - d.lastSeenMs <= this.onlineWindowMs }));
  }
}

/** Invitations on the device's down/federated channel (not retained: a device offline misses it and is counted dropped). */
export class DeviceLinkInvitations implements FederatedInvitations {
  constructor(private readonly link: Pick<DeviceLink, 'sendFederated'>) {}

  send(deviceId: string, invitation: FederatedInvitation): Promise<void> {
    return this.link.sendFederated(deviceId, invitation);
  }
}

/** Heads in the artifact store devices download models from (content addressed, served by the artifact server). */
export class ArtifactStoreHeads implements HeadArtifacts {
  constructor(private readonly artifacts: Pick<ArtifactStore, 'createWriter' | 'fileOf'>) {}

  async put(bytes: Uint8Array): Promise<{ sha256: string; sizeBytes: number }> {
    const writer = await this.artifacts.createWriter();
    try {
      await writer.write(bytes);
      const { sha256, size } = await writer.commit();
      return { sha256, sizeBytes: size };
    } catch (err) {
      await writer.abort().catch(() => undefined);
      throw err;
    }
  }

  async get(sha256: string): Promise<Uint8Array> {
    try {
      return await readFile(this.artifacts.fileOf(sha256));
    } catch (err) {
      throw new DriftlineError('ARTIFACT_NOT_FOUND', `no head artifact ${sha256}`, { cause: err });
    }
  }

  pathOf(sha256: string): string {
    return `/${artifactPath(sha256)}`;
  }
}

/** The base version's dense head, read from its ONNX bytes in the registry (every dense layer of the final chain). */
export class RegistryBaseHeads implements BaseHeads {
  constructor(
    private readonly registry: Pick<ModelRegistry, 'resolve'>,
    private readonly artifacts: Pick<ArtifactStore, 'fileOf'>,
  ) {}

  async headOf(model: string, version: number): Promise<DenseLayer[]> {
    const found = await this.registry.resolve(model, version);
    return findClassifierHead(await readFile(this.artifacts.fileOf(found.sha256))).layers;
  }
}

/**
 * The heads a device may download because a live task asked it to work on them: the head of a
 * round it was invited to and has not answered, and the heads of an evaluation it was asked to
 * run. Nothing else (not another task's head, not a round it was not invited to).
 */
export async function federatedHeadsGrantedTo(deviceId: string, repository: Pick<FederatedTaskRepository, 'active'>): Promise<Set<string>> {
  const granted = new Set<string>();
  for (const task of await repository.active()) {
    for (const r of task.rounds) {
      const open = r.state === 'training' || r.state === 'aggregating' || r.state === 'evaluating';
      // Async: a device still training from an earlier aggregation's head keeps its grant to it.
      const stillTraining = task.outstanding.includes(deviceId) && r.invited.includes(deviceId);
      if ((open && r.invited.includes(deviceId) && !r.answered.includes(deviceId)) || stillTraining) granted.add(r.headSha256);
      if (r.state === 'evaluating' && r.evaluation?.invited.includes(deviceId)) for (const h of r.evaluation.heads) granted.add(h.sha256);
    }
    if (task.state === 'evaluating' && task.evaluation?.invited.includes(deviceId)) for (const h of task.evaluation.heads) granted.add(h.sha256);
  }
  return granted;
}
