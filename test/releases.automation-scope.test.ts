import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { assertInAudience, assertWithinScope, parseAutomationScope } from '../common/trust/automation.js';
import { canonicalJson } from '../common/trust/canonical.js';
import { encodeEnvelope, signEnvelope } from '../common/trust/dsse.js';
import { initKeys, keyFolder, latestRoot, readKeyFile, rotateRoot } from '../common/trust/key-files.js';
import { buildManifest, MANIFEST_PAYLOAD_TYPE, verifyRelease, type ReleaseManifest } from '../common/trust/manifest.js';
import { peekRoot, rootMetadataSchema, signRootBytes, updateRoot, verifyInitialRoot, type RootMetadata } from '../common/trust/root.js';
import { signRollbackDirective, verifyRollbackDirective } from '../common/trust/rollback.js';
import { newKey, testTrust } from './helpers/releases.js';

const codeOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return err instanceof DriftlineError ? err.code : `not a DriftlineError: ${String(err)}`;
  }
  return 'no error';
};

const clock = new ManualClock(1_700_000_000_000);
const trust = testTrust(clock.now());
const automation = newKey();
const scope = { models: ['vibration'], maxDevices: 2 };
const root: RootMetadata = rootMetadataSchema.parse(trust.metadata(1, { automationKeys: { [automation.keyId]: { publicKey: automation.publicKey, scope } } }));

const manifest = (changes: Partial<ReleaseManifest> = {}): ReleaseManifest =>
  buildManifest({
    type: 'driftline-release',
    name: 'vibration',
    version: 2,
    artifact: { sha256: 'a'.repeat(64), sizeBytes: 10 },
    opset: 17,
    inputs: [],
    outputs: [],
    golden: { tolerance: { abs: 0, rel: 0 }, vectors: [] },
    createdAtMs: 1,
    ...changes,
  });
const sign = (m: unknown, ...signers: Array<{ signer: { keyId: string; sign(d: Uint8Array): Buffer } }>): Buffer =>
  encodeEnvelope(
    signEnvelope(
      MANIFEST_PAYLOAD_TYPE,
      Buffer.from(canonicalJson(m)),
      signers.map((s) => s.signer),
    ),
  );

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('automation keys - the scope devices enforce', () => {
  it('root - a root from before automation keys parses with none, and an automation key cannot also hold another role', () => {
    const { automationKeys: _none, ...old } = trust.metadata(1);
    expect(rootMetadataSchema.parse(old).automationKeys).toEqual({});
    expect(peekRoot(trust.v1).automationKeys).toEqual({});
    const dual = { ...trust.metadata(1), automationKeys: { [trust.release.keyId]: { publicKey: trust.release.publicKey, scope } } };
    expect(rootMetadataSchema.safeParse(dual).success).toBe(false);
    const misnamed = { ...trust.metadata(1), automationKeys: { [trust.release.keyId]: { publicKey: automation.publicKey, scope } } };
    expect(rootMetadataSchema.safeParse(misnamed).success).toBe(false);
    expect(codeOf(() => parseAutomationScope({ models: [], maxDevices: 2 }))).toBe('REQUEST_INVALID');
    expect(codeOf(() => parseAutomationScope({ models: ['vibration'], maxDevices: 0 }))).toBe('REQUEST_INVALID');
    expect(codeOf(() => parseAutomationScope({ models: ['Not A Name'], maxDevices: 1 }))).toBe('REQUEST_INVALID');
  });

  it('scope - pure checks: the model must be delegated, an audience named, and no larger than maxDevices', () => {
    expect(codeOf(() => assertWithinScope({ name: 'vibration', version: 2, audience: ['edge-1'] }, scope, automation.keyId))).toBe('no error');
    expect(codeOf(() => assertWithinScope({ name: 'detector', version: 2, audience: ['edge-1'] }, scope, automation.keyId))).toBe('RELEASE_OUT_OF_SCOPE');
    expect(codeOf(() => assertWithinScope({ name: 'vibration', version: 2 }, scope, automation.keyId))).toBe('RELEASE_OUT_OF_SCOPE');
    expect(codeOf(() => assertWithinScope({ name: 'vibration', version: 2, audience: ['a', 'b', 'c'] }, scope, automation.keyId))).toBe('RELEASE_OUT_OF_SCOPE');
    // Duplicates do not count twice (and cannot smuggle a device past the count either: the set is what devices check).
    expect(codeOf(() => assertWithinScope({ name: 'vibration', version: 2, audience: ['a', 'a', 'b'] }, scope, automation.keyId))).toBe('no error');
    expect(codeOf(() => assertInAudience({ name: 'vibration', version: 2, audience: ['edge-1'] }, 'edge-1'))).toBe('no error');
    expect(codeOf(() => assertInAudience({ name: 'vibration', version: 2, audience: ['edge-1'] }, 'edge-2'))).toBe('RELEASE_NOT_IN_AUDIENCE');
    expect(codeOf(() => assertInAudience({ name: 'vibration', version: 2, audience: ['edge-1'] }, undefined))).toBe('RELEASE_NOT_IN_AUDIENCE');
    expect(codeOf(() => assertInAudience({ name: 'vibration', version: 2 }, 'edge-2'))).toBe('no error');
  });

  it('scope - a canary ring fixed in the root bounds which devices any canary may name, and so the total reach of a stolen key', () => {
    const ring = parseAutomationScope({ models: ['vibration'], maxDevices: 2, devices: ['ring-1', 'ring-2', 'ring-3', 'ring-1'] });
    expect(ring.devices).toEqual(['ring-1', 'ring-2', 'ring-3']);
    expect(codeOf(() => assertWithinScope({ name: 'vibration', version: 2, audience: ['ring-1', 'ring-3'] }, ring, automation.keyId))).toBe('no error');
    expect(codeOf(() => assertWithinScope({ name: 'vibration', version: 2, audience: ['ring-1', 'edge-9'] }, ring, automation.keyId))).toBe(
      'RELEASE_OUT_OF_SCOPE',
    );
    expect(codeOf(() => parseAutomationScope({ models: ['vibration'], maxDevices: 2, devices: ['+'] }))).toBe('REQUEST_INVALID');
    const ringRoot = rootMetadataSchema.parse(trust.metadata(1, { automationKeys: { [automation.keyId]: { publicKey: automation.publicKey, scope: ring } } }));
    // However many canaries it signs, a stolen key never reaches a device outside the ring.
    const outside = sign(manifest({ audience: ['edge-9'] }), automation);
    expect(codeOf(() => verifyRelease(outside, ringRoot, clock, { deviceId: 'edge-9' }))).toBe('RELEASE_OUT_OF_SCOPE');
    expect(verifyRelease(sign(manifest({ audience: ['ring-2'] }), automation), ringRoot, clock, { deviceId: 'ring-2' }).signedBy).toBe('automation-key');
    // A root from before rings (no devices) still parses: the per-canary bound only.
    expect(root.automationKeys[automation.keyId]!.scope.devices).toBeUndefined();
  });

  it('verify - an automation-signed canary is valid on the devices it names and nowhere else', () => {
    const canary = sign(manifest({ audience: ['edge-1', 'edge-2'] }), automation);
    expect(verifyRelease(canary, root, clock, { deviceId: 'edge-1' })).toMatchObject({ signedBy: 'automation-key', keyIds: [automation.keyId] });
    expect(verifyRelease(canary, root, clock, { deviceId: 'edge-2' }).signedBy).toBe('automation-key');
    expect(codeOf(() => verifyRelease(canary, root, clock, { deviceId: 'edge-3' }))).toBe('RELEASE_NOT_IN_AUDIENCE');
    expect(codeOf(() => verifyRelease(canary, root, clock, { deviceId: undefined }))).toBe('RELEASE_NOT_IN_AUDIENCE');
    // The control plane (no device) learns who signed it without the audience check.
    expect(verifyRelease(canary, root, clock).signedBy).toBe('automation-key');
  });

  it('verify - refuses an automation signature outside the scope: another model, no audience, too many devices', () => {
    expect(codeOf(() => verifyRelease(sign(manifest({ name: 'detector', audience: ['edge-1'] }), automation), root, clock, { deviceId: 'edge-1' }))).toBe(
      'RELEASE_OUT_OF_SCOPE',
    );
    expect(codeOf(() => verifyRelease(sign(manifest(), automation), root, clock, { deviceId: 'edge-1' }))).toBe('RELEASE_OUT_OF_SCOPE');
    expect(codeOf(() => verifyRelease(sign(manifest({ audience: ['edge-1', 'edge-2', 'edge-3'] }), automation), root, clock, { deviceId: 'edge-1' }))).toBe(
      'RELEASE_OUT_OF_SCOPE',
    );
    // An automation key the root does not list is just an unknown key.
    expect(codeOf(() => verifyRelease(sign(manifest({ audience: ['edge-1'] }), newKey()), root, clock, { deviceId: 'edge-1' }))).toBe('TRUST_KEY_UNKNOWN');
  });

  it('verify - a release key makes the version fleet-wide; its audience, when it names one, still binds', () => {
    const fleetWide = sign(manifest(), trust.release);
    expect(verifyRelease(fleetWide, root, clock, { deviceId: 'edge-9' }).signedBy).toBe('release-key');
    const both = sign(manifest({ name: 'detector' }), trust.release, automation);
    expect(verifyRelease(both, root, clock, { deviceId: 'edge-9' })).toMatchObject({ signedBy: 'release-key', keyIds: [trust.release.keyId] });
    expect(codeOf(() => verifyRelease(sign(manifest({ audience: ['edge-1'] }), trust.release), root, clock, { deviceId: 'edge-9' }))).toBe(
      'RELEASE_NOT_IN_AUDIENCE',
    );
  });

  it('verify - a revoked automation key is refused, and an automation key never signs a rollback directive or a root', () => {
    const revoked = rootMetadataSchema.parse(trust.metadata(2, { revokedKeys: [automation.keyId] }));
    expect(codeOf(() => verifyRelease(sign(manifest({ audience: ['edge-1'] }), automation), revoked, clock, { deviceId: 'edge-1' }))).toBe('TRUST_KEY_REVOKED');
    const target = { deviceId: 'edge-1', model: 'vibration', version: 1, sha256: 'b'.repeat(64) };
    const directive = signRollbackDirective(
      {
        type: 'driftline-rollback',
        id: 'r1',
        model: 'vibration',
        toVersion: 1,
        toSha256: target.sha256,
        issuedAtMs: clock.now(),
        expiresAtMs: clock.now() + 60_000,
      },
      automation.signer,
    );
    expect(codeOf(() => verifyRollbackDirective(directive, root, clock, target))).toBe('TRUST_KEY_UNKNOWN');
    const v1 = verifyInitialRoot(
      signRootBytes(
        root,
        trust.rootKeys.slice(0, 2).map((k) => k.signer),
      ),
      clock,
    );
    const forged = signRootBytes({ ...root, version: 2, threshold: 1, rootKeys: { [automation.keyId]: automation.publicKey }, automationKeys: {} }, [
      automation.signer,
    ]);
    expect(codeOf(() => updateRoot(v1, [forged], clock))).toBe('TRUST_KEY_UNKNOWN');
  });

  it('key files - rotation adds an automation key with its scope, encrypted at rest, and removes or revokes it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'driftline-automation-keys-'));
    dirs.push(dir);
    initKeys({ dir, rootKeys: 2, threshold: 2, clock });
    expect(codeOf(() => rotateRoot(dir, { addAutomationKey: { scope, passphrase: '' } }, clock))).toBe('REQUEST_INVALID');
    const added = rotateRoot(dir, { addAutomationKey: { scope, passphrase: 'hunter2' } }, clock);
    const [keyId] = added.newKeyIds;
    expect(added.metadata.automationKeys[keyId!]?.scope).toEqual(scope);
    const file = join(dir, 'automation-keys', `${keyId}.key`);
    expect(readdirSync(join(dir, 'automation-keys'))).toEqual([`${keyId}.key`]);
    expect(readFileSync(file, 'utf8')).not.toContain('PRIVATE KEY');
    expect(codeOf(() => readKeyFile(file))).toBe('KEY_PASSPHRASE_INVALID');
    expect(codeOf(() => readKeyFile(file, 'wrong'))).toBe('KEY_PASSPHRASE_INVALID');
    expect(readKeyFile(file, 'hunter2').keyId).toBe(keyId);
    // Every version still walks from v1 (threshold of old and new keys).
    const chain = readdirSync(join(dir, 'root')).map((f) => readFileSync(join(dir, 'root', f)));
    expect(
      updateRoot(
        verifyInitialRoot(
          chain.find((b) => peekRoot(b).version === 1)!,
          clock,
        ),
        chain,
        clock,
      ).metadata.automationKeys,
    ).toHaveProperty(keyId!);

    const second = rotateRoot(dir, { addAutomationKey: { scope: { models: ['detector'], maxDevices: 5 }, passphrase: 'x' } }, clock).newKeyIds[0]!;
    const removed = rotateRoot(dir, { removeAutomationKeyIds: [second] }, clock).metadata;
    expect(Object.keys(removed.automationKeys)).toEqual([keyId]);
    expect(removed.revokedKeys).toEqual([]);
    expect(codeOf(() => rotateRoot(dir, { removeAutomationKeyIds: [second] }, clock))).toBe('TRUST_KEY_UNKNOWN');
    const revoked = rotateRoot(dir, { revokeKeyIds: [keyId!] }, clock).metadata;
    expect(revoked.automationKeys).toEqual({});
    expect(revoked.revokedKeys).toEqual([keyId]);
    expect(latestRoot(keyFolder(dir)).version).toBe(revoked.version);
  });
});
