import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SqliteBuffer } from '../agent/buffer/sqlite-buffer.js';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { runGoldenSelfTest } from '../agent/models/golden-self-test.js';
import { ModelManager } from '../agent/models/model-manager.js';
import { PinnedRoot } from '../agent/trust/pinned-root.js';
import { ManualClock } from '../common/clock.js';
import { DesiredState } from '../common/proto/driftline/v1/device_link.js';
import { signRollbackDirective } from '../common/trust/rollback.js';
import { signRootBytes } from '../common/trust/root.js';
import { capturingLogger } from './fixtures/logs.js';
import { demoModelBytes } from './fixtures/models.js';
import { ArtifactTestServer, desiredFor, makeRelease, newKey, signRaw, testTrust, type TestRelease, type TestTrust } from './helpers/releases.js';

const clock = new ManualClock();
let server: ArtifactTestServer;
let trust: TestTrust;
const models: Uint8Array[] = [];
let v1: TestRelease;
let v2: TestRelease;
let v3: TestRelease;

beforeAll(async () => {
  server = new ArtifactTestServer();
  await server.start();
  trust = testTrust(clock.now());
  for (let seed = 1; seed <= 3; seed++) models.push(demoModelBytes(seed));
  v1 = await makeRelease('vibration', 1, models[0]!, trust.release.signer);
  v2 = await makeRelease('vibration', 2, models[1]!, trust.release.signer);
  v3 = await makeRelease('vibration', 3, models[2]!, trust.release.signer);
  for (const r of [v1, v2, v3]) server.serve(r.sha256, r.bytes);
});
afterAll(() => server.close());

interface Device {
  dir: string;
  manager: ModelManager;
  engine: InferenceEngine;
  events: Array<{ kind: string; code?: string }>;
  rootFile(): Buffer;
  close(): Promise<void>;
}
const devices: Device[] = [];
afterEach(async () => {
  for (const d of devices.splice(0)) await d.close();
  clock.set(1_700_000_000_000);
  for (const r of [v1, v2, v3]) server.serve(r.sha256, r.bytes);
});

async function device(options: { downloadTimeoutMs?: number; arch?: string } = {}): Promise<Device> {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-agent-models-'));
  const { logger } = capturingLogger();
  const runtime = createOnnxRuntime({ logger });
  const buffer = SqliteBuffer.open({ file: join(dir, 'buffer.db'), synchronous: 'NORMAL' });
  const engine = InferenceEngine.create({ runtime, providers: ['cpu'], logger, clock, intraOpThreads: 1 });
  const pinned = PinnedRoot.open(dir);
  pinned.pin(trust.v1, clock);
  const events: Device['events'] = [];
  const manager = new ModelManager({
    modelsDir: join(dir, 'models'),
    host: engine,
    state: buffer.state,
    artifactBaseUrl: server.url,
    credential: { username: 'edge-1', password: 'secret' },
    downloadTimeoutMs: options.downloadTimeoutMs ?? 30_000,
    maxModelBytes: 64 * 1024 * 1024,
    activationRetries: 1,
    logger,
    clock,
    trust: pinned,
    device: { deviceId: 'edge-1', arch: options.arch ?? 'x86_64', providers: ['cpu'], memoryBytes: 8 * 1024 ** 3 },
    selfTest: (path, golden) => runGoldenSelfTest(runtime, ['cpu'], path, golden),
    onChange: (e) => events.push({ kind: e.kind, code: e.error?.code }),
  });
  const d: Device = {
    dir,
    manager,
    engine,
    events,
    rootFile: () => readFileSync(join(dir, 'trust', 'root.json')),
    async close() {
      await engine.shutdown({ graceMs: 0 });
      await buffer.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  devices.push(d);
  return d;
}

/** A device running v1, ready to be attacked. */
async function deviceOnV1(options: Parameters<typeof device>[0] = {}): Promise<Device> {
  const d = await device(options);
  await d.manager.apply(desiredFor(1, v1));
  expect(d.manager.error).toBeUndefined();
  expect(d.engine.active()?.version).toBe(1);
  return d;
}

/** The refusal left everything as it was, and the next valid release is still accepted. */
async function expectRefusedThenRecovers(
  d: Device,
  desired: DesiredState,
  code: string,
  next: { release?: TestRelease; rootChain?: Buffer[]; afterRefusal?: () => void; rootAdvancesTo?: Buffer } = {},
): Promise<void> {
  const release = next.release ?? v2;
  const rootBefore = d.rootFile();
  const stateBefore = d.manager.snapshot();
  await d.manager.apply(desired);
  expect(d.manager.error?.code).toBe(code);
  expect(d.events.at(-1)).toEqual({ kind: 'model.failed', code });
  expect(d.engine.active()).toMatchObject({ name: 'vibration', version: 1, sha256: v1.sha256 });
  expect(d.manager.snapshot().active).toEqual(stateBefore.active);
  expect(d.manager.snapshot().highest).toEqual(stateBefore.highest);
  expect(d.rootFile().equals(next.rootAdvancesTo ?? rootBefore)).toBe(true);
  expect(existsSync(join(d.dir, 'models', `${v1.sha256}.onnx`))).toBe(true);

  next.afterRefusal?.();
  await d.manager.apply(desiredFor(desired.revision + 1, release, { rootChain: next.rootChain ?? [] }));
  expect(d.manager.error).toBeUndefined();
  expect(d.engine.active()).toMatchObject({ version: release.manifest.version, sha256: release.sha256 });
}

describe('agent model manager - signed updates', () => {
  it('activates a signed release after its golden self-test and keeps the previous version for rollback', async () => {
    const d = await deviceOnV1();
    await d.manager.apply(desiredFor(2, v2));
    expect(d.engine.active()).toMatchObject({ version: 2, sha256: v2.sha256 });
    const state = d.manager.snapshot();
    expect(state.active).toMatchObject({ version: 2 });
    expect(state.previous).toMatchObject({ version: 1, sha256: v1.sha256 });
    expect(state.highest).toEqual({ vibration: 2 });
    expect(state.install).toBeUndefined();
    expect(readdirSync(join(d.dir, 'models')).sort()).toEqual([`${v1.sha256}.onnx`, `${v2.sha256}.onnx`].sort());
    expect(d.events.map((e) => e.kind)).toEqual(['model.activated', 'model.activated']);
  });

  it('refuses a model with one flipped byte (sha256 mismatch) and keeps the running model', async () => {
    const d = await deviceOnV1();
    const tampered = Buffer.from(v2.bytes);
    tampered[tampered.length >> 1] ^= 0xff;
    server.serve(v2.sha256, tampered);
    await expectRefusedThenRecovers(d, desiredFor(2, v2), 'MODEL_CHECKSUM_MISMATCH', { afterRefusal: () => server.serve(v2.sha256, v2.bytes) });
    expect(existsSync(join(d.dir, 'models', `${v2.sha256}.onnx.part`))).toBe(false);
  });

  it('refuses a manifest with one flipped byte', async () => {
    const d = await deviceOnV1();
    await expectRefusedThenRecovers(d, desiredFor(2, v2, { envelope: flipPayloadByte(v2.envelope) }), 'TRUST_SIGNATURE_INVALID');
  });

  it('refuses a release signed by a key the root does not list', async () => {
    const d = await deviceOnV1();
    const rogue = await makeRelease('vibration', 2, models[1]!, newKey().signer);
    await expectRefusedThenRecovers(d, desiredFor(2, rogue), 'TRUST_KEY_UNKNOWN');
  });

  it('refuses a root rotation signed below the threshold of the new keys', async () => {
    const d = await deviceOnV1();
    const newKeys = [newKey(), newKey(), newKey()];
    const meta = trust.metadata(2, { rootKeys: Object.fromEntries(newKeys.map((k) => [k.keyId, k.publicKey])) });
    const belowNew = signRootBytes(meta, [trust.rootKeys[0]!.signer, trust.rootKeys[1]!.signer, newKeys[0]!.signer]);
    await expectRefusedThenRecovers(d, desiredFor(2, v2, { rootChain: [belowNew] }), 'TRUST_THRESHOLD_NOT_MET');
  });

  it('refuses a root rotation that is missing the old root keys, then walks a proper one', async () => {
    const d = await deviceOnV1();
    const newKeys = [newKey(), newKey(), newKey()];
    const meta = trust.metadata(2, { rootKeys: Object.fromEntries(newKeys.map((k) => [k.keyId, k.publicKey])) });
    const onlyNew = signRootBytes(
      meta,
      newKeys.map((k) => k.signer),
    );
    const proper = signRootBytes(meta, [trust.rootKeys[0]!.signer, trust.rootKeys[2]!.signer, newKeys[0]!.signer, newKeys[1]!.signer]);
    await expectRefusedThenRecovers(d, desiredFor(2, v2, { rootChain: [onlyNew] }), 'TRUST_KEY_UNKNOWN', { rootChain: [trust.v1, proper] });
    expect(d.rootFile().equals(proper)).toBe(true);
  });

  it('refuses everything once the pinned root has expired, until a newer root arrives', async () => {
    const d = await deviceOnV1();
    clock.advance(86_400_000);
    const fresh = signRootBytes(
      { ...trust.metadata(2), expiresAtMs: clock.now() + 86_400_000 },
      trust.rootKeys.map((k) => k.signer),
    );
    await expectRefusedThenRecovers(d, desiredFor(2, v2), 'TRUST_METADATA_EXPIRED', { rootChain: [fresh] });
  });

  it('refuses a validly signed older version, and accepts it with a signed rollback directive for this device', async () => {
    const d = await deviceOnV1();
    await d.manager.apply(desiredFor(2, v2));
    await d.manager.apply(desiredFor(3, v1));
    expect(d.manager.error?.code).toBe('RELEASE_VERSION_REFUSED');
    expect(d.engine.active()?.version).toBe(2);

    const directive = (deviceIds: string[]) =>
      signRollbackDirective(
        {
          type: 'driftline-rollback',
          id: 'rb-1',
          model: 'vibration',
          toVersion: 1,
          toSha256: v1.sha256,
          deviceIds,
          reason: 'canary gate failed',
          issuedAtMs: clock.now(),
          expiresAtMs: clock.now() + 60_000,
        },
        trust.rollback.signer,
      );
    await d.manager.apply(desiredFor(4, v1, { rollback: directive(['edge-2']) }));
    expect(d.manager.error?.code).toBe('RELEASE_MISMATCH');
    expect(d.engine.active()?.version).toBe(2);

    await d.manager.apply(desiredFor(5, v1, { rollback: directive(['edge-1']) }));
    expect(d.manager.error).toBeUndefined();
    expect(d.engine.active()).toMatchObject({ version: 1, sha256: v1.sha256 });
    expect(d.events.at(-1)).toEqual({ kind: 'model.rolled_back', code: undefined });
    expect(d.manager.snapshot().highest).toEqual({ vibration: 2 });
    // Going forward again needs a version above the highest ever activated.
    await d.manager.apply(desiredFor(6, v3));
    expect(d.engine.active()?.version).toBe(3);
  });

  it('refuses a manifest and an artifact that do not belong together', async () => {
    const d = await deviceOnV1();
    await expectRefusedThenRecovers(d, desiredFor(2, v2, { sha256: v3.sha256, sizeBytes: v3.bytes.length }), 'RELEASE_MISMATCH');
  });

  it('cuts off a download that runs past the signed size', async () => {
    const d = await deviceOnV1();
    server.serve(v2.sha256, v2.bytes, 'pad');
    await d.manager.apply(desiredFor(2, v2));
    expect(d.manager.error?.code).toBe('MODEL_CHECKSUM_MISMATCH');
    server.serve(v2.sha256, v2.bytes, 'endless');
    await expectRefusedThenRecovers(d, desiredFor(3, v2), 'MODEL_CHECKSUM_MISMATCH', { release: v3 });
    expect(existsSync(join(d.dir, 'models', `${v2.sha256}.onnx.part`))).toBe(false);
  });

  it('gives up on an endlessly slow download after the configured timeout and resumes it later', async () => {
    const d = await deviceOnV1({ downloadTimeoutMs: 300 });
    server.serve(v2.sha256, v2.bytes, 'stall');
    await d.manager.apply(desiredFor(2, v2));
    expect(d.manager.error?.code).toBe('DOWNLOAD_TIMEOUT');
    expect(d.engine.active()?.version).toBe(1);
    expect(readFileSync(join(d.dir, 'models', `${v2.sha256}.onnx.part`)).length).toBe(10);
    server.serve(v2.sha256, v2.bytes);
    server.ranges.length = 0;
    // A transient failure is retried when the same revision is sent again.
    await d.manager.apply(desiredFor(2, v2));
    expect(server.ranges).toEqual(['bytes=10-']);
    expect(d.engine.active()).toMatchObject({ version: 2, sha256: v2.sha256 });
  });

  it('refuses names and paths that try to climb out with ../', async () => {
    const d = await deviceOnV1();
    await d.manager.apply(desiredFor(2, v2, { artifactPath: `../../etc/${v2.sha256}` }));
    expect(d.manager.error?.code).toBe('RELEASE_MISMATCH');
    const evil = signRaw({ ...v2.manifest, name: '../../evil' }, trust.release.signer);
    const desired = desiredFor(3, v2, { envelope: evil });
    desired.model!.name = '../../evil';
    await expectRefusedThenRecovers(d, desired, 'RELEASE_INVALID');
  });

  it('refuses an unsigned desired state once a root is pinned', async () => {
    const d = await deviceOnV1();
    await expectRefusedThenRecovers(d, desiredFor(2, v2, { envelope: Buffer.alloc(0) }), 'RELEASE_UNSIGNED');
  });

  it('refuses a release signed by a revoked key after a root rotation that revokes it', async () => {
    const d = await deviceOnV1();
    const newRelease = newKey();
    const v2root = signRootBytes(
      trust.metadata(2, { releaseKeys: { [newRelease.keyId]: newRelease.publicKey }, revokedKeys: [trust.release.keyId] }),
      trust.rootKeys.map((k) => k.signer),
    );
    const resigned = await makeRelease('vibration', 2, models[1]!, newRelease.signer);
    await expectRefusedThenRecovers(d, desiredFor(2, v2, { rootChain: [v2root] }), 'TRUST_KEY_REVOKED', {
      release: resigned,
      rootChain: [v2root],
      rootAdvancesTo: v2root,
    });
  });

  it('refuses a release built for another architecture', async () => {
    const d = await deviceOnV1();
    const armOnly = await makeRelease('vibration', 2, models[1]!, trust.release.signer, {
      constraints: { providers: [], arch: ['arm64'], minMemoryBytes: 0, flags: [] },
    });
    await expectRefusedThenRecovers(d, desiredFor(2, armOnly), 'RELEASE_INCOMPATIBLE');
  });

  it('refuses a release that requires a fact of the firmware profile this device lacks', async () => {
    const d = await deviceOnV1();
    const jetsonOnly = await makeRelease('vibration', 2, models[1]!, trust.release.signer, {
      constraints: { providers: [], arch: [], minMemoryBytes: 0, flags: ['jetson-agx-orin-jp6'] },
    });
    await expectRefusedThenRecovers(d, desiredFor(2, jetsonOnly), 'RELEASE_INCOMPATIBLE');
  });

  it('refuses a release whose golden vectors the model does not reproduce', async () => {
    const d = await deviceOnV1();
    const golden = structuredClone(v2.manifest.golden);
    const out = golden.vectors[0]!.outputs.probabilities!;
    out.data[0] = Number(out.data[0]) + 0.5;
    const wrong = await makeRelease('vibration', 2, models[1]!, trust.release.signer, { golden });
    await expectRefusedThenRecovers(d, desiredFor(2, wrong), 'RELEASE_SELF_TEST_FAILED');
  });

  it('resumes an interrupted download from the bytes it already has', async () => {
    const d = await deviceOnV1();
    server.serve(v2.sha256, v2.bytes, 'cut-half');
    await d.manager.apply(desiredFor(2, v2));
    expect(d.manager.error?.code).toBe('DOWNLOAD_FAILED');
    server.ranges.length = 0;
    await d.manager.apply(desiredFor(2, v2));
    expect(server.ranges).toEqual([`bytes=${v2.bytes.length >> 1}-`]);
    expect(d.engine.active()?.version).toBe(2);
  });

  it('keeps the pinned root file unchanged on disk after a refused rotation', async () => {
    const d = await device();
    const before = d.rootFile();
    const skipped = signRootBytes(
      trust.metadata(3),
      trust.rootKeys.map((k) => k.signer),
    );
    await d.manager.apply(desiredFor(1, v1, { rootChain: [skipped] }));
    expect(d.manager.error?.code).toBe('TRUST_ROOT_INVALID');
    expect(d.rootFile().equals(before)).toBe(true);
  });
});

/** Flips one byte inside the signed payload of an envelope, keeping it valid JSON and base64. */
function flipPayloadByte(envelope: Buffer): Buffer {
  const env = JSON.parse(envelope.toString()) as { payload: string };
  const payload = Buffer.from(env.payload, 'base64');
  const i = payload.indexOf('"createdAtMs":1') + '"createdAtMs":'.length;
  payload[i] = '2'.charCodeAt(0);
  return Buffer.from(JSON.stringify({ ...env, payload: payload.toString('base64') }));
}
