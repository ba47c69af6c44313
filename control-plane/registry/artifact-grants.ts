import { desiredModelsOf } from '../../common/device-protocol/model-set.js';
import type { DesiredState } from '../../common/proto/driftline/v1/device_link.js';
import { peekRollbackDirective } from '../../common/trust/rollback.js';

/** What decides which artifacts a device may download; the composition root answers from the fleet, rollouts and registry. */
export interface ArtifactGrantSources {
  desired(deviceId: string): Promise<DesiredState | undefined>;
  /** Rollouts in flight: the version each one installs and the devices it has sent it to so far. */
  activeRollouts(): Promise<ReadonlyArray<{ model: string; version: number; sentTo: readonly string[] }>>;
  sha256Of(model: string, version: number): Promise<string | undefined>;
}

/**
 * The artifacts (by sha256) a device may download: what its current desired state names (every
 * model of its set), the release each model's rollback directive names, and, while a rollout is in flight, the
 * version that rollout told it to install (a download it started may outlive the desired
 * state that asked for it). Nothing else: not another device's model, not a model never deployed.
 */
export async function artifactsGrantedTo(deviceId: string, sources: ArtifactGrantSources): Promise<Set<string>> {
  const granted = new Set<string>();
  const desired = await sources.desired(deviceId);
  // Every model of the set, and the release each model's rollback directive names (the legacy single-model shape reads as a set of one).
  for (const model of desiredModelsOf(desired)) {
    if (model.sha256) granted.add(model.sha256);
    if (model.rollback.length === 0) continue;
    try {
      const directive = peekRollbackDirective(model.rollback);
      if (directive.deviceIds.length === 0 || directive.deviceIds.includes(deviceId)) granted.add(directive.toSha256);
    } catch {
      // A directive the control plane cannot read grants nothing; the device refuses it too.
    }
  }
  for (const rollout of await sources.activeRollouts()) {
    if (!rollout.sentTo.includes(deviceId)) continue;
    const sha256 = await sources.sha256Of(rollout.model, rollout.version);
    if (sha256) granted.add(sha256);
  }
  return granted;
}

export const mayDownloadArtifact = async (deviceId: string, sha256: string, sources: ArtifactGrantSources): Promise<boolean> =>
  (await artifactsGrantedTo(deviceId, sources)).has(sha256);

/** The grant sources of `serve`: desired states from the fleet store, rollouts in flight from their repository, sha256s from the registry. */
export function artifactGrantSources(deps: {
  fleet: { getDesired(deviceId: string): DesiredState | undefined | Promise<DesiredState | undefined> };
  rollouts: { list(options: { activeOnly: boolean }): Promise<Array<{ plan: { model: string; version: number }; targets: string[]; touched: number }>> };
  registry: { resolve(name: string, version: number): { sha256: string } | Promise<{ sha256: string }> };
}): ArtifactGrantSources {
  return {
    desired: async (deviceId) => deps.fleet.getDesired(deviceId),
    activeRollouts: async () =>
      (await deps.rollouts.list({ activeOnly: true })).map((r) => ({ model: r.plan.model, version: r.plan.version, sentTo: r.targets.slice(0, r.touched) })),
    sha256Of: async (model, version) => {
      try {
        return (await deps.registry.resolve(model, version)).sha256;
      } catch {
        return undefined; // a version gone from the registry grants nothing
      }
    },
  };
}
