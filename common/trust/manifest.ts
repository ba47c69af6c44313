import { z } from 'zod';
import type { Clock } from '../clock.js';
import { DriftlineError } from '../errors.js';
import { exampleInputsSchema } from '../onnx/example-inputs.js';
import { assertInAudience, assertWithinScope, deviceIdSchema, MAX_AUDIENCE } from './automation.js';
import { canonicalJson } from './canonical.js';
import { decodeEnvelope, encodeEnvelope, parsePayload, signEnvelope, verifyEnvelope, type Envelope } from './dsse.js';
import type { Signer } from './keys.js';
import { activeKeys, assertNotExpired, type RootMetadata } from './root.js';

export const MANIFEST_PAYLOAD_TYPE = 'application/vnd.driftline.manifest+json';

const MODEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const SHA256 = /^[0-9a-f]{64}$/;

const tensorSpec = z.object({ name: z.string().max(256), type: z.string().max(64), shape: z.array(z.number().int()).max(16) });

/** A tensor in a golden vector: element type, dims, and row-major values (int64 as numbers). */
export const goldenTensorSchema = z.object({
  type: z.string().max(32),
  dims: z.array(z.number().int().nonnegative()).max(16),
  data: z.array(z.union([z.number(), z.string(), z.boolean()])).max(1 << 20),
});
export type GoldenTensor = z.infer<typeof goldenTensorSchema>;

export const goldenVectorSchema = z.object({
  inputs: z.record(z.string(), goldenTensorSchema),
  outputs: z.record(z.string(), goldenTensorSchema),
});
export type GoldenVector = z.infer<typeof goldenVectorSchema>;

/**
 * Reference distributions drift is measured against, derived from the --reference CSV:
 * per numeric feature, quantile bin edges (ascending, interior) and the count of reference
 * rows in each of the edges.length + 1 bins. (common/drift/ did not exist when this was
 * written; a DriftReference can replace it behind the same field.)
 */
export const referenceSchema = z.object({
  rows: z.number().int().nonnegative(),
  dataSha256: z.string().regex(SHA256),
  features: z.array(z.object({ name: z.string().max(256), edges: z.array(z.number()), counts: z.array(z.number().int().nonnegative()) })).max(4096),
});
export type ReferenceDistributions = z.infer<typeof referenceSchema>;

/** What a federated task's version records of how it was trained: no central data, so this stands where a dataset would. */
export const federatedLineageSchema = z.object({
  taskId: z.string().min(1).max(256),
  rounds: z.number().int().nonnegative(),
  clientsPerRound: z.number().int().nonnegative(),
  strategy: z.string().max(64),
  /** sync (rounds with a deadline) or async (FedBuff). */
  mode: z.string().max(16),
  /** Privacy spent ((ε, δ); 0 and 0 without differential privacy). */
  epsilon: z.number().nonnegative(),
  delta: z.number().min(0).max(1),
});
export type FederatedManifestLineage = z.infer<typeof federatedLineageSchema>;

export const releaseManifestSchema = z.object({
  type: z.literal('driftline-release'),
  name: z.string().regex(MODEL_NAME, 'invalid model name'),
  version: z.number().int().min(1),
  artifact: z.object({ sha256: z.string().regex(SHA256), sizeBytes: z.number().int().positive() }),
  opset: z.number().int().nonnegative(),
  inputs: z.array(tensorSpec).max(256),
  outputs: z.array(tensorSpec).max(256),
  /** What a device needs: any of the providers, one of the archs (empty: any), memory. */
  constraints: z
    .object({
      providers: z.array(z.string().max(32)).max(16).default([]),
      arch: z.array(z.string().max(32)).max(16).default([]),
      minMemoryBytes: z.number().int().nonnegative().default(0),
      flags: z.array(z.string().max(64)).max(32).default([]),
    })
    .prefault({}),
  reference: referenceSchema.optional(),
  /** Inputs the model is known to run on (warm-up, golden vectors); manifests from before they existed have none. */
  examples: exampleInputsSchema.optional(),
  golden: z.object({ tolerance: z.object({ abs: z.number().nonnegative(), rel: z.number().nonnegative() }), vectors: z.array(goldenVectorSchema).max(64) }),
  lineage: z
    .object({
      parentVersion: z.number().int().nonnegative().default(0),
      /** The version whose bytes this one takes with corrected metadata (`driftline models amend`); absent otherwise, so earlier manifests keep their bytes. */
      amendsVersion: z.number().int().min(1).optional(),
      dataSha256: z.string().default(''),
      job: z.string().max(256).default(''),
      metrics: z.record(z.string(), z.number()).default({}),
      /** A version a federated task trained (its head learnt on the devices); absent for every other version. */
      federated: federatedLineageSchema.optional(),
    })
    .prefault({}),
  /**
   * The devices this release is for (a canary); absent: every device. Devices not named refuse it
   * (RELEASE_NOT_IN_AUDIENCE). A release signed only by an automation key must name one within
   * its key's scope; a release key's signature over the version without it makes it fleet-wide.
   */
  audience: z.array(deviceIdSchema).min(1).max(MAX_AUDIENCE).optional(),
  createdAtMs: z.number().int().nonnegative(),
});

export type ReleaseManifest = z.output<typeof releaseManifestSchema>;
export type ReleaseManifestInput = z.input<typeof releaseManifestSchema>;

export function buildManifest(input: ReleaseManifestInput): ReleaseManifest {
  const parsed = releaseManifestSchema.safeParse(input);
  if (!parsed.success) throw new DriftlineError('RELEASE_INVALID', `release manifest is invalid: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

export function signManifest(manifest: ReleaseManifest, signer: Signer): Envelope {
  return signEnvelope(MANIFEST_PAYLOAD_TYPE, Buffer.from(canonicalJson(buildManifest(manifest))), [signer]);
}

export const signManifestBytes = (manifest: ReleaseManifest, signer: Signer): Buffer => encodeEnvelope(signManifest(manifest, signer));

export interface VerifiedRelease {
  manifest: ReleaseManifest;
  keyIds: string[];
  /** Who vouches for it: a release key (fleet-wide unless it names an audience), or only an automation key (a scoped canary). */
  signedBy: 'release-key' | 'automation-key';
}

/**
 * A release is trusted when the root has not expired, the envelope is a manifest signed by
 * a release key the root lists and has not revoked, and the manifest is well-formed. Signed
 * by no release key but by an unrevoked automation key, it is trusted only within that key's
 * scope (the model is delegated to the key, the audience is within its size: else
 * RELEASE_OUT_OF_SCOPE). With `deviceId` (on a device), a release that names an audience is
 * trusted only on the devices it names (RELEASE_NOT_IN_AUDIENCE), whoever signed it.
 */
export function verifyRelease(bytes: Uint8Array, root: RootMetadata, clock: Clock, device?: { deviceId: string | undefined }): VerifiedRelease {
  assertNotExpired(root, clock);
  const envelope = decodeEnvelope(bytes, 'RELEASE_INVALID');
  const revokedOnly = envelope.signatures.some((s) => root.revokedKeys.includes(s.keyid));
  const automation = activeKeys(root, 'automation');
  const byAutomation = envelope.signatures.some((s) => Object.hasOwn(automation, s.keyid));
  const byRelease = envelope.signatures.some((s) => Object.hasOwn(activeKeys(root, 'release'), s.keyid));
  let verified;
  let signedBy: VerifiedRelease['signedBy'] = 'release-key';
  try {
    if (byAutomation && !byRelease) {
      verified = verifyEnvelope(envelope, MANIFEST_PAYLOAD_TYPE, automation, 1, 'release manifest');
      signedBy = 'automation-key';
    } else {
      verified = verifyEnvelope(envelope, MANIFEST_PAYLOAD_TYPE, activeKeys(root, 'release'), 1, 'release manifest');
    }
  } catch (err) {
    if (revokedOnly && err instanceof DriftlineError && err.code === 'TRUST_KEY_UNKNOWN') {
      throw new DriftlineError('TRUST_KEY_REVOKED', 'the release is signed by a revoked key');
    }
    throw err;
  }
  const manifest = parsePayload(verified.payload, releaseManifestSchema, 'RELEASE_INVALID', 'release manifest');
  if (signedBy === 'automation-key') {
    // Every automation key that signed must have the release in its scope: one key's wider scope never stretches another's.
    for (const keyId of verified.keyIds) assertWithinScope(manifest, root.automationKeys[keyId]!.scope, keyId);
  }
  if (device) assertInAudience(manifest, device.deviceId);
  return { manifest, keyIds: verified.keyIds, signedBy };
}

/** Reads a manifest without verifying it (for display and for the server's bookkeeping after verification). */
export function peekManifest(bytes: Uint8Array): ReleaseManifest {
  const envelope = decodeEnvelope(bytes, 'RELEASE_INVALID');
  return parsePayload(Buffer.from(envelope.payload, 'base64'), releaseManifestSchema, 'RELEASE_INVALID', 'release manifest');
}
