import { DriftlineError } from '../../common/errors.js';
import { federatedLineageSchema, type FederatedManifestLineage } from '../../common/trust/manifest.js';
import type { Logger } from '../../common/logger.js';
import type { FleetStore } from '../fleet/fleet-store.js';
import type { ModelRegistry } from '../registry/model-registry.js';
import type { ReleaseSigning as ReleaseSigner } from '../registry/release-signing.js';
import type { ReleaseStore } from '../registry/release-store.js';
import type { ReleaseSigning } from './release-canary.js';
import type { RetrainedReleaseData } from './release-data.js';

/**
 * The release canary's signing port over the registry's ReleaseSigner: the canary's audience
 * (a label selector: the drifted cohort) becomes the device ids the signed manifest names, and
 * the version's lineage metadata (what the candidate sink recorded) goes into the manifest, with
 * golden vectors recorded on its snapshot's test rows, example inputs and its drift reference's
 * distributions (release-data.ts), so the device self-tests a retrained version like a pushed one.
 * Release data that cannot be computed is logged and left out (the manifest's golden vectors are
 * then none, as before).
 *
 * A version already signed is not signed again: a release key's signature given offline
 * (`driftline models sign`, fleet-wide) or a canary for the same devices (signed before a restart
 * cut the step short) answers `signed`. Asking the signer again would publish a second envelope
 * for the version (RELEASE_CONFLICT), or, without an automation key or outside its scope, keep
 * answering awaiting-signature after a human signed it.
 *
 * A control plane without a trust root has nothing to sign with and its devices accept unsigned
 * models (the unsigned mode): the canary rolls out as it would after a signature.
 */
export function canarySigningOf(deps: {
  signer: ReleaseSigner;
  fleet: Pick<FleetStore, 'list'>;
  registry: Pick<ModelRegistry, 'resolve'>;
  /** What is signed already; absent: the signer is always asked. */
  releases?: Pick<ReleaseStore, 'statuses' | 'trusted'>;
  logger: Logger;
  release?: Pick<RetrainedReleaseData, 'manifestExtras'>;
}): ReleaseSigning {
  const { signer, fleet, registry, releases, logger, release } = deps;
  return {
    async signCanary({ model, version, audience }) {
      // Decommissioned devices never install anything; sorted so a retry names the same audience.
      const devices = (await fleet.list(audience)).map((d) => d.id).sort();
      if (devices.length === 0) return { state: 'awaiting-signature' };
      if (releases?.trusted) {
        const [current] = await releases.statuses([{ name: model, version }]);
        const sameAudience = (names: readonly string[]): boolean => names.length === devices.length && [...names].sort().every((id, i) => id === devices[i]);
        if (current?.status === 'signed' || (current?.status === 'canary' && sameAudience(current.audience))) return { state: 'signed' };
      }
      const metadata = (await registry.resolve(model, version)).metadata;
      const lineage = {
        parentVersion: Number(metadata['lineage.parent_version']) || 0,
        dataSha256: metadata['lineage.dataset_sha256'] ?? '',
        job: metadata['lineage.job_id'] ?? '',
        metrics: numbersOf(metadata['lineage.metrics']),
        // A federated task's version: its task, rounds, clients, strategy and privacy spent (federated/release/).
        ...federatedOf(metadata['lineage.federated']),
      };
      const extras = await release?.manifestExtras({ model, version }).catch((err: unknown) => {
        logger.warn(
          { model, version, code: err instanceof DriftlineError ? err.code : undefined, err: (err as Error).message },
          'no golden vectors for the retrained version: its canary manifest carries none',
        );
        return undefined;
      });
      try {
        const signed = await signer.signCanary({ model, version, audience: devices, manifest: { lineage, ...(extras ?? {}) } });
        return { state: signed.state === 'signed-canary' ? 'signed' : 'awaiting-signature' };
      } catch (err) {
        if (err instanceof DriftlineError && err.code === 'TRUST_NOT_CONFIGURED') {
          logger.warn({ model, version }, 'no trust root: the retrained version rolls out unsigned (devices in unsigned mode accept it)');
          return { state: 'signed' };
        }
        throw err;
      }
    },
  };
}

/** The federated lineage a version's metadata records, when it parses; {} otherwise (a version no federated task made). */
function federatedOf(json: string | undefined): { federated?: FederatedManifestLineage } {
  if (!json) return {};
  try {
    const parsed = federatedLineageSchema.safeParse(JSON.parse(json));
    return parsed.success ? { federated: parsed.data } : {};
  } catch {
    return {};
  }
}

/** The finite numbers of a JSON object (the trainer's metrics as the sink stored them); {} when it is not one. */
function numbersOf(json: string | undefined): Record<string, number> {
  if (!json) return {};
  try {
    const parsed: unknown = JSON.parse(json);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return {};
    return Object.fromEntries(Object.entries(parsed).filter((e): e is [string, number] => typeof e[1] === 'number' && Number.isFinite(e[1])));
  } catch {
    return {};
  }
}
