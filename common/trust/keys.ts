import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  scryptSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { z } from 'zod';
import { DriftlineError } from '../errors.js';
import { sha256Hex } from '../hashing.js';

/** An Ed25519 public key as the raw 32 bytes in base64url (the JWK `x`). */
export type PublicKeyText = string;

/** Something that can sign: a key id and a private key. */
export interface Signer {
  keyId: string;
  sign(data: Uint8Array): Buffer;
}

export interface GeneratedKey {
  keyId: string;
  publicKey: PublicKeyText;
  /** PKCS#8 PEM. Never print it; write it 0600. */
  privateKeyPem: string;
}

const PUBLIC_KEY = /^[A-Za-z0-9_-]{43}$/;

/** The key id is the sha256 of the raw public key, so an id can never name a different key. */
export const keyIdOf = (publicKey: PublicKeyText): string => sha256Hex(Buffer.from(publicKey, 'base64url'));

export function generateKey(): GeneratedKey {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const x = publicKey.export({ format: 'jwk' }).x!;
  return { keyId: keyIdOf(x), publicKey: x, privateKeyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString() };
}

export function signerFromPem(pem: string): Signer {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new DriftlineError('CONFIG_INVALID', 'not a PEM private key', { cause: err });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new DriftlineError('CONFIG_INVALID', 'signing keys must be Ed25519');
  const x = createPublicKey(key).export({ format: 'jwk' }).x!;
  return { keyId: keyIdOf(x), sign: (data) => sign(null, data, key) };
}

export function publicKeyOfPem(pem: string): PublicKeyText {
  return createPublicKey(createPrivateKey(pem)).export({ format: 'jwk' }).x!;
}

/** Verifies an Ed25519 signature; false (never a throw) for malformed keys or signatures. */
export function verifySignature(publicKey: PublicKeyText, data: Uint8Array, signature: Uint8Array): boolean {
  if (!PUBLIC_KEY.test(publicKey)) return false;
  try {
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey }, format: 'jwk' });
    return verify(null, data, key, signature);
  } catch {
    return false;
  }
}

export const publicKeySchema = z.string().regex(PUBLIC_KEY, 'expected a base64url Ed25519 public key');

// ---- private keys encrypted at rest (online signing): scrypt + aes-256-gcm ----

const encryptedKeySchema = z.object({
  kind: z.literal('driftline-encrypted-key'),
  kdf: z.object({ name: z.literal('scrypt'), salt: z.string(), N: z.number().int(), r: z.number().int(), p: z.number().int() }),
  cipher: z.object({ name: z.literal('aes-256-gcm'), iv: z.string(), tag: z.string() }),
  ciphertext: z.string(),
});

const SCRYPT = { N: 1 << 15, r: 8, p: 1 };

export function encryptPrivateKey(pem: string, passphrase: string): string {
  const salt = randomBytes(16);
  const iv = randomBytes(12);
  const key = scryptSync(passphrase, salt, 32, { ...SCRYPT, maxmem: 64 * 1024 * 1024 });
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  const ciphertext = Buffer.concat([cipher.update(pem, 'utf8'), cipher.final()]);
  return `${JSON.stringify(
    {
      kind: 'driftline-encrypted-key',
      kdf: { name: 'scrypt', salt: salt.toString('base64'), ...SCRYPT },
      cipher: { name: 'aes-256-gcm', iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64') },
      ciphertext: ciphertext.toString('base64'),
    },
    null,
    2,
  )}\n`;
}

export const isEncryptedKey = (text: string): boolean => text.trimStart().startsWith('{');

export function decryptPrivateKey(text: string, passphrase: string): string {
  let parsed: z.infer<typeof encryptedKeySchema>;
  try {
    parsed = encryptedKeySchema.parse(JSON.parse(text));
  } catch (err) {
    throw new DriftlineError('CONFIG_INVALID', 'not an encrypted Driftline key file', { cause: err });
  }
  const { N, r, p, salt } = parsed.kdf;
  const key = scryptSync(passphrase, Buffer.from(salt, 'base64'), 32, { N, r, p, maxmem: 256 * N * r + 1024 * 1024 });
  const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(parsed.cipher.iv, 'base64'));
  decipher.setAuthTag(Buffer.from(parsed.cipher.tag, 'base64'));
  try {
    return Buffer.concat([decipher.update(Buffer.from(parsed.ciphertext, 'base64')), decipher.final()]).toString('utf8');
  } catch (err) {
    throw new DriftlineError('KEY_PASSPHRASE_INVALID', 'wrong passphrase for the encrypted key', { cause: err });
  }
}
