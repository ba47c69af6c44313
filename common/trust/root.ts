import { z } from 'zod';
import type { Clock } from '../clock.js';
import { DriftlineError } from '../errors.js';
import { canonicalJson } from './canonical.js';
import { automationScopeSchema } from './automation.js';
import { decodeEnvelope, encodeEnvelope, parsePayload, signEnvelope, verifyEnvelope, type Envelope } from './dsse.js';
import { keyIdOf, publicKeySchema, type Signer } from './keys.js';

export const ROOT_PAYLOAD_TYPE = 'application/vnd.driftline.root+json';

const keyMap = z
  .record(z.string().regex(/^[0-9a-f]{64}$/), publicKeySchema)
  .refine((keys) => Object.entries(keys).every(([id, key]) => keyIdOf(key) === id), 'every key id must be the sha256 of its public key');

const automationKeyMap = z
  .record(z.string().regex(/^[0-9a-f]{64}$/), z.object({ publicKey: publicKeySchema, scope: automationScopeSchema }))
  .refine((keys) => Object.entries(keys).every(([id, key]) => keyIdOf(key.publicKey) === id), 'every key id must be the sha256 of its public key');

/**
 * Root metadata, in the spirit of TUF's root role: the root keys and how many of them must
 * sign (threshold), the release keys allowed to sign manifests, the online keys allowed to
 * sign rollback directives only, the online automation keys allowed to sign canaries within a
 * scope (common/trust/automation.ts), and the revoked key ids. Every change is a new version
 * signed by a threshold of the old and of the new root keys. Roots from before automation keys
 * parse with none.
 */
export const rootMetadataSchema = z
  .object({
    type: z.literal('driftline-root'),
    version: z.number().int().min(1),
    expiresAtMs: z.number().int().positive(),
    threshold: z.number().int().min(1),
    rootKeys: keyMap,
    releaseKeys: keyMap,
    rollbackKeys: keyMap.default({}),
    automationKeys: automationKeyMap.default({}),
    revokedKeys: z.array(z.string()).default([]),
  })
  .refine((r) => Object.keys(r.rootKeys).length >= r.threshold, 'the threshold exceeds the number of root keys')
  .refine((r) => Object.keys(r.releaseKeys).every((id) => !r.revokedKeys.includes(id)), 'a revoked key cannot be a release key')
  .refine((r) => Object.keys(r.automationKeys).every((id) => !r.revokedKeys.includes(id)), 'a revoked key cannot be an automation key')
  .refine(
    (r) =>
      Object.keys(r.automationKeys).every((id) => !Object.hasOwn(r.releaseKeys, id) && !Object.hasOwn(r.rollbackKeys, id) && !Object.hasOwn(r.rootKeys, id)),
    'an automation key cannot hold another role (its scope would not bound it)',
  );

export type RootMetadata = z.output<typeof rootMetadataSchema>;
/** Root metadata as written by hand or by older code: the fields with defaults may be left out. */
export type RootMetadataInput = z.input<typeof rootMetadataSchema>;

/** A root that has been verified, with the exact envelope bytes it came in (what gets pinned). */
export interface TrustedRoot {
  metadata: RootMetadata;
  envelope: Buffer;
}

export function signRoot(metadata: RootMetadataInput, signers: readonly Signer[]): Envelope {
  const checked = rootMetadataSchema.parse(metadata);
  return signEnvelope(ROOT_PAYLOAD_TYPE, Buffer.from(canonicalJson(checked)), signers);
}

export const signRootBytes = (metadata: RootMetadataInput, signers: readonly Signer[]): Buffer => encodeEnvelope(signRoot(metadata, signers));

/** Reads a root envelope without checking its signatures (to learn its version). */
export function peekRoot(bytes: Uint8Array): RootMetadata {
  const envelope = decodeEnvelope(bytes, 'TRUST_ROOT_INVALID');
  return parsePayload(Buffer.from(envelope.payload, 'base64'), rootMetadataSchema, 'TRUST_ROOT_INVALID', 'root metadata');
}

/**
 * The first root a device trusts (at enrollment): signed by a threshold of its own keys
 * and not expired. Trust in it comes from the authenticated enrollment, as in TUF's
 * shipped root.
 */
export function verifyInitialRoot(bytes: Uint8Array, clock: Clock): TrustedRoot {
  const envelope = decodeEnvelope(bytes, 'TRUST_ROOT_INVALID');
  if (envelope.payloadType !== ROOT_PAYLOAD_TYPE) throw new DriftlineError('TRUST_ROOT_INVALID', 'not root metadata');
  const metadata = parsePayload(Buffer.from(envelope.payload, 'base64'), rootMetadataSchema, 'TRUST_ROOT_INVALID', 'root metadata');
  verifyEnvelope(envelope, ROOT_PAYLOAD_TYPE, metadata.rootKeys, metadata.threshold, `root v${metadata.version}`);
  assertNotExpired(metadata, clock);
  return { metadata, envelope: Buffer.from(bytes) };
}

/** v(n) -> v(n+1): exactly the next version, signed by a threshold of the old and of the new root keys. */
export function verifyNextRoot(trusted: RootMetadata, bytes: Uint8Array): TrustedRoot {
  const envelope = decodeEnvelope(bytes, 'TRUST_ROOT_INVALID');
  if (envelope.payloadType !== ROOT_PAYLOAD_TYPE) throw new DriftlineError('TRUST_ROOT_INVALID', 'not root metadata');
  const next = parsePayload(Buffer.from(envelope.payload, 'base64'), rootMetadataSchema, 'TRUST_ROOT_INVALID', 'root metadata');
  if (next.version !== trusted.version + 1) {
    throw new DriftlineError('TRUST_ROOT_INVALID', `root v${next.version} does not follow the trusted v${trusted.version}`, {
      details: { trusted: trusted.version, offered: next.version },
    });
  }
  verifyEnvelope(envelope, ROOT_PAYLOAD_TYPE, trusted.rootKeys, trusted.threshold, `root v${next.version} (by the keys of v${trusted.version})`);
  verifyEnvelope(envelope, ROOT_PAYLOAD_TYPE, next.rootKeys, next.threshold, `root v${next.version} (by its own keys)`);
  return { metadata: next, envelope: Buffer.from(bytes) };
}

/**
 * Walks from the trusted root through every newer version in `chain` (any order, older
 * versions and duplicates skipped), each verified by both thresholds, then checks the result
 * has not expired. All or nothing: one bad link refuses the whole update, so a caller that
 * persists only the returned root never stores a partially trusted chain.
 */
export function updateRoot(trusted: TrustedRoot, chain: readonly Uint8Array[], clock: Clock): TrustedRoot {
  const newer = chain
    .map((bytes) => ({ bytes, version: peekRoot(bytes).version }))
    .filter((c) => c.version > trusted.metadata.version)
    .sort((a, b) => a.version - b.version);
  let current = trusted;
  for (const { bytes, version } of newer) {
    if (version === current.metadata.version) continue;
    current = verifyNextRoot(current.metadata, bytes);
  }
  assertNotExpired(current.metadata, clock);
  return current;
}

export function assertNotExpired(metadata: RootMetadata, clock: Clock): void {
  if (clock.now() >= metadata.expiresAtMs) {
    throw new DriftlineError('TRUST_METADATA_EXPIRED', `root v${metadata.version} expired at ${new Date(metadata.expiresAtMs).toISOString()}`, {
      details: { version: metadata.version, expiresAtMs: metadata.expiresAtMs },
    });
  }
}

/**
 * Keys allowed for a role, minus the revoked ones: release keys sign manifests; rollback
 * directives are signed by release or rollback keys; automation keys sign scoped canaries
 * (never rollback directives, never roots).
 */
export function activeKeys(root: RootMetadata, role: 'release' | 'rollback' | 'automation'): Record<string, string> {
  const keys =
    role === 'release'
      ? root.releaseKeys
      : role === 'rollback'
        ? { ...root.releaseKeys, ...root.rollbackKeys }
        : Object.fromEntries(Object.entries(root.automationKeys).map(([id, k]) => [id, k.publicKey]));
  return Object.fromEntries(Object.entries(keys).filter(([id]) => !root.revokedKeys.includes(id)));
}

/** A reason devices will (soon) refuse what this root signs; warnings only, never thrown. */
export interface TrustWarning {
  code: 'TRUST_ROOT_EXPIRING' | 'TRUST_METADATA_EXPIRED' | 'TRUST_KEY_REVOKED';
  message: string;
  details: Record<string, unknown>;
}

/** A warning when the root has expired or expires within `windowMs`; undefined while it has longer. */
export function rootExpiryWarning(metadata: Pick<RootMetadata, 'version' | 'expiresAtMs'>, nowMs: number, windowMs: number): TrustWarning | undefined {
  const details = { version: metadata.version, expiresAtMs: metadata.expiresAtMs };
  const at = new Date(metadata.expiresAtMs).toISOString();
  if (nowMs >= metadata.expiresAtMs) {
    return {
      code: 'TRUST_METADATA_EXPIRED',
      message: `root v${metadata.version} expired at ${at}: devices refuse every release until a new root version is published (driftline keys rotate)`,
      details,
    };
  }
  if (metadata.expiresAtMs - nowMs <= windowMs) {
    const days = Math.floor((metadata.expiresAtMs - nowMs) / 86_400_000);
    return {
      code: 'TRUST_ROOT_EXPIRING',
      message: `root v${metadata.version} expires at ${at} (in ${days} days): publish the next root version (driftline keys rotate --expires ...)`,
      details,
    };
  }
  return undefined;
}
