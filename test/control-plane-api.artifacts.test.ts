import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { sha256Hex } from '../common/hashing.js';
import { silentLogger } from '../common/logger.js';
import { SqliteFleetRepository } from '../control-plane/store/sqlite/fleet-repository.js';
import { FleetStore } from '../control-plane/fleet/fleet-store.js';
import { startArtifactServer, type ArtifactServer } from '../control-plane/registry/artifact-http.js';
import { ArtifactStore } from '../control-plane/registry/artifact-store.js';
import { openDatabase, type Database } from '../control-plane/store/sqlite/database.js';

describe('artifact HTTP server', () => {
  let dir: string;
  let db: Database;
  let fleet: FleetStore;
  let server: ArtifactServer;
  let healthy: boolean;
  let secret: string;
  let content: Buffer;
  let sha256: string;
  /** `device/sha256` pairs the device was told to install. */
  let granted: Set<string>;
  const OPERATOR_TOKEN = 'dlt_operator';

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-artifacts-'));
    db = openDatabase(join(dir, 'control-plane.db'));
    const clock = new ManualClock();
    fleet = new FleetStore(new SqliteFleetRepository(db));
    const { token } = await fleet.createEnrollmentToken('edge-1', {}, clock.now() + 60_000, clock.now());
    secret = (await fleet.enroll({ token, deviceId: 'edge-1', firmwareProfile: 'generic-x86_64-cpu' }, clock.now())).secret;

    const artifacts = new ArtifactStore(join(dir, 'artifacts'));
    content = randomBytes(100_000);
    const writer = await artifacts.createWriter();
    await writer.write(content);
    sha256 = (await writer.commit()).sha256;

    healthy = true;
    granted = new Set([`edge-1/${sha256}`, `edge-1/${sha256Hex('nothing')}`]);
    server = await startArtifactServer({
      host: '127.0.0.1',
      port: 0,
      artifacts,
      verifyDeviceCredential: (id, password) => fleet.verifyDeviceCredential(id, password),
      mayDownload: (deviceId, wanted) => granted.has(`${deviceId}/${wanted}`),
      authenticateOperator: (token) => token === OPERATOR_TOKEN,
      metrics: new Registry(),
      health: () => ({ ok: healthy, details: { db: healthy ? 'ok' : 'down' } }),
      logger: silentLogger(),
    });
  });

  afterEach(async () => {
    await server.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const basic = (user: string, password: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` });
  const get = (path: string, headers: Record<string, string> = {}, method = 'GET') => fetch(`${server.url}${path}`, { method, headers });
  const artifactUrl = () => `/artifacts/sha256/${sha256}`;

  it('serves a whole artifact to an enrolled device with its length and sha256 ETag', async () => {
    const res = await get(artifactUrl(), basic('edge-1', secret));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(content.length));
    expect(res.headers.get('etag')).toBe(`"${sha256}"`);
    expect(res.headers.get('accept-ranges')).toBe('bytes');
    expect(sha256Hex(Buffer.from(await res.arrayBuffer()))).toBe(sha256);
  });

  it('answers HEAD with the length and no body', async () => {
    const res = await get(artifactUrl(), basic('edge-1', secret), 'HEAD');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(content.length));
    expect((await res.arrayBuffer()).byteLength).toBe(0);
  });

  it('resumes a download from a byte offset with a 206 partial response', async () => {
    const res = await get(artifactUrl(), { ...basic('edge-1', secret), range: 'bytes=40000-' });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes 40000-99999/${content.length}`);
    expect(Buffer.from(await res.arrayBuffer()).equals(content.subarray(40000))).toBe(true);

    const middle = await get(artifactUrl(), { ...basic('edge-1', secret), range: 'bytes=10-19' });
    expect(Buffer.from(await middle.arrayBuffer()).equals(content.subarray(10, 20))).toBe(true);
    const suffix = await get(artifactUrl(), { ...basic('edge-1', secret), range: 'bytes=-5' });
    expect(Buffer.from(await suffix.arrayBuffer()).equals(content.subarray(-5))).toBe(true);
  });

  it('answers 416 for a range that starts past the end', async () => {
    const res = await get(artifactUrl(), { ...basic('edge-1', secret), range: `bytes=${content.length}-` });
    expect(res.status).toBe(416);
    expect(res.headers.get('content-range')).toBe(`bytes */${content.length}`);
  });

  it('sends the whole artifact when the range header asks for several ranges', async () => {
    const res = await get(artifactUrl(), { ...basic('edge-1', secret), range: 'bytes=0-1,5-6' });
    expect(res.status).toBe(200);
    expect((await res.arrayBuffer()).byteLength).toBe(content.length);
  });

  it('refuses missing, wrong and decommissioned credentials with 401', async () => {
    expect((await get(artifactUrl())).status).toBe(401);
    expect((await get(artifactUrl(), basic('edge-1', 'dld_wrong'))).status).toBe(401);
    expect((await get(artifactUrl(), basic('edge-2', secret))).status).toBe(401);
    await fleet.decommission('edge-1');
    const res = await get(artifactUrl(), basic('edge-1', secret));
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Basic/);
  });

  it('answers 404 ARTIFACT_NOT_FOUND for granted content it does not hold', async () => {
    const missing = await get(`/artifacts/sha256/${sha256Hex('nothing')}`, basic('edge-1', secret));
    expect([missing.status, missing.headers.get('driftline-error-code')]).toEqual([404, 'ARTIFACT_NOT_FOUND']);
    expect((await get('/artifacts/sha256/../../control-plane.db', basic('edge-1', secret))).status).toBe(404);
  });

  it('answers 403 ARTIFACT_FORBIDDEN for content the device was not granted, whether it exists or not', async () => {
    granted.clear();
    for (const wanted of [sha256, sha256Hex('nothing')]) {
      const res = await get(`/artifacts/sha256/${wanted}`, basic('edge-1', secret));
      expect([res.status, res.headers.get('driftline-error-code')]).toEqual([403, 'ARTIFACT_FORBIDDEN']);
    }
  });

  it('serves health without credentials and metrics only with an operator token', async () => {
    const health = await get('/healthz');
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ ok: true, details: { db: 'ok' } });
    healthy = false;
    expect((await get('/healthz')).status).toBe(503);

    await get(artifactUrl(), basic('edge-1', secret));
    expect((await get('/metrics')).status).toBe(401);
    expect((await get('/metrics', { authorization: 'Bearer dlt_wrong' })).headers.get('driftline-error-code')).toBe('AUTH_INVALID');
    const metrics = await (await get('/metrics', { authorization: `Bearer ${OPERATOR_TOKEN}` })).text();
    expect(metrics).toContain('driftline_artifact_responses_total{status="200"} 1');
  });
});
