import { z } from 'zod';
import type { Clock } from '../clock.js';
import { DriftlineError } from '../errors.js';
import { canonicalJson } from './canonical.js';
import { decodeEnvelope, encodeEnvelope, parsePayload, signEnvelope, verifyEnvelope } from './dsse.js';
import type { Signer } from './keys.js';
import { activeKeys, assertNotExpired, type RootMetadata } from './root.js';

export const ROLLBACK_PAYLOAD_TYPE = 'application/vnd.driftline.rollback+json';

/**
 * Permission to install a version below the highest a device ever activated. It names the
 * exact release (model, version, sha256) it allows, the devices it is for (empty: any), and
 * expires. Signed by a release key or an online rollback key listed in the root: an online
 * key can therefore only send devices back to a release a release key already signed.
 */
export const rollbackDirectiveSchema = z.object({
  type: z.literal('driftline-rollback'),
  id: z.string().min(1).max(128),
  model: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/),
  toVersion: z.number().int().min(1),
  toSha256: z.string().regex(/^[0-9a-f]{64}$/),
  deviceIds: z.array(z.string().max(64)).max(100_000).default([]),
  reason: z.string().max(1024).default(''),
  issuedAtMs: z.number().int().nonnegative(),
  expiresAtMs: z.number().int().positive(),
});

export type RollbackDirective = z.output<typeof rollbackDirectiveSchema>;
export type RollbackDirectiveInput = z.input<typeof rollbackDirectiveSchema>;

export function signRollbackDirective(directive: RollbackDirectiveInput, signer: Signer): Buffer {
  const parsed = rollbackDirectiveSchema.safeParse(directive);
  if (!parsed.success) throw new DriftlineError('REQUEST_INVALID', `rollback directive is invalid: ${z.prettifyError(parsed.error)}`);
  return encodeEnvelope(signEnvelope(ROLLBACK_PAYLOAD_TYPE, Buffer.from(canonicalJson(parsed.data)), [signer]));
}

/** Verifies a directive and that it allows exactly this release on this device now. */
export function verifyRollbackDirective(
  bytes: Uint8Array,
  root: RootMetadata,
  clock: Clock,
  target: { deviceId: string; model: string; version: number; sha256: string },
): RollbackDirective {
  assertNotExpired(root, clock);
  const envelope = decodeEnvelope(bytes, 'RELEASE_INVALID');
  const { payload } = verifyEnvelope(envelope, ROLLBACK_PAYLOAD_TYPE, activeKeys(root, 'rollback'), 1, 'rollback directive');
  const directive = parsePayload(payload, rollbackDirectiveSchema, 'RELEASE_INVALID', 'rollback directive');
  if (clock.now() >= directive.expiresAtMs) throw new DriftlineError('TRUST_METADATA_EXPIRED', `rollback directive ${directive.id} has expired`);
  const matches =
    directive.model === target.model &&
    directive.toVersion === target.version &&
    directive.toSha256 === target.sha256 &&
    (directive.deviceIds.length === 0 || directive.deviceIds.includes(target.deviceId));
  if (!matches)
    throw new DriftlineError('RELEASE_MISMATCH', `rollback directive ${directive.id} does not allow ${target.model} v${target.version} on ${target.deviceId}`);
  return directive;
}

/** Reads a directive without verifying it (for the control plane's bookkeeping of directives it signed itself). */
export function peekRollbackDirective(bytes: Uint8Array): RollbackDirective {
  const envelope = decodeEnvelope(bytes, 'RELEASE_INVALID');
  return parsePayload(Buffer.from(envelope.payload, 'base64'), rollbackDirectiveSchema, 'RELEASE_INVALID', 'rollback directive');
}
