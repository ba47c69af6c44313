import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { runGoldenSelfTest } from '../agent/models/golden-self-test.js';
import { ModelManager } from '../agent/models/model-manager.js';
import { PinnedRoot } from '../agent/trust/pinned-root.js';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { DesiredState } from '../common/proto/driftline/v1/device_link.js';
import type { ModelVersion } from '../common/proto/driftline/v1/models.js';
import { buildManifest, signManifestBytes, type ReleaseManifest } from '../common/trust/manifest.js';
import { rootMetadataSchema, signRootBytes } from '../common/trust/root.js';
import { signRollbackDirective } from '../common/trust/rollback.js';
import { ReleaseSigner } from '../control-plane/registry/release-signing.js';
import { ReleaseStore } from '../control-plane/registry/release-store.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteReleaseRepository } from '../control-plane/store/sqlite/release-repository.js';
import { capturingLogger } from './fixtures/logs.js';
import { demoModelBytes } from './fixtures/models.js';
import { ArtifactTestServer, makeRelease, newKey, signRaw, testTrust, type TestRelease } from './helpers/releases.js';

/**
 * The control plane's release store on a real SQLite file and the release signer holding an
 * automation key scoped to {vibration, at most 2 devices}; real agents' model managers (real
 * onnxruntime, golden self-tests, a pinned root) on edge-1..edge-3, all running a release-key
 * signed vibration v1.
 */
const clock = new ManualClock(1_700_000_000_000);
const trust = testTrust(clock.now());
const automation = newKey();
const scope = { models: ['vibration'], maxDevices: 2 };
const rootV1 = signRootBytes(
  trust.metadata(1, { automationKeys: { [automation.keyId]: { publicKey: automation.publicKey, scope } } }),
  trust.rootKeys.slice(0, 2).map((k) => k.signer),
);

let server: ArtifactTestServer;
let dir: string;
let db: ReturnType<typeof openDatabase>;
let store: ReleaseStore;
let signer: ReleaseSigner;
const versions = new Map<string, ModelVersion>();
const files = new Map<string, TestRelease>();
let revision = 10;

const versionOf = (r: TestRelease): ModelVersion => ({
  name: r.manifest.name,
  version: r.manifest.version,
  sha256: r.sha256,
  sizeBytes: r.bytes.length,
  createdAtMs: 0,
  opset: r.manifest.opset,
  inputs: r.manifest.inputs,
  outputs: r.manifest.outputs,
  description: '',
  metadata: {},
  amendsVersion: 0,
});
const registry = {
  resolve: async (name: string, version: number): Promise<ModelVersion> => {
    const v = versions.get(`${name}@${version}`);
    if (!v) throw new DriftlineError('MODEL_NOT_FOUND', `${name} v${version}`);
    return v;
  },
};

interface Device {
  id: string;
  manager: ModelManager;
  engine: InferenceEngine;
  events: Array<{ kind: string; code?: string }>;
  rootFile(): Buffer;
  close(): Promise<void>;
}
const devices: Device[] = [];

async function device(id: string): Promise<Device> {
  const home = mkdtempSync(join(tmpdir(), `driftline-automation-${id}-`));
  const { logger } = capturingLogger();
  const runtime = createOnnxRuntime({ logger });
  const buffer = SqliteBuffer.open({ file: join(home, 'buffer.db'), synchronous: 'NORMAL' });
  const engine = InferenceEngine.create({ runtime, providers: ['cpu'], logger, clock, intraOpThreads: 1 });
  const pinned = PinnedRoot.open(home);
  pinned.pin(rootV1, clock);
  const events: Device['events'] = [];
  const manager = new ModelManager({
    modelsDir: join(home, 'models'),
    host: engine,
    state: buffer.state,
    artifactBaseUrl: server.url,
    credential: { username: id, password: 'secret' },
    downloadTimeoutMs: 30_000,
    maxModelBytes: 64 * 1024 * 1024,
    activationRetries: 1,
    logger,
    clock,
    trust: pinned,
    device: { deviceId: id, arch: 'x86_64', providers: ['cpu'], memoryBytes: 8 * 1024 ** 3 },
    selfTest: (path, golden) => runGoldenSelfTest(runtime, ['cpu'], path, golden),
    onChange: (e) => events.push({ kind: e.kind, code: e.error?.code }),
  });
  const d: Device = {
    id,
    manager,
    engine,
    events,
    rootFile: () => readFileSync(join(home, 'trust', 'root.json')),
    async close() {
      await engine.shutdown({ graceMs: 0 });
      await buffer.close();
      rmSync(home, { recursive: true, force: true });
    },
  };
  devices.push(d);
  return d;
}

/** What the control plane sends for a version (DeployModel, a rollout): its stored envelope and the root chain. */
async function desired(name: string, version: number, extra: { rootChain?: Buffer[]; rollback?: Buffer; envelope?: Buffer } = {}): Promise<DesiredState> {
  const { model, rootChain } = await store.desiredModel(await registry.resolve(name, version));
  return DesiredState.fromPartial({
    revision: ++revision,
    model: { ...model, ...(extra.envelope ? { envelope: extra.envelope } : {}), rollback: extra.rollback ?? Buffer.alloc(0) },
    rootChain: extra.rootChain ?? rootChain,
    rollback: extra.rollback ?? Buffer.alloc(0),
  });
}

const codeOf = async (promise: Promise<unknown>): Promise<string> =>
  promise.then(
    () => 'no error',
    (err: unknown) => (err instanceof DriftlineError ? err.code : String(err)),
  );

async function expectRefused(d: Device, state: DesiredState, code: string, stillOn: number): Promise<void> {
  await d.manager.apply(state);
  expect(d.manager.error?.code).toBe(code);
  expect(d.events.at(-1)).toEqual({ kind: 'model.failed', code });
  expect(d.engine.active()?.version).toBe(stillOn);
}

let edge1: Device;
let edge2: Device;
let edge3: Device;

beforeAll(async () => {
  server = new ArtifactTestServer();
  await server.start();
  dir = mkdtempSync(join(tmpdir(), 'driftline-automation-cp-'));
  db = openDatabase(join(dir, 'cp.db'));
  const { logger } = capturingLogger();
  store = new ReleaseStore({ releases: new SqliteReleaseRepository(db), clock, logger, rootChain: [rootV1], registry });
  signer = new ReleaseSigner({ releases: store, registry, clock, logger, automationSigner: automation.signer });
  for (const [name, version, seed] of [
    ['vibration', 1, 1],
    ['vibration', 2, 2],
    ['vibration', 3, 3],
    ['detector', 1, 4],
  ] as const) {
    // Manifests built from the files (golden vectors recorded by running them); the release key signs only v1.
    const r = await makeRelease(name, version, demoModelBytes(seed), trust.release.signer);
    files.set(`${name}@${version}`, r);
    versions.set(`${name}@${version}`, versionOf(r));
    server.serve(r.sha256, r.bytes);
  }
  await store.publish('vibration', 1, files.get('vibration@1')!.envelope);
  edge1 = await device('edge-1');
  edge2 = await device('edge-2');
  edge3 = await device('edge-3');
  for (const d of [edge1, edge2, edge3]) {
    await d.manager.apply(await desired('vibration', 1));
    expect(d.manager.error).toBeUndefined();
    expect(d.engine.active()?.version).toBe(1);
  }
}, 60_000);

afterAll(async () => {
  for (const d of devices.splice(0)) await d.close();
  db?.close();
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

const golden = (name: string, version: number): ReleaseManifest['golden'] => files.get(`${name}@${version}`)!.manifest.golden;

describe('automation release keys - a scoped canary devices enforce, promoted fleet-wide by a release key', () => {
  it('signs a canary for its audience: edge-1 runs it, edge-2 refuses it (RELEASE_NOT_IN_AUDIENCE) and keeps v1', async () => {
    const result = await signer.signCanary({ model: 'vibration', version: 2, audience: ['edge-1'], manifest: { golden: golden('vibration', 2) } });
    expect(result).toMatchObject({ state: 'signed-canary', keyId: automation.keyId, audience: ['edge-1'] });
    expect(await store.statuses([{ name: 'vibration', version: 2 }])).toEqual([
      { name: 'vibration', version: 2, status: 'canary', signedBy: 'automation-key', keyIds: [automation.keyId], audience: ['edge-1'], reason: '' },
    ]);
    const canary = await desired('vibration', 2);
    await edge1.manager.apply(canary);
    expect(edge1.manager.error).toBeUndefined();
    expect(edge1.engine.active()).toMatchObject({ name: 'vibration', version: 2 });
    expect(edge1.events.at(-1)).toEqual({ kind: 'model.activated', code: undefined });
    await expectRefused(edge2, await desired('vibration', 2), 'RELEASE_NOT_IN_AUDIENCE', 1);
  });

  it('refuses a canary of a model outside the key scope, or naming more devices than it allows, on the device (RELEASE_OUT_OF_SCOPE)', async () => {
    // The signer will not sign them: they wait for a human instead.
    const detector = await signer.signCanary({ model: 'detector', version: 1, audience: ['edge-3'] });
    expect(detector).toEqual({ state: 'awaiting-signature', reason: expect.stringContaining('RELEASE_OUT_OF_SCOPE') });
    const wide = await signer.signCanary({ model: 'vibration', version: 3, audience: ['edge-1', 'edge-2', 'edge-3'] });
    expect(wide).toEqual({ state: 'awaiting-signature', reason: expect.stringContaining('RELEASE_OUT_OF_SCOPE') });
    expect((await store.statuses([{ name: 'vibration', version: 3 }]))[0]).toMatchObject({ status: 'awaiting-signature' });

    // A stolen automation key signing them anyway: devices refuse, whatever the control plane says.
    const forgedDetector = signManifestBytes(buildManifest({ ...files.get('detector@1')!.manifest, audience: ['edge-3'] }), automation.signer);
    await expectRefused(edge3, await desired('detector', 1, { envelope: forgedDetector }), 'RELEASE_OUT_OF_SCOPE', 1);
    const forgedWide = signManifestBytes(buildManifest({ ...files.get('vibration@3')!.manifest, audience: ['edge-1', 'edge-2', 'edge-3'] }), automation.signer);
    await expectRefused(edge3, await desired('vibration', 3, { envelope: forgedWide }), 'RELEASE_OUT_OF_SCOPE', 1);
    const fleetWide = signManifestBytes(files.get('vibration@3')!.manifest, automation.signer);
    await expectRefused(edge3, await desired('vibration', 3, { envelope: fleetWide }), 'RELEASE_OUT_OF_SCOPE', 1);
    // Nor does the control plane store one (it verifies with the same rules).
    expect(await codeOf(store.publish('vibration', 3, fleetWide))).toBe('RELEASE_OUT_OF_SCOPE');
  });

  it('refuses an automation key signing a rollback directive or a root version, and keeps its pinned root', async () => {
    const v1 = files.get('vibration@1')!;
    const directive = signRollbackDirective(
      {
        type: 'driftline-rollback',
        id: 'stolen-1',
        model: 'vibration',
        toVersion: 1,
        toSha256: v1.sha256,
        deviceIds: ['edge-1'],
        issuedAtMs: clock.now(),
        expiresAtMs: clock.now() + 60_000,
      },
      automation.signer,
    );
    await expectRefused(edge1, await desired('vibration', 1, { rollback: directive }), 'TRUST_KEY_UNKNOWN', 2);

    const rootBefore = edge3.rootFile();
    const forgedRoot = signRootBytes(
      { ...trust.metadata(2), threshold: 1, rootKeys: { [automation.keyId]: automation.publicKey }, releaseKeys: { [automation.keyId]: automation.publicKey } },
      [automation.signer],
    );
    const selfSigned = signRaw(buildManifest({ ...files.get('vibration@3')!.manifest }), automation.signer);
    await expectRefused(edge3, await desired('vibration', 3, { rootChain: [rootV1, forgedRoot], envelope: selfSigned }), 'TRUST_KEY_UNKNOWN', 1);
    expect(edge3.rootFile().equals(rootBefore)).toBe(true);
  });

  it('refuses a canary once the root revokes its automation key (TRUST_KEY_REVOKED)', async () => {
    const revoked = rootMetadataSchema.parse(trust.metadata(2, { revokedKeys: [automation.keyId] }));
    const rootV2 = signRootBytes(
      revoked,
      trust.rootKeys.slice(0, 2).map((k) => k.signer),
    );
    const canary = signManifestBytes(buildManifest({ ...files.get('vibration@3')!.manifest, audience: ['edge-2'] }), automation.signer);
    const state = await desired('vibration', 3, { rootChain: [rootV1, rootV2], envelope: canary });
    await edge2.manager.apply(state);
    expect(edge2.manager.error?.code).toBe('TRUST_KEY_REVOKED');
    expect(edge2.engine.active()?.version).toBe(1);
    // The control plane running on that root says so too, and refuses to store it.
    const { logger } = capturingLogger();
    const revokedStore = new ReleaseStore({ releases: new SqliteReleaseRepository(db), clock, logger, rootChain: [rootV1, rootV2], registry });
    expect(revokedStore.automationScope(automation.keyId)).toBeUndefined();
    expect(await codeOf(revokedStore.publish('vibration', 3, canary))).toBe('TRUST_KEY_REVOKED');
    const revokedSigner = new ReleaseSigner({ releases: revokedStore, registry, clock, logger, automationSigner: automation.signer });
    expect(await revokedSigner.signCanary({ model: 'vibration', version: 3, audience: ['edge-2'] })).toEqual({
      state: 'awaiting-signature',
      reason: expect.stringContaining('TRUST_KEY_UNKNOWN'),
    });
  });

  it("a release key's signature over the canary's draft makes v2 fleet-wide: every device runs it", async () => {
    const draft = await store.draft('vibration', 2);
    const manifest = buildManifest(JSON.parse(draft.manifest.toString('utf8')) as ReleaseManifest);
    expect(manifest.audience).toBeUndefined();
    expect(manifest.golden).toEqual(golden('vibration', 2));
    // A canary never replaces itself with a wider canary, nor a fleet-wide release with a canary.
    const wider = signManifestBytes(buildManifest({ ...manifest, audience: ['edge-1', 'edge-2'] }), automation.signer);
    expect(await codeOf(store.publish('vibration', 2, wider))).toBe('RELEASE_CONFLICT');

    const promoted = await store.publish('vibration', 2, signManifestBytes(manifest, trust.release.signer));
    expect(promoted.keyIds).toEqual([trust.release.keyId]);
    expect((await store.statuses([{ name: 'vibration', version: 2 }]))[0]).toMatchObject({ status: 'signed', signedBy: 'release-key', audience: [] });
    expect(await codeOf(store.publish('vibration', 2, wider))).toBe('RELEASE_CONFLICT');
    // The same signature again is a no-op (Ed25519 is deterministic); another one is a conflict.
    expect((await store.publish('vibration', 2, signManifestBytes(manifest, trust.release.signer))).publishedAtMs).toBe(promoted.publishedAtMs);
    expect(await codeOf(store.publish('vibration', 2, signManifestBytes({ ...manifest, createdAtMs: 7 }, trust.release.signer)))).toBe('RELEASE_CONFLICT');

    // edge-1 already runs it (the canary's bytes are the same version); the others take it now.
    for (const d of [edge1, edge2, edge3]) {
      await d.manager.apply(await desired('vibration', 2));
      expect(d.engine.active(), d.id).toMatchObject({ name: 'vibration', version: 2 });
    }
    for (const d of [edge2, edge3]) {
      expect(d.manager.error, d.id).toBeUndefined();
      expect(d.events.at(-1)).toEqual({ kind: 'model.activated', code: undefined });
    }
  });

  it('without an automation key every released candidate awaits a signature, with its draft recorded', async () => {
    const { logger } = capturingLogger();
    const offline = new ReleaseSigner({ releases: store, registry, clock, logger });
    const result = await offline.signCanary({ model: 'vibration', version: 3, audience: ['edge-1'], manifest: { lineage: { job: 'job-7' } } });
    expect(result).toEqual({ state: 'awaiting-signature', reason: expect.stringContaining('models sign') });
    const draft = JSON.parse((await store.draft('vibration', 3)).manifest.toString('utf8')) as ReleaseManifest;
    expect(draft).toMatchObject({
      name: 'vibration',
      version: 3,
      artifact: { sha256: files.get('vibration@3')!.sha256 },
      lineage: { job: 'job-7', parentVersion: 2 },
    });
    expect(await store.statuses([{ name: 'vibration', version: 3 }])).toEqual([
      {
        name: 'vibration',
        version: 3,
        status: 'awaiting-signature',
        signedBy: '',
        keyIds: [],
        audience: [],
        reason: result.state === 'awaiting-signature' ? result.reason : '',
      },
    ]);
    expect(await codeOf(offline.signCanary({ model: 'vibration', version: 9, audience: ['edge-1'] }))).toBe('MODEL_NOT_FOUND');
    expect(await codeOf(offline.signCanary({ model: 'vibration', version: 3, audience: [] }))).toBe('REQUEST_INVALID');
    expect(await codeOf(offline.signCanary({ model: 'vibration', version: 3, audience: ['+'] }))).toBe('ID_INVALID');
    expect(await codeOf(store.draft('vibration', 1))).toBe('MODEL_NOT_FOUND');
  });
});
