import type { Clock } from '../../common/clock.js';
import { DriftlineError } from '../../common/errors.js';
import { assertDeviceId, assertModelName } from '../../common/ids.js';
import type { Logger } from '../../common/logger.js';
import type { ModelVersion } from '../../common/proto/driftline/v1/models.js';
import type { Release } from '../../common/proto/driftline/v1/releases.js';
import { MAX_AUDIENCE, scopeViolation } from '../../common/trust/automation.js';
import type { Signer } from '../../common/trust/keys.js';
import { buildManifest, signManifestBytes, type ReleaseManifest, type ReleaseManifestInput } from '../../common/trust/manifest.js';
import type { ReleaseStore } from './release-store.js';

/** Golden-vector tolerance of a manifest the caller gives no vectors for (the CLI's manifest builder uses the same). */
const DEFAULT_GOLDEN = { tolerance: { abs: 1e-4, rel: 1e-3 }, vectors: [] };

/**
 * What the caller knows beyond the stored version: lineage, golden vectors, the reference,
 * example inputs, constraints. The identity of the release (name, version, sha256, size, opset,
 * inputs, outputs) always comes from the registry, never from here.
 */
export type ManifestExtras = Partial<Pick<ReleaseManifestInput, 'constraints' | 'reference' | 'examples' | 'golden' | 'lineage'>>;

export interface CanaryRequest {
  model: string;
  version: number;
  /** The devices the canary is for (the cohort whose drift triggered the retraining): 1..scope.maxDevices distinct ids. */
  audience: readonly string[];
  manifest?: ManifestExtras;
}

/**
 * The outcome the retraining loop records: signed online as a canary for its audience (devices
 * outside it refuse it), or waiting for `driftline models sign` (the default: no automation key,
 * or the request falls outside the key's scope; `reason` says which). Either way the release
 * store keeps the draft a release key signs to make the version fleet-wide.
 */
export type CanarySigning = { state: 'signed-canary'; release: Release; keyId: string; audience: string[] } | { state: 'awaiting-signature'; reason: string };

/** The port the retraining loop calls after a candidate passes its gate and becomes a version. */
export interface ReleaseSigning {
  signCanary(request: CanaryRequest): Promise<CanarySigning>;
}

export interface ReleaseSignerOptions {
  releases: Pick<ReleaseStore, 'trusted' | 'automationScope' | 'recordDraft' | 'publish'>;
  registry: { resolve(name: string, version: number): Promise<ModelVersion> };
  clock: Clock;
  logger: Logger;
  /** The online automation key (config trust.automationKey), when the operator opted in. */
  automationSigner?: Signer;
}

/**
 * Signs released candidates as scoped canaries with the automation key, when one is configured
 * and the root delegates the model to it; otherwise records the draft and reports
 * awaiting-signature. The devices enforce the scope whatever this does (common/trust/automation.ts):
 * the checks here only turn a canary devices would refuse into a clear awaiting-signature.
 */
export class ReleaseSigner implements ReleaseSigning {
  constructor(private readonly options: ReleaseSignerOptions) {}

  async signCanary(request: CanaryRequest): Promise<CanarySigning> {
    const { releases, automationSigner: signer } = this.options;
    if (!releases.trusted) throw new DriftlineError('TRUST_NOT_CONFIGURED', 'the control plane has no trust root (serve --trust-root <keys>/root)');
    const name = assertModelName(request.model);
    const audience = [...new Set(request.audience.map((id) => assertDeviceId(id)))];
    if (audience.length === 0 || audience.length > MAX_AUDIENCE)
      throw new DriftlineError('REQUEST_INVALID', `a canary names 1 to ${MAX_AUDIENCE} devices; ${audience.length} given`);
    const draft = await this.draftOf(name, request.version, request.manifest ?? {});

    const awaiting = async (reason: string): Promise<CanarySigning> => {
      await releases.recordDraft(draft, reason);
      this.options.logger.info({ model: name, version: draft.version, reason }, 'release awaits a signature (driftline models sign)');
      return { state: 'awaiting-signature', reason };
    };
    if (!signer) return awaiting('no automation key is configured (serve --automation-key): sign it with `driftline models sign`');
    const scope = releases.automationScope(signer.keyId);
    if (!scope) return awaiting(`TRUST_KEY_UNKNOWN: the root does not delegate automation key ${signer.keyId.slice(0, 12)} (or revoked it)`);
    const violation = scopeViolation({ name, version: draft.version, audience }, scope, signer.keyId);
    if (violation) return awaiting(`${violation.code}: ${violation.message}`);

    // The draft first: a canary always has the manifest a release key promotes it with.
    await releases.recordDraft(draft, 'signed online as a canary; a release key makes it fleet-wide');
    const envelope = signManifestBytes(buildManifest({ ...draft, audience }), signer);
    const release = await releases.publish(name, draft.version, envelope);
    this.options.logger.info({ model: name, version: draft.version, keyId: signer.keyId, audience: audience.length }, 'canary signed by the automation key');
    return { state: 'signed-canary', release, keyId: signer.keyId, audience };
  }

  /** The manifest of exactly the stored version, the caller's extras around the registry's identity fields. */
  private async draftOf(name: string, version: number, extras: ManifestExtras): Promise<ReleaseManifest> {
    const stored = await this.options.registry.resolve(name, version);
    return buildManifest({
      type: 'driftline-release',
      constraints: extras.constraints ?? {},
      ...(extras.reference ? { reference: extras.reference } : {}),
      ...(extras.examples ? { examples: extras.examples } : {}),
      golden: extras.golden ?? DEFAULT_GOLDEN,
      lineage: { parentVersion: stored.version - 1, ...(extras.lineage ?? {}) },
      name: stored.name,
      version: stored.version,
      artifact: { sha256: stored.sha256, sizeBytes: stored.sizeBytes },
      opset: stored.opset,
      inputs: stored.inputs.map((t) => ({ name: t.name, type: t.type, shape: [...t.shape] })),
      outputs: stored.outputs.map((t) => ({ name: t.name, type: t.type, shape: [...t.shape] })),
      createdAtMs: this.options.clock.now(),
    });
  }
}
