import { ManualClock, type Clock } from '../../common/clock.js';
import { asDriftlineError, DriftlineError } from '../../common/errors.js';
import { assertModelName } from '../../common/ids.js';
import type { Logger } from '../../common/logger.js';
import type { DesiredModel } from '../../common/proto/driftline/v1/device_link.js';
import type { ModelVersion } from '../../common/proto/driftline/v1/models.js';
import type { Release, ReleaseDraft, ReleaseStatus } from '../../common/proto/driftline/v1/releases.js';
import type { AutomationScope } from '../../common/trust/automation.js';
import type { Signer } from '../../common/trust/keys.js';
import { canonicalJson } from '../../common/trust/canonical.js';
import { buildManifest, verifyRelease, type ReleaseManifest, type VerifiedRelease } from '../../common/trust/manifest.js';
import { rootExpiryWarning, updateRoot, verifyInitialRoot, type TrustedRoot, type TrustWarning } from '../../common/trust/root.js';
import { signRollbackDirective } from '../../common/trust/rollback.js';
import { artifactPath } from './artifact-store.js';
import type { ReleaseRepository, RollbackDirectiveRequest, StoredRelease, StoredReleaseDraft } from './ports.js';

/** The most versions one ListReleaseStatuses call may ask about. */
export const MAX_STATUS_REFS = 1000;

export interface ReleaseStoreOptions {
  releases: ReleaseRepository;
  clock: Clock;
  logger: Logger;
  /** Every known root version, oldest first (from `driftline keys init`/`rotate`); empty: no trust root. */
  rootChain: readonly Buffer[];
  registry: { resolve(name: string, version: number): Promise<ModelVersion> };
  /** The online rollback key, when the operator opted in to online signing of rollback directives. */
  rollbackSigner?: Signer;
}

/**
 * Signed releases beside the model registry: a release is a model version's DSSE-signed
 * manifest, accepted only when it verifies against the configured root and describes exactly
 * the stored version (name, version, sha256, size). Versions are assigned by the registry at
 * upload; the CLI signs the assigned version and publishes the envelope here (two calls).
 */
export class ReleaseStore {
  private readonly root: TrustedRoot | undefined;

  constructor(private readonly options: ReleaseStoreOptions) {
    const [first, ...rest] = options.rootChain;
    // The chain must hold together (the control plane hands it to devices); expiry is checked per use.
    const far = new ManualClock(0);
    this.root = first ? updateRoot(verifyInitialRoot(first, far), rest, far) : undefined;
  }

  get trusted(): boolean {
    return this.root !== undefined;
  }

  /** The newest root version devices pin at enrollment. */
  latestRoot(): Buffer | undefined {
    return this.root?.envelope;
  }

  rootChain(): Buffer[] {
    return [...this.options.rootChain];
  }

  rootVersion(): { version: number; expiresAtMs: number } | undefined {
    return this.root ? { version: this.root.metadata.version, expiresAtMs: this.root.metadata.expiresAtMs } : undefined;
  }

  /**
   * Why devices would refuse this signed release now (its keys revoked by the current root,
   * or the root expired), or undefined. Unsigned versions are not judged here: devices that
   * pinned no root accept them, and deploying one with a root configured is warned about.
   */
  async refusal(name: string, version: number): Promise<DriftlineError | undefined> {
    const envelope = this.root ? await this.envelopeOf(name, version) : undefined;
    if (!this.root || !envelope) return undefined;
    try {
      verifyRelease(envelope, this.root.metadata, this.options.clock);
      return undefined;
    } catch (err) {
      return asDriftlineError(err);
    }
  }

  /**
   * Refuses (RELEASE_NOT_DEPLOYABLE, the devices' reason in details.reason) a release every
   * device would refuse, and, given the target devices, a canary (a release naming an audience)
   * sent to devices it does not name: they would refuse it with RELEASE_NOT_IN_AUDIENCE.
   */
  async assertDeployable(name: string, version: number, deviceIds?: readonly string[]): Promise<void> {
    const why = await this.refusal(name, version);
    if (why) {
      throw new DriftlineError('RELEASE_NOT_DEPLOYABLE', `devices will refuse ${name} v${version} (${why.code}): ${why.message}`, {
        cause: why,
        details: { model: name, version, reason: why.code },
      });
    }
    const envelope = deviceIds && this.root ? await this.envelopeOf(name, version) : undefined;
    if (!envelope || !deviceIds) return;
    const { manifest } = verifyRelease(envelope, this.root!.metadata, this.options.clock);
    if (!manifest.audience) return;
    const audience = new Set(manifest.audience);
    const outside = deviceIds.filter((id) => !audience.has(id));
    if (outside.length === 0) return;
    throw new DriftlineError(
      'RELEASE_NOT_DEPLOYABLE',
      `${name} v${version} is a canary for ${audience.size} device(s); ${outside.length} target(s) are not among them (${outside.slice(0, 5).join(', ')}${outside.length > 5 ? ', ...' : ''}) and would refuse it: ` +
        `deploy it to its audience, or sign it fleet-wide (driftline models sign ${name} ${version})`,
      { details: { model: name, version, reason: 'RELEASE_NOT_IN_AUDIENCE', outside: outside.slice(0, 100) } },
    );
  }

  /** What an operator should hear about: the root expiring within `expiryWarningMs` or expired, and deployed releases signed by a revoked key. */
  async trustWarnings(deployed: ReadonlyArray<{ name: string; version: number }>, expiryWarningMs: number): Promise<TrustWarning[]> {
    if (!this.root) return [];
    const warnings: TrustWarning[] = [];
    const expiry = rootExpiryWarning(this.root.metadata, this.options.clock.now(), expiryWarningMs);
    if (expiry) warnings.push(expiry);
    const seen = new Set<string>();
    for (const { name, version } of deployed) {
      const key = `${name}@${version}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const why = await this.refusal(name, version);
      if (why?.code === 'TRUST_KEY_REVOKED') {
        warnings.push({
          code: 'TRUST_KEY_REVOKED',
          message: `deployed ${name} v${version} is signed by a key root v${this.root.metadata.version} revokes: devices refuse it; sign it again with a current release key or deploy another version`,
          details: { model: name, version },
        });
      }
    }
    return warnings;
  }

  /**
   * Stores a signed manifest for a stored version. Publishing the same envelope again is a
   * no-op; a different envelope for an already signed version is a conflict, with one
   * exception: a fleet-wide release-key signature replaces a release the fleet would not take
   * (a canary signed only by an automation key, or one whose keys the root has since revoked).
   * That is how a human promotes a canary; a canary never replaces a fleet-wide release.
   */
  async publish(name: string, version: number, envelope: Buffer): Promise<Release> {
    const root = this.requireRoot();
    assertModelName(name);
    const verified = verifyRelease(envelope, root.metadata, this.options.clock);
    const { manifest, keyIds } = verified;
    const stored = await this.options.registry.resolve(name, version);
    if (
      manifest.name !== stored.name ||
      manifest.version !== stored.version ||
      manifest.artifact.sha256 !== stored.sha256 ||
      manifest.artifact.sizeBytes !== stored.sizeBytes
    ) {
      throw new DriftlineError(
        'RELEASE_MISMATCH',
        `the manifest (${manifest.name} v${manifest.version}) does not describe the stored ${stored.name} v${stored.version}`,
      );
    }
    const fleetWide = isFleetWide(verified);
    // Read and written in one unit of work: of two publishes of one version, the second sees the first.
    const { release, change } = await this.options.releases.transaction(async (tx) => {
      const existing = await tx.release(name, version);
      const row: StoredRelease = {
        name,
        version,
        sha256: stored.sha256,
        sizeBytes: stored.sizeBytes,
        keyIds,
        envelope,
        publishedAtMs: this.options.clock.now(),
      };
      if (existing) {
        if (Buffer.compare(existing.envelope, envelope) === 0) return { release: existing, change: 'none' as const };
        if (!fleetWide || this.isFleetWideNow(existing)) {
          throw new DriftlineError('RELEASE_CONFLICT', `${name} v${version} is already signed`, {
            details: { model: name, version, existing: this.statusOf(existing).status },
          });
        }
        await tx.replace(row);
        return { release: row, change: 'promoted' as const };
      }
      await tx.insert(row);
      return { release: row, change: 'inserted' as const };
    });
    if (change === 'inserted')
      this.options.logger.info(
        { model: name, version, keyIds, signedBy: verified.signedBy, audience: manifest.audience?.length ?? 0 },
        'signed release published',
      );
    if (change === 'promoted') this.options.logger.info({ model: name, version, keyIds }, 'canary promoted: signed fleet-wide by a release key');
    return copyOf(release);
  }

  /** The scope the current root gives an automation key; undefined when the root does not delegate it (or revoked it). */
  automationScope(keyId: string): AutomationScope | undefined {
    const root = this.root?.metadata;
    if (!root || root.revokedKeys.includes(keyId) || !Object.hasOwn(root.automationKeys, keyId)) return undefined;
    return root.automationKeys[keyId]!.scope;
  }

  /** Records the unsigned manifest proposed for a stored version (without an audience), for `driftline models sign`. */
  async recordDraft(manifest: ReleaseManifest, reason: string): Promise<void> {
    this.requireRoot();
    const checked = buildManifest({ ...manifest, audience: undefined });
    const draft: StoredReleaseDraft = {
      name: checked.name,
      version: checked.version,
      manifest: Buffer.from(canonicalJson(checked)),
      recordedAtMs: this.options.clock.now(),
      reason: reason.slice(0, 1024),
    };
    await this.options.releases.transaction((tx) => tx.putDraft(draft));
  }

  /** The draft of a version awaiting a signature (MODEL_NOT_FOUND when it has none). */
  async draft(name: string, version: number): Promise<ReleaseDraft> {
    assertModelName(name);
    const draft = await this.options.releases.draft(name, version);
    if (!draft)
      throw new DriftlineError(
        'MODEL_NOT_FOUND',
        `${name} v${version} has no release draft (sign it from its file: driftline models sign ${name} ${version} <file>)`,
      );
    return { ...draft, manifest: Buffer.from(draft.manifest) };
  }

  /** The signature status of each version (unsigned, awaiting-signature, canary, signed, refused). */
  async statuses(refs: ReadonlyArray<{ name: string; version: number }>): Promise<ReleaseStatus[]> {
    if (refs.length > MAX_STATUS_REFS) throw new DriftlineError('REQUEST_INVALID', `at most ${MAX_STATUS_REFS} versions per call`);
    const out: ReleaseStatus[] = [];
    for (const ref of refs) {
      assertModelName(ref.name);
      const base = { name: ref.name, version: ref.version, signedBy: '', keyIds: [] as string[], audience: [] as string[], reason: '' };
      const release = this.root ? await this.options.releases.release(ref.name, ref.version) : undefined;
      if (release) {
        out.push({ ...base, ...this.statusOf(release) });
        continue;
      }
      const draft = this.root ? await this.options.releases.draft(ref.name, ref.version) : undefined;
      out.push(draft ? { ...base, status: 'awaiting-signature', reason: draft.reason } : { ...base, status: 'unsigned' });
    }
    return out;
  }

  private statusOf(release: StoredRelease): Omit<ReleaseStatus, 'name' | 'version'> {
    const keyIds = [...release.keyIds];
    try {
      const verified = verifyRelease(release.envelope, this.requireRoot().metadata, this.options.clock);
      return {
        status: isFleetWide(verified) ? 'signed' : 'canary',
        signedBy: verified.signedBy,
        keyIds,
        audience: [...(verified.manifest.audience ?? [])],
        reason: '',
      };
    } catch (err) {
      return { status: 'refused', signedBy: '', keyIds, audience: [], reason: asDriftlineError(err).code };
    }
  }

  private isFleetWideNow(release: StoredRelease): boolean {
    try {
      return isFleetWide(verifyRelease(release.envelope, this.requireRoot().metadata, this.options.clock));
    } catch {
      return false;
    }
  }

  private requireRoot(): TrustedRoot {
    if (!this.root) throw new DriftlineError('TRUST_NOT_CONFIGURED', 'the control plane has no trust root (serve --trust-root <keys>/root)');
    return this.root;
  }

  /** The signed release of a version; version 0 means the latest signed one. */
  async get(name: string, version: number): Promise<Release> {
    assertModelName(name);
    const release = version === 0 ? await this.options.releases.latestRelease(name) : await this.options.releases.release(name, version);
    if (!release) throw new DriftlineError('MODEL_NOT_FOUND', `${name}${version ? ` v${version}` : ''} has no signed release`);
    return copyOf(release);
  }

  async envelopeOf(name: string, version: number): Promise<Buffer | undefined> {
    return (await this.options.releases.release(name, version))?.envelope;
  }

  /**
   * The desired model for a version, with its signed envelope when there is one, plus the
   * root chain devices walk. What DeployModel and the rollout engine send.
   */
  async desiredModel(model: ModelVersion): Promise<{ model: DesiredModel; rootChain: Buffer[] }> {
    const envelope = await this.envelopeOf(model.name, model.version);
    if (this.root && !envelope) {
      this.options.logger.warn({ model: model.name, version: model.version }, 'deploying an unsigned version: devices with a pinned root will refuse it');
    }
    return {
      model: {
        name: model.name,
        version: model.version,
        sha256: model.sha256,
        sizeBytes: model.sizeBytes,
        artifactPath: artifactPath(model.sha256),
        driftReference: model.metadata['driftline.reference'] ?? '',
        envelope: envelope ?? Buffer.alloc(0),
        rollback: Buffer.alloc(0),
      },
      rootChain: envelope ? this.rootChain() : [],
    };
  }

  /**
   * A signed rollback directive allowing `deviceIds` (empty: any device) to go back to
   * `toVersion` of `model`, signed by the online rollback key; undefined when online signing
   * is not enabled (devices then refuse the older version, and the operator signs offline).
   */
  async rollbackDirective(input: RollbackDirectiveRequest): Promise<Buffer | undefined> {
    const signer = this.options.rollbackSigner;
    if (!signer) return undefined;
    const target = await this.options.registry.resolve(input.model, input.toVersion);
    const now = this.options.clock.now();
    return signRollbackDirective(
      {
        type: 'driftline-rollback',
        id: input.id,
        model: input.model,
        toVersion: input.toVersion,
        toSha256: target.sha256,
        deviceIds: [...input.deviceIds],
        reason: input.reason.slice(0, 1024),
        issuedAtMs: now,
        expiresAtMs: now + input.ttlMs,
      },
      signer,
    );
  }
}

/** Whether every device (in the root's trust) takes this release: a release key signed it and it names no audience. */
const isFleetWide = (verified: VerifiedRelease): boolean => verified.signedBy === 'release-key' && !verified.manifest.audience;

/** A release to hand out: its key ids and envelope its own, so a caller cannot change what is stored. */
const copyOf = (release: StoredRelease): Release => ({ ...release, keyIds: [...release.keyIds], envelope: Buffer.from(release.envelope) });
