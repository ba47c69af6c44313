import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { DriftlineError } from '../common/errors.js';
import { sha256Hex } from '../common/hashing.js';
import { UploadModelHeader } from '../common/proto/driftline/v1/models.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import { SqliteOperatorTokenRepository } from '../control-plane/store/sqlite/operator-token-repository.js';
import { ensureAdminToken, OperatorTokenStore } from '../control-plane/fleet/operator-tokens.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { ModelRegistry } from '../control-plane/registry/model-registry.js';
import { SqliteModelVersionRepository } from '../control-plane/store/sqlite/model-version-repository.js';
import { applyMigrations, openDatabase, type Database } from '../control-plane/store/sqlite/database.js';
import { buildDemoModel } from '../demo/model/demo-model.js';

async function* chunked(bytes: Uint8Array, size = 300): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

const codeOf = (promise: Promise<unknown>): Promise<string> =>
  promise.then(
    () => 'resolved',
    (err: unknown) => (err instanceof DriftlineError ? err.code : `not a DriftlineError: ${String(err)}`),
  );

/** Every file under the artifact root except in-flight temp files. */
function storedArtifacts(root: string): string[] {
  const base = join(root, 'sha256');
  if (!existsSync(base)) return [];
  return readdirSync(base).flatMap((prefix) => readdirSync(join(base, prefix)));
}

describe('control-plane store', () => {
  let dir: string;
  let db: Database;
  let clock: ManualClock;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-store-'));
    db = openDatabase(join(dir, 'control-plane.db'));
    clock = new ManualClock();
  });

  afterEach(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe('migrations', () => {
    it('applies each module migration once, across reopenings', () => {
      const migrations = ['CREATE TABLE things (id INTEGER PRIMARY KEY)', 'INSERT INTO things (id) VALUES (1)'];
      applyMigrations(db, 'things', migrations);
      applyMigrations(db, 'things', migrations);
      db.close();
      db = openDatabase(join(dir, 'control-plane.db'));
      applyMigrations(db, 'things', [...migrations, 'INSERT INTO things (id) VALUES (2)']);
      expect(db.prepare('SELECT id FROM things ORDER BY id').pluck().all()).toEqual([1, 2]);
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    });

    it('refuses a database written by a newer build', () => {
      applyMigrations(db, 'things', ['CREATE TABLE a (x)', 'CREATE TABLE b (x)']);
      expect(() => applyMigrations(db, 'things', ['CREATE TABLE a (x)'])).toThrowError(expect.objectContaining({ code: 'STORE_FAILED' }));
    });

    it('leaves no trace of a migration that fails halfway', () => {
      expect(() => applyMigrations(db, 'broken', ['CREATE TABLE ok (x); CREATE TABLE ok (x);'])).toThrow();
      expect(db.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'ok'").pluck().get()).toBe(0);
      applyMigrations(db, 'broken', ['CREATE TABLE ok (x);']);
    });
  });

  describe('fleet', () => {
    it('keeps reported and desired state and the last contact per device', async () => {
      const fleet = new FleetStore(new SqliteFleetRepository(db));
      const { token } = await fleet.createEnrollmentToken('edge-1', { site: 'plant-3' }, clock.now() + 1000, clock.now());
      await fleet.enroll({ token, deviceId: 'edge-1', firmwareProfile: 'jetson-orin-nano' }, clock.now());
      await fleet.saveReported(
        'edge-1',
        {
          agentVersion: '0.1.0',
          firmwareProfile: 'jetson-orin-nano',
          activeModel: undefined,
          bufferDepth: 3,
          boot: 2,
          uptimeS: 10,
          desiredRevision: 0,
          lastErrorCode: '',
          lastError: '',
          droppedRecords: 0,
          reportedAtMs: 5,
          warnings: [],
          activeModels: [],
        },
        clock.now() + 10,
      );
      await fleet.recordSeen('edge-1', clock.now() + 5);
      await fleet.setDesired('edge-1', {
        revision: 4,
        model: {
          name: 'm',
          version: 2,
          sha256: 'a'.repeat(64),
          sizeBytes: 9,
          artifactPath: `artifacts/sha256/${'a'.repeat(64)}`,
          driftReference: '',
          envelope: Buffer.alloc(0),
          rollback: Buffer.alloc(0),
        },
        rootChain: [],
        rollback: Buffer.alloc(0),
        models: [],
      });
      const device = await fleet.get('edge-1');
      expect(device).toMatchObject({
        labels: { site: 'plant-3', profile: 'jetson-orin-nano' },
        lastSeenMs: clock.now() + 10,
        reported: { bufferDepth: 3, boot: 2 },
      });
      expect((await fleet.getDesired('edge-1'))?.revision).toBe(4);
      expect(await fleet.verifyDeviceCredential('edge-2', 'x')).toBe('unknown');
    });
  });

  describe('operator tokens', () => {
    it('writes the first admin token to an owner-only file once', async () => {
      const tokens = new OperatorTokenStore(new SqliteOperatorTokenRepository(db));
      const first = await ensureAdminToken(tokens, dir, clock);
      expect(first.created).toBe(true);
      expect(readFileSync(first.file, 'utf8').trim()).toBe(first.token);
      expect(statSync(first.file).mode & 0o777).toBe(0o600);
      expect((await tokens.authenticate(first.token!))?.role).toBe('admin');
      expect(await ensureAdminToken(tokens, dir, clock)).toEqual({ created: false, file: first.file });
    });

    it('stores tokens only as hashes', async () => {
      const tokens = new OperatorTokenStore(new SqliteOperatorTokenRepository(db));
      const { secret } = await tokens.create('ci', 'operator', clock.now());
      const dump = JSON.stringify(db.prepare('SELECT * FROM operator_tokens').all());
      expect(dump).not.toContain(secret);
      expect(dump).toContain(sha256Hex(secret));
    });
  });

  describe('model registry', () => {
    let artifactsRoot: string;
    let registry: ModelRegistry;
    const header = (bytes: Uint8Array, extra: Partial<UploadModelHeader> = {}) =>
      UploadModelHeader.fromPartial({ name: 'vibration', sizeBytes: bytes.length, sha256: sha256Hex(bytes), ...extra });

    beforeEach(() => {
      artifactsRoot = join(dir, 'artifacts');
      registry = new ModelRegistry({
        versions: new SqliteModelVersionRepository(db),
        artifacts: new ArtifactStore(artifactsRoot),
        clock,
        maxModelBytes: 16 * 1024,
      });
    });

    it('stores identical bytes once, however many names point at them', async () => {
      const { bytes } = buildDemoModel({ seed: 1 });
      const a = await registry.upload(header(bytes), chunked(bytes));
      const b = await registry.upload(header(bytes, { name: 'vibration-copy' }), chunked(bytes));
      expect([a.version, b.version]).toEqual([1, 1]);
      expect(storedArtifacts(artifactsRoot)).toEqual([sha256Hex(bytes)]);
      expect(existsSync(join(artifactsRoot, 'sha256', a.sha256.slice(0, 2), a.sha256))).toBe(true);
    });

    it('leaves no artifact, temp file or version behind after any refused upload', async () => {
      const { bytes } = buildDemoModel({ seed: 1 });
      const junk = randomBytes(3000);
      const refusals = await Promise.all([
        codeOf(registry.upload(header(bytes, { sha256: sha256Hex('x') }), chunked(bytes))),
        codeOf(registry.upload(header(junk), chunked(junk))),
        codeOf(registry.upload(header(bytes, { sizeBytes: bytes.length - 1 }), chunked(bytes))),
        codeOf(registry.upload(header(bytes, { sizeBytes: bytes.length + 1 }), chunked(bytes))),
        codeOf(registry.upload(header(randomBytes(20_000)), chunked(randomBytes(20_000)))),
        codeOf(registry.upload(header(bytes, { sizeBytes: 0 }), chunked(bytes))),
      ]);
      expect(refusals).toEqual(['MODEL_CHECKSUM_MISMATCH', 'MODEL_INVALID', 'UPLOAD_INCOMPLETE', 'UPLOAD_INCOMPLETE', 'PAYLOAD_TOO_LARGE', 'REQUEST_INVALID']);
      expect(storedArtifacts(artifactsRoot)).toEqual([]);
      expect(readdirSync(join(artifactsRoot, 'tmp'))).toEqual([]);
      expect(await registry.listLatest()).toEqual([]);
    });

    it('stops reading a stream as soon as it exceeds the declared size', async () => {
      let yielded = 0;
      async function* endless(): AsyncGenerator<Uint8Array> {
        for (;;) {
          yielded++;
          yield new Uint8Array(1024);
        }
      }
      expect(await codeOf(registry.upload(header(new Uint8Array(4096)), endless()))).toBe('UPLOAD_INCOMPLETE');
      expect(yielded).toBe(5);
    });

    it('resolves version 0 to the latest version', async () => {
      const first = buildDemoModel({ seed: 1 }).bytes;
      await registry.upload(header(first), chunked(first));
      const second = buildDemoModel({ seed: 2 }).bytes;
      await registry.upload(header(second), chunked(second));
      expect((await registry.resolve('vibration', 0)).version).toBe(2);
      expect((await registry.resolve('vibration', 1)).version).toBe(1);
      await expect(registry.resolve('vibration', 3)).rejects.toThrowError(expect.objectContaining({ code: 'MODEL_NOT_FOUND' }));
    });

    it('amends a version as the next version with the same bytes, stored once, recording which version it corrects', async () => {
      const first = buildDemoModel({ seed: 1 }).bytes;
      await registry.upload(header(first, { description: 'first', metadata: { 'driftline.reference': 'wrong', team: 'vib' } }), chunked(first));
      const second = buildDemoModel({ seed: 2 }).bytes;
      await registry.upload(header(second), chunked(second));
      clock.advance(1000);
      const amended = await registry.amend('vibration', 1, { description: '', metadata: { 'driftline.reference': 'right' } });
      expect(amended).toMatchObject({
        version: 3,
        amendsVersion: 1,
        sha256: sha256Hex(first),
        sizeBytes: first.length,
        description: 'first',
        createdAtMs: clock.now(),
      });
      expect(amended.metadata).toEqual({ 'driftline.reference': 'right', team: 'vib' });
      expect((await registry.resolve('vibration', 1)).metadata['driftline.reference']).toBe('wrong');
      expect((await registry.resolve('vibration', 1)).amendsVersion).toBe(0);
      expect(storedArtifacts(artifactsRoot).sort()).toEqual([sha256Hex(first), sha256Hex(second)].sort());
    });

    it('refuses an amendment that changes nothing, of a missing version, or without a version', async () => {
      const bytes = buildDemoModel({ seed: 1 }).bytes;
      await registry.upload(header(bytes, { description: 'd', metadata: { k: 'v' } }), chunked(bytes));
      expect([
        await codeOf(registry.amend('vibration', 1, { description: 'd', metadata: { k: 'v' } })),
        await codeOf(registry.amend('vibration', 2, { description: 'new', metadata: {} })),
        await codeOf(registry.amend('vibration', 0, { description: 'new', metadata: {} })),
        await codeOf(registry.amend('absent', 1, { description: 'new', metadata: {} })),
      ]).toEqual(['MODEL_UNCHANGED', 'MODEL_NOT_FOUND', 'REQUEST_INVALID', 'MODEL_NOT_FOUND']);
      expect((await registry.get('vibration')).versions).toHaveLength(1);
    });
  });
});
