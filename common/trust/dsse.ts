import { z } from 'zod';
import { DriftlineError } from '../errors.js';
import { verifySignature, type PublicKeyText, type Signer } from './keys.js';

/** A DSSE envelope (https://github.com/secure-systems-lab/dsse), JSON-encoded on the wire. */
export interface Envelope {
  payloadType: string;
  /** base64 of the payload bytes */
  payload: string;
  signatures: Array<{ keyid: string; sig: string }>;
}

const envelopeSchema = z.object({
  payloadType: z.string().min(1).max(256),
  payload: z.string().max(64 * 1024 * 1024),
  signatures: z.array(z.object({ keyid: z.string().max(128), sig: z.string().max(1024) })).max(64),
});

/** Pre-Authentication Encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body. */
export function pae(payloadType: string, payload: Uint8Array): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${payload.length} `), payload]);
}

export function signEnvelope(payloadType: string, payload: Uint8Array, signers: readonly Signer[]): Envelope {
  const message = pae(payloadType, payload);
  return {
    payloadType,
    payload: Buffer.from(payload).toString('base64'),
    signatures: signers.map((s) => ({ keyid: s.keyId, sig: s.sign(message).toString('base64') })),
  };
}

export const encodeEnvelope = (envelope: Envelope): Buffer => Buffer.from(JSON.stringify(envelope), 'utf8');

/** Parses envelope bytes; anything malformed is `code` (the caller says what kind of document it was). */
export function decodeEnvelope(bytes: Uint8Array, code: 'RELEASE_INVALID' | 'TRUST_ROOT_INVALID' = 'RELEASE_INVALID'): Envelope {
  try {
    return envelopeSchema.parse(JSON.parse(Buffer.from(bytes).toString('utf8')));
  } catch (err) {
    throw new DriftlineError(code, 'not a DSSE envelope', { cause: err });
  }
}

export interface VerifiedEnvelope {
  payload: Buffer;
  /** Distinct trusted key ids whose signatures verified. */
  keyIds: string[];
}

/**
 * Checks the payload type, then counts distinct keys from `keys` with a valid signature;
 * fewer than `threshold` is refused. Signatures by keys not in `keys` are ignored (so an
 * unknown key alone yields TRUST_KEY_UNKNOWN), and a key counts once however often it signs.
 */
export function verifyEnvelope(
  envelope: Envelope,
  expectedType: string,
  keys: Readonly<Record<string, PublicKeyText>>,
  threshold: number,
  what: string,
): VerifiedEnvelope {
  if (envelope.payloadType !== expectedType) {
    throw new DriftlineError('TRUST_SIGNATURE_INVALID', `${what} has payload type ${JSON.stringify(envelope.payloadType)}, expected ${expectedType}`);
  }
  const payload = Buffer.from(envelope.payload, 'base64');
  const message = pae(envelope.payloadType, payload);
  const valid = new Set<string>();
  let known = 0;
  for (const { keyid, sig } of envelope.signatures) {
    const publicKey = Object.hasOwn(keys, keyid) ? keys[keyid] : undefined;
    if (publicKey === undefined) continue;
    known++;
    if (verifySignature(publicKey, message, Buffer.from(sig, 'base64'))) valid.add(keyid);
  }
  if (valid.size >= threshold) return { payload, keyIds: [...valid] };
  if (known === 0) throw new DriftlineError('TRUST_KEY_UNKNOWN', `${what} is not signed by any trusted key`);
  if (valid.size === 0) throw new DriftlineError('TRUST_SIGNATURE_INVALID', `${what} has no valid signature`);
  throw new DriftlineError('TRUST_THRESHOLD_NOT_MET', `${what} has ${valid.size} valid signature(s); ${threshold} required`, {
    details: { valid: valid.size, threshold },
  });
}

export function parsePayload<T>(payload: Buffer, schema: z.ZodType<T>, code: 'RELEASE_INVALID' | 'TRUST_ROOT_INVALID', what: string): T {
  let json: unknown;
  try {
    json = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new DriftlineError(code, `${what} is not JSON`, { cause: err });
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new DriftlineError(code, `${what} is invalid: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}
