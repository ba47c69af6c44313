import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Clock } from '../clock.js';
import { DriftlineError } from '../errors.js';
import { decryptPrivateKey, encryptPrivateKey, generateKey, isEncryptedKey, signerFromPem, type Signer } from './keys.js';
import type { AutomationScope } from './automation.js';
import { peekRoot, signRootBytes, type RootMetadata } from './root.js';

/**
 * The operator's offline key folder:
 *   root-keys/<keyid>.key      root private keys (0600)
 *   release-keys/<keyid>.key   release private keys (0600)
 *   rollback-keys/<keyid>.key  online rollback key, encrypted when a passphrase was given
 *   automation-keys/<keyid>.key online automation release keys (scoped canaries), always encrypted
 *   root/root.v<N>.json        every signed root version (public; give this folder to the control plane)
 */
export interface KeyFolder {
  dir: string;
  rootDir: string;
}

const DAY_MS = 86_400_000;
export const DEFAULT_ROOT_LIFETIME_MS = 365 * DAY_MS;

export const keyFolder = (dir: string): KeyFolder => ({ dir, rootDir: join(dir, 'root') });

function writeSecret(file: string, text: string): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

function writeKey(dir: string, role: string, pem: string, passphrase?: string): string {
  const folder = join(dir, `${role}-keys`);
  mkdirSync(folder, { recursive: true, mode: 0o700 });
  const signer = signerFromPem(pem);
  writeSecret(join(folder, `${signer.keyId}.key`), passphrase ? encryptPrivateKey(pem, passphrase) : pem);
  return signer.keyId;
}

export function writeRootVersion(folder: KeyFolder, bytes: Buffer): string {
  mkdirSync(folder.rootDir, { recursive: true });
  const file = join(folder.rootDir, `root.v${peekRoot(bytes).version}.json`);
  writeFileSync(file, bytes, { mode: 0o644 });
  return file;
}

export interface InitKeysOptions {
  dir: string;
  rootKeys: number;
  threshold: number;
  clock: Clock;
  lifetimeMs?: number;
  /** Encrypts the online rollback key at rest (scrypt + aes-256-gcm). */
  rollbackPassphrase?: string;
}

export interface InitKeysResult {
  rootFile: string;
  rootKeyIds: string[];
  releaseKeyId: string;
  rollbackKeyId: string;
  threshold: number;
  expiresAtMs: number;
}

/** Creates root keys, a release key, an online rollback key and root metadata v1 signed by every root key. */
export function initKeys(options: InitKeysOptions): InitKeysResult {
  const folder = keyFolder(options.dir);
  if (existsSync(folder.rootDir) && readRootChain(folder.rootDir).length > 0) {
    throw new DriftlineError('KEYS_EXIST', `${options.dir} already holds root metadata; rotate instead of initializing again`);
  }
  if (!Number.isInteger(options.rootKeys) || options.rootKeys < 1 || options.rootKeys > 16)
    throw new DriftlineError('REQUEST_INVALID', '--root-keys must be 1..16');
  if (!Number.isInteger(options.threshold) || options.threshold < 1 || options.threshold > options.rootKeys) {
    throw new DriftlineError('REQUEST_INVALID', '--threshold must be between 1 and the number of root keys');
  }
  mkdirSync(options.dir, { recursive: true, mode: 0o700 });
  const roots = Array.from({ length: options.rootKeys }, generateKey);
  const release = generateKey();
  const rollback = generateKey();
  for (const k of roots) writeKey(options.dir, 'root', k.privateKeyPem);
  writeKey(options.dir, 'release', release.privateKeyPem);
  writeKey(options.dir, 'rollback', rollback.privateKeyPem, options.rollbackPassphrase);
  const metadata: RootMetadata = {
    type: 'driftline-root',
    version: 1,
    expiresAtMs: options.clock.now() + (options.lifetimeMs ?? DEFAULT_ROOT_LIFETIME_MS),
    threshold: options.threshold,
    rootKeys: Object.fromEntries(roots.map((k) => [k.keyId, k.publicKey])),
    releaseKeys: { [release.keyId]: release.publicKey },
    rollbackKeys: { [rollback.keyId]: rollback.publicKey },
    automationKeys: {},
    revokedKeys: [],
  };
  const rootFile = writeRootVersion(
    folder,
    signRootBytes(
      metadata,
      roots.map((k) => signerFromPem(k.privateKeyPem)),
    ),
  );
  return {
    rootFile,
    rootKeyIds: roots.map((k) => k.keyId),
    releaseKeyId: release.keyId,
    rollbackKeyId: rollback.keyId,
    threshold: options.threshold,
    expiresAtMs: metadata.expiresAtMs,
  };
}

/** Every root version in a folder (or the one file given), oldest first, as raw envelope bytes. */
export function readRootChain(path: string): Buffer[] {
  if (!existsSync(path)) throw new DriftlineError('TRUST_NOT_CONFIGURED', `no root metadata at ${path}`);
  if (statSync(path).isFile()) return [readFileSync(path)];
  return readdirSync(path)
    .filter((f) => /^root\.v\d+\.json$/.test(f))
    .map((f) => readFileSync(join(path, f)))
    .map((bytes) => ({ bytes, version: peekRoot(bytes).version }))
    .sort((a, b) => a.version - b.version)
    .map((r) => r.bytes);
}

export function latestRoot(folder: KeyFolder): RootMetadata {
  const chain = readRootChain(folder.rootDir);
  if (chain.length === 0) throw new DriftlineError('TRUST_NOT_CONFIGURED', `no root metadata in ${folder.rootDir}; run driftline keys init`);
  return peekRoot(chain[chain.length - 1]!);
}

function readSigners(dir: string, role: string, passphrase?: string): Signer[] {
  const folder = join(dir, `${role}-keys`);
  if (!existsSync(folder)) return [];
  return readdirSync(folder)
    .filter((f) => f.endsWith('.key'))
    .map((f) => readKeyFile(join(folder, f), passphrase));
}

/** Reads a private key file, decrypting it when it is encrypted. */
export function readKeyFile(file: string, passphrase?: string): Signer {
  const text = readFileSync(file, 'utf8');
  if (isEncryptedKey(text)) {
    if (passphrase === undefined) throw new DriftlineError('KEY_PASSPHRASE_INVALID', `${file} is encrypted; a passphrase is required`);
    return signerFromPem(decryptPrivateKey(text, passphrase));
  }
  return signerFromPem(text);
}

/** The release key the latest root lists (and has not revoked) whose private key is in the folder. */
export function releaseSigner(folder: KeyFolder): Signer {
  const root = latestRoot(folder);
  const signer = readSigners(folder.dir, 'release').find((s) => Object.hasOwn(root.releaseKeys, s.keyId) && !root.revokedKeys.includes(s.keyId));
  if (!signer) throw new DriftlineError('TRUST_KEY_UNKNOWN', `no private key in ${folder.dir} for a release key of root v${root.version}`);
  return signer;
}

export interface RootChange {
  /** Generate this many new root keys. */
  addRootKeys?: number;
  removeRootKeyIds?: string[];
  threshold?: number;
  /** Generate a new release key (rotation). */
  addReleaseKey?: boolean;
  /** Revoke these release, rollback or automation keys. */
  revokeKeyIds?: string[];
  /**
   * Generate an online automation release key delegated with this scope, written encrypted at
   * rest with `passphrase` (scrypt + aes-256-gcm) under automation-keys/: the control plane holds it.
   */
  addAutomationKey?: { scope: AutomationScope; passphrase: string };
  /** Drop these automation keys from the root without revoking them (the next root no longer lists them). */
  removeAutomationKeyIds?: string[];
  lifetimeMs?: number;
}

/**
 * Writes root v(n+1): the change applied to v(n), signed by every root private key in the
 * folder that belongs to v(n) or v(n+1) — a threshold of both must be present or the new
 * version would not verify on devices, so that is checked before anything is written.
 */
export function rotateRoot(dir: string, change: RootChange, clock: Clock): { rootFile: string; metadata: RootMetadata; newKeyIds: string[] } {
  const folder = keyFolder(dir);
  const current = latestRoot(folder);
  const newKeyIds: string[] = [];
  const rootKeys = { ...current.rootKeys };
  for (const id of change.removeRootKeyIds ?? []) delete rootKeys[id];
  const created: string[] = [];
  for (let i = 0; i < (change.addRootKeys ?? 0); i++) {
    const k = generateKey();
    created.push(k.privateKeyPem);
    rootKeys[k.keyId] = k.publicKey;
    newKeyIds.push(k.keyId);
  }
  const releaseKeys = { ...current.releaseKeys };
  const rollbackKeys = { ...current.rollbackKeys };
  let releasePem: string | undefined;
  if (change.addReleaseKey) {
    const k = generateKey();
    releasePem = k.privateKeyPem;
    releaseKeys[k.keyId] = k.publicKey;
    newKeyIds.push(k.keyId);
  }
  const automationKeys = { ...current.automationKeys };
  for (const id of change.removeAutomationKeyIds ?? []) {
    if (!Object.hasOwn(automationKeys, id)) throw new DriftlineError('TRUST_KEY_UNKNOWN', `root v${current.version} has no automation key ${id}`);
    delete automationKeys[id];
  }
  let automationPem: string | undefined;
  if (change.addAutomationKey) {
    if (!change.addAutomationKey.passphrase) throw new DriftlineError('REQUEST_INVALID', 'an automation key is written encrypted: a passphrase is required');
    const k = generateKey();
    automationPem = k.privateKeyPem;
    automationKeys[k.keyId] = { publicKey: k.publicKey, scope: change.addAutomationKey.scope };
    newKeyIds.push(k.keyId);
  }
  const revoked = [...new Set([...current.revokedKeys, ...(change.revokeKeyIds ?? [])])];
  for (const id of revoked) {
    delete releaseKeys[id];
    delete rollbackKeys[id];
    delete automationKeys[id];
  }
  const next: RootMetadata = {
    type: 'driftline-root',
    version: current.version + 1,
    expiresAtMs: clock.now() + (change.lifetimeMs ?? DEFAULT_ROOT_LIFETIME_MS),
    threshold: change.threshold ?? current.threshold,
    rootKeys,
    releaseKeys,
    rollbackKeys,
    automationKeys,
    revokedKeys: revoked,
  };
  const available = [...readSigners(dir, 'root'), ...created.map(signerFromPem)];
  const oldSigners = available.filter((s) => Object.hasOwn(current.rootKeys, s.keyId));
  const newSigners = available.filter((s) => Object.hasOwn(rootKeys, s.keyId));
  if (oldSigners.length < current.threshold || newSigners.length < next.threshold) {
    throw new DriftlineError(
      'TRUST_THRESHOLD_NOT_MET',
      `rotation needs ${current.threshold} old and ${next.threshold} new root keys; ${oldSigners.length} and ${newSigners.length} are in ${dir}`,
    );
  }
  const signers = [...new Map([...oldSigners, ...newSigners].map((s) => [s.keyId, s])).values()];
  const bytes = signRootBytes(next, signers);
  for (const pem of created) writeKey(dir, 'root', pem);
  if (releasePem) writeKey(dir, 'release', releasePem);
  if (automationPem) writeKey(dir, 'automation', automationPem, change.addAutomationKey!.passphrase);
  return { rootFile: writeRootVersion(folder, bytes), metadata: next, newKeyIds };
}
