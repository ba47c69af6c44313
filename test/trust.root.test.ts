import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { canonicalJson } from '../common/trust/canonical.js';
import { decodeEnvelope, encodeEnvelope, pae, signEnvelope, verifyEnvelope } from '../common/trust/dsse.js';
import { initKeys, keyFolder, readKeyFile, readRootChain, releaseSigner, rotateRoot } from '../common/trust/key-files.js';
import { decryptPrivateKey, encryptPrivateKey, generateKey, signerFromPem } from '../common/trust/keys.js';
import { peekRoot, signRootBytes, updateRoot, verifyInitialRoot, verifyNextRoot, type RootMetadata } from '../common/trust/root.js';

const codeOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return err instanceof DriftlineError ? err.code : `not a DriftlineError: ${String(err)}`;
  }
  return 'no error';
};

const dirs: string[] = [];
const tempDir = (): string => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-keys-'));
  dirs.push(dir);
  return dir;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function rootOf(keys: ReturnType<typeof generateKey>[], threshold: number, version: number, clock: ManualClock, release = generateKey()): RootMetadata {
  return {
    type: 'driftline-root',
    version,
    expiresAtMs: clock.now() + 86_400_000,
    threshold,
    rootKeys: Object.fromEntries(keys.map((k) => [k.keyId, k.publicKey])),
    releaseKeys: { [release.keyId]: release.publicKey },
    rollbackKeys: {},
    automationKeys: {},
    revokedKeys: [],
  };
}
const signers = (keys: ReturnType<typeof generateKey>[]) => keys.map((k) => signerFromPem(k.privateKeyPem));

describe('trust primitives', () => {
  it('canonical JSON - sorts keys at every depth and drops undefined values', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { z: true, y: null }], c: undefined } })).toBe('{"a":{"d":[1,{"y":null,"z":true}]},"b":1}');
  });

  it('DSSE - encodes PAE as the spec gives it and verifies its own signature', () => {
    expect(pae('http://example.com/HelloWorld', Buffer.from('hello world')).toString()).toBe('DSSEv1 29 http://example.com/HelloWorld 11 hello world');
    const key = generateKey();
    const env = signEnvelope('t/x', Buffer.from('payload'), [signerFromPem(key.privateKeyPem)]);
    const verified = verifyEnvelope(decodeEnvelope(encodeEnvelope(env)), 't/x', { [key.keyId]: key.publicKey }, 1, 'test');
    expect(verified.payload.toString()).toBe('payload');
    expect(codeOf(() => verifyEnvelope(env, 't/other', { [key.keyId]: key.publicKey }, 1, 'test'))).toBe('TRUST_SIGNATURE_INVALID');
  });

  it('DSSE - counts a key once however many times it signs', () => {
    const key = generateKey();
    const signer = signerFromPem(key.privateKeyPem);
    const env = signEnvelope('t/x', Buffer.from('p'), [signer, signer]);
    expect(codeOf(() => verifyEnvelope(env, 't/x', { [key.keyId]: key.publicKey }, 2, 'test'))).toBe('TRUST_THRESHOLD_NOT_MET');
  });

  it('encrypted keys - decrypt with the right passphrase and refuse a wrong one', () => {
    const key = generateKey();
    const sealed = encryptPrivateKey(key.privateKeyPem, 'correct horse');
    expect(sealed).not.toContain('PRIVATE KEY');
    expect(decryptPrivateKey(sealed, 'correct horse')).toBe(key.privateKeyPem);
    expect(codeOf(() => decryptPrivateKey(sealed, 'wrong'))).toBe('KEY_PASSPHRASE_INVALID');
  });
});

describe('root metadata', () => {
  it('root - pins a v1 signed by a threshold of its keys and refuses one below the threshold', () => {
    const clock = new ManualClock();
    const keys = [generateKey(), generateKey(), generateKey()];
    const meta = rootOf(keys, 2, 1, clock);
    expect(verifyInitialRoot(signRootBytes(meta, signers(keys.slice(0, 2))), clock).metadata.version).toBe(1);
    expect(codeOf(() => verifyInitialRoot(signRootBytes(meta, signers(keys.slice(0, 1))), clock))).toBe('TRUST_THRESHOLD_NOT_MET');
  });

  it('root - refuses a root whose listed key id is not the hash of its key', () => {
    const clock = new ManualClock();
    const keys = [generateKey()];
    const meta = rootOf(keys, 1, 1, clock);
    const other = generateKey();
    meta.rootKeys = { [keys[0]!.keyId]: other.publicKey };
    expect(codeOf(() => signRootBytes(meta, signers(keys)))).not.toBe('no error');
  });

  it('root - refuses expired metadata by the clock', () => {
    const clock = new ManualClock();
    const keys = [generateKey()];
    const bytes = signRootBytes(rootOf(keys, 1, 1, clock), signers(keys));
    clock.advance(86_400_000);
    expect(codeOf(() => verifyInitialRoot(bytes, clock))).toBe('TRUST_METADATA_EXPIRED');
  });

  it('rotation - walks v1 to v3 when each version is signed by a threshold of the old and of the new keys', () => {
    const clock = new ManualClock();
    const k1 = [generateKey(), generateKey(), generateKey()];
    const v1 = verifyInitialRoot(signRootBytes(rootOf(k1, 2, 1, clock), signers(k1)), clock);
    const k2 = [k1[0]!, generateKey(), generateKey()];
    const v2 = signRootBytes(rootOf(k2, 2, 2, clock), signers([k1[0]!, k1[1]!, k2[1]!, k2[2]!]));
    const k3 = [generateKey(), generateKey()];
    const v3 = signRootBytes(rootOf(k3, 2, 3, clock), signers([...k2.slice(1), ...k3]));
    const walked = updateRoot(v1, [v3, v2, v1.envelope], clock);
    expect(walked.metadata.version).toBe(3);
  });

  it('rotation - refuses a new root signed by the new keys but missing the old ones', () => {
    const clock = new ManualClock();
    const k1 = [generateKey(), generateKey(), generateKey()];
    const v1 = rootOf(k1, 2, 1, clock);
    const k2 = [generateKey(), generateKey(), generateKey()];
    const v2 = signRootBytes(rootOf(k2, 2, 2, clock), signers(k2));
    expect(codeOf(() => verifyNextRoot(v1, v2))).toBe('TRUST_KEY_UNKNOWN');
    const oneOld = signRootBytes(rootOf(k2, 2, 2, clock), signers([k1[0]!, ...k2]));
    expect(codeOf(() => verifyNextRoot(v1, oneOld))).toBe('TRUST_THRESHOLD_NOT_MET');
  });

  it('rotation - refuses a new root below the threshold of its own keys', () => {
    const clock = new ManualClock();
    const k1 = [generateKey(), generateKey()];
    const k2 = [generateKey(), generateKey(), generateKey()];
    const v2 = signRootBytes(rootOf(k2, 2, 2, clock), signers([...k1, k2[0]!]));
    expect(codeOf(() => verifyNextRoot(rootOf(k1, 2, 1, clock), v2))).toBe('TRUST_THRESHOLD_NOT_MET');
  });

  it('rotation - refuses a skipped version and leaves the trusted root as it was', () => {
    const clock = new ManualClock();
    const k = [generateKey()];
    const v1 = verifyInitialRoot(signRootBytes(rootOf(k, 1, 1, clock), signers(k)), clock);
    const v3 = signRootBytes(rootOf(k, 1, 3, clock), signers(k));
    expect(codeOf(() => updateRoot(v1, [v3], clock))).toBe('TRUST_ROOT_INVALID');
    expect(peekRoot(v1.envelope).version).toBe(1);
  });
});

describe('key folder', () => {
  it('keys init - writes private keys 0600 and a root v1 signed by every root key, and refuses to run twice', () => {
    const dir = tempDir();
    const clock = new ManualClock();
    const result = initKeys({ dir, rootKeys: 3, threshold: 2, clock, rollbackPassphrase: 'pw' });
    expect(result.rootKeyIds).toHaveLength(3);
    for (const sub of ['root-keys', 'release-keys', 'rollback-keys']) {
      for (const f of readdirSync(join(dir, sub))) expect(statSync(join(dir, sub, f)).mode & 0o777).toBe(0o600);
    }
    const root = verifyInitialRoot(readFileSync(result.rootFile), clock);
    expect(root.metadata.threshold).toBe(2);
    expect(Object.keys(root.metadata.releaseKeys)).toEqual([result.releaseKeyId]);
    expect(releaseSigner(keyFolder(dir)).keyId).toBe(result.releaseKeyId);
    expect(codeOf(() => readKeyFile(join(dir, 'rollback-keys', `${result.rollbackKeyId}.key`)))).toBe('KEY_PASSPHRASE_INVALID');
    expect(readKeyFile(join(dir, 'rollback-keys', `${result.rollbackKeyId}.key`), 'pw').keyId).toBe(result.rollbackKeyId);
    expect(codeOf(() => initKeys({ dir, rootKeys: 1, threshold: 1, clock }))).toBe('KEYS_EXIST');
  });

  it('keys rotate - a rotated release key replaces the revoked one and devices walk to the new root', () => {
    const dir = tempDir();
    const clock = new ManualClock();
    const first = initKeys({ dir, rootKeys: 3, threshold: 2, clock });
    const trusted = verifyInitialRoot(readFileSync(first.rootFile), clock);
    const { metadata, newKeyIds } = rotateRoot(dir, { addReleaseKey: true, revokeKeyIds: [first.releaseKeyId] }, clock);
    expect(metadata.version).toBe(2);
    expect(metadata.revokedKeys).toEqual([first.releaseKeyId]);
    expect(releaseSigner(keyFolder(dir)).keyId).toBe(newKeyIds[0]);
    expect(updateRoot(trusted, readRootChain(join(dir, 'root')), clock).metadata.version).toBe(2);
  });
});
