import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import type { ModelVersion } from '../common/proto/driftline/v1/models.js';
import { peekManifest } from '../common/trust/manifest.js';
import { verifyRollbackDirective } from '../common/trust/rollback.js';
import { peekRoot, signRootBytes } from '../common/trust/root.js';
import { ReleaseStore } from '../control-plane/registry/release-store.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteReleaseRepository } from '../control-plane/store/sqlite/release-repository.js';
import { capturingLogger } from './fixtures/logs.js';
import { demoModelBytes } from './fixtures/models.js';
import { makeRelease, newKey, testTrust, type TestRelease, type TestTrust } from './helpers/releases.js';

const clock = new ManualClock();
let trust: TestTrust;
let v1: TestRelease;
let v2: TestRelease;

const versionOf = (r: TestRelease): ModelVersion => ({
  name: r.manifest.name,
  version: r.manifest.version,
  sha256: r.sha256,
  sizeBytes: r.bytes.length,
  createdAtMs: 0,
  opset: r.manifest.opset,
  inputs: [],
  outputs: [],
  description: '',
  metadata: {},
  amendsVersion: 0,
});

beforeAll(async () => {
  trust = testTrust(clock.now());
  v1 = await makeRelease('vibration', 1, demoModelBytes(1), trust.release.signer);
  v2 = await makeRelease('vibration', 2, demoModelBytes(2), trust.release.signer);
});

let dir: string;
let db: ReturnType<typeof openDatabase>;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'driftline-releases-'));
  db = openDatabase(join(dir, 'cp.db'));
});
afterEach(() => {
  db.close();
  rmSync(dir, { recursive: true, force: true });
});

function store(options: { rootChain?: Buffer[]; rollback?: boolean } = {}): ReleaseStore {
  const versions = new Map([v1, v2].map((r) => [r.manifest.version, versionOf(r)]));
  return new ReleaseStore({
    releases: new SqliteReleaseRepository(db),
    clock,
    logger: capturingLogger().logger,
    rootChain: options.rootChain ?? [trust.v1],
    registry: {
      resolve: async (_name, version) => {
        const v = versions.get(version === 0 ? 2 : version);
        if (!v) throw new DriftlineError('MODEL_NOT_FOUND', 'no such version');
        return v;
      },
    },
    ...(options.rollback ? { rollbackSigner: trust.rollback.signer } : {}),
  });
}

const codeOf = async (fn: () => unknown): Promise<string> => {
  try {
    await fn();
  } catch (err) {
    return err instanceof DriftlineError ? err.code : String(err);
  }
  return 'no error';
};

describe('release store', () => {
  it('releases - stores a verified manifest for its stored version and sends it with the root chain', async () => {
    const releases = store();
    const release = await releases.publish('vibration', 1, v1.envelope);
    expect(release).toMatchObject({ name: 'vibration', version: 1, sha256: v1.sha256, keyIds: [trust.release.keyId] });
    const desired = await releases.desiredModel(versionOf(v1));
    expect(peekManifest(desired.model.envelope).artifact.sha256).toBe(v1.sha256);
    expect(desired.rootChain.map((r) => peekRoot(r).version)).toEqual([1]);
    expect((await releases.get('vibration', 0)).version).toBe(1);
  });

  it('releases - publishing the same envelope twice is a no-op, a different one for a signed version is a conflict', async () => {
    const releases = store();
    await releases.publish('vibration', 1, v1.envelope);
    expect((await releases.publish('vibration', 1, v1.envelope)).version).toBe(1);
    const again = await makeRelease('vibration', 1, demoModelBytes(1), trust.release.signer, { createdAtMs: 2 });
    expect(await codeOf(() => releases.publish('vibration', 1, again.envelope))).toBe('RELEASE_CONFLICT');
  });

  it('releases - refuses a manifest for another version, an unknown key, and publishing without a trust root', async () => {
    const releases = store();
    expect(await codeOf(() => releases.publish('vibration', 2, v1.envelope))).toBe('RELEASE_MISMATCH');
    const rogue = await makeRelease('vibration', 2, demoModelBytes(2), newKey().signer);
    expect(await codeOf(() => releases.publish('vibration', 2, rogue.envelope))).toBe('TRUST_KEY_UNKNOWN');
    expect(await codeOf(() => store({ rootChain: [] }).publish('vibration', 1, v1.envelope))).toBe('TRUST_NOT_CONFIGURED');
  });

  it('releases - deploys unsigned versions without an envelope', async () => {
    expect((await store().desiredModel(versionOf(v2))).model.envelope.length).toBe(0);
  });

  it('releases - refuses to start with a root chain that does not hold together', async () => {
    const skipped = signRootBytes(
      trust.metadata(3),
      trust.rootKeys.map((k) => k.signer),
    );
    expect(await codeOf(() => store({ rootChain: [trust.v1, skipped] }))).toBe('TRUST_ROOT_INVALID');
  });

  it('rollback directives - are signed online only when opted in, and verify on the device for the named devices', async () => {
    expect(
      await store().rollbackDirective({ model: 'vibration', toVersion: 1, deviceIds: ['edge-1'], reason: 'gate', ttlMs: 60_000, id: 'r1' }),
    ).toBeUndefined();
    const bytes = (await store({ rollback: true }).rollbackDirective({
      model: 'vibration',
      toVersion: 1,
      deviceIds: ['edge-1'],
      reason: 'p95 latency doubled',
      ttlMs: 60_000,
      id: 'r1',
    }))!;
    const root = peekRoot(trust.v1);
    expect(verifyRollbackDirective(bytes, root, clock, { deviceId: 'edge-1', model: 'vibration', version: 1, sha256: v1.sha256 }).reason).toBe(
      'p95 latency doubled',
    );
    expect(await codeOf(() => verifyRollbackDirective(bytes, root, clock, { deviceId: 'edge-9', model: 'vibration', version: 1, sha256: v1.sha256 }))).toBe(
      'RELEASE_MISMATCH',
    );
    clock.advance(60_000);
    expect(await codeOf(() => verifyRollbackDirective(bytes, root, clock, { deviceId: 'edge-1', model: 'vibration', version: 1, sha256: v1.sha256 }))).toBe(
      'TRUST_METADATA_EXPIRED',
    );
  });
});
