import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { EnrollmentServiceClient, EnrollRequest, type EnrollResponse } from '../common/proto/driftline/v1/fleet.js';
import { ReleaseServiceClient, type Release } from '../common/proto/driftline/v1/releases.js';
import { rootExpiryWarning, signRootBytes } from '../common/trust/root.js';
import { startControlPlane, type ControlPlane } from '../control-plane/server.js';
import { demoModelBytes } from './fixtures/models.js';
import { fleetApi, type FleetApi } from './helpers/fleet-api.js';
import { bearer, refusalOf, rpc } from './helpers/grpc-calls.js';
import { makeRelease, newKey, testTrust, type TestTrust } from './helpers/releases.js';
import { rolloutApi } from './helpers/rollout-api.js';

const DAY_MS = 86_400_000;
const BIN = fileURLToPath(new URL('../bin/driftline.js', import.meta.url));

/**
 * A release signed under root v1, deployed to a device; then the operator rotates to root v2,
 * which revokes that release key, and restarts serve. The root expires in 10 days.
 */
describe('serve warns about its trust root and refuses releases devices will refuse', () => {
  let dir: string;
  let rootDir: string;
  let cp: ControlPlane;
  let api: FleetApi;
  let trust: TestTrust;

  const start = () =>
    startControlPlane(
      { dataDir: join(dir, 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, trust: { root: rootDir } },
      { logger: silentLogger() },
    );
  const healthz = async () =>
    ((await (await fetch(`${cp.addresses.http}/healthz`)).json()) as { details: { trust: { warnings: Array<{ code: string }> } } }).details.trust;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'driftline-trust-warnings-'));
    rootDir = join(dir, 'root');
    mkdirSync(rootDir);
    trust = testTrust(Date.now(), 10 * DAY_MS);
    writeFileSync(join(rootDir, 'root.v1.json'), trust.v1);

    cp = await start();
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
    const model = await api.uploadModel('vibration', demoModelBytes(1));
    const release = await makeRelease('vibration', model.version, demoModelBytes(1), trust.release.signer);
    const releases = new ReleaseServiceClient(cp.addresses.grpc, credentials.createInsecure());
    const enrollment = new EnrollmentServiceClient(cp.addresses.grpc, credentials.createInsecure());
    try {
      const admin = bearer(readFileSync(cp.adminTokenFile, 'utf8').trim());
      await rpc<Release>((cb) => releases.publishRelease({ name: 'vibration', version: model.version, envelope: release.envelope }, admin, cb));
      const token = await api.createEnrollmentToken('edge-trust-1');
      await rpc<EnrollResponse>((cb) =>
        enrollment.enroll(EnrollRequest.fromPartial({ token, deviceId: 'edge-trust-1', firmwareProfile: 'generic-x86_64-cpu', agentVersion: 'test' }), cb),
      );
      await api.deploy('vibration');
    } finally {
      releases.close();
      enrollment.close();
    }
    // Before the rotation only the coming expiry is worth a warning.
    expect((await healthz()).warnings.map((w) => w.code)).toEqual(['TRUST_ROOT_EXPIRING']);
    api.close();
    await cp.shutdown();

    const next = newKey();
    const v2 = trust.metadata(2, { releaseKeys: { [next.keyId]: next.publicKey }, revokedKeys: [trust.release.keyId] });
    writeFileSync(
      join(rootDir, 'root.v2.json'),
      signRootBytes(
        v2,
        trust.rootKeys.slice(0, 2).map((k) => k.signer),
      ),
    );
    cp = await start();
    api = fleetApi(cp.addresses.grpc, cp.adminTokenFile);
  });

  afterAll(async () => {
    api?.close();
    await cp?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('access - /healthz warns that the root expires within the window and that a deployed release is signed by a revoked key', async () => {
    const { warnings } = await healthz();
    expect(warnings.map((w) => w.code).sort()).toEqual(['TRUST_KEY_REVOKED', 'TRUST_ROOT_EXPIRING']);
  });

  it('access - deploying a release signed by a revoked key is refused with RELEASE_NOT_DEPLOYABLE', async () => {
    expect(await refusalOf(api.deploy('vibration'))).toMatchObject({ code: 'RELEASE_NOT_DEPLOYABLE' });
  });

  it('access - a rollout of a release signed by a revoked key does not start (RELEASE_NOT_DEPLOYABLE)', async () => {
    const rollouts = rolloutApi(cp.addresses.grpc, cp.adminTokenFile);
    try {
      expect(await refusalOf(rollouts.start({ model: 'vibration', version: 1 }))).toMatchObject({ code: 'RELEASE_NOT_DEPLOYABLE' });
    } finally {
      rollouts.close();
    }
  });
});

describe('root expiry warnings', () => {
  const root = { version: 3, expiresAtMs: 100 * DAY_MS };

  it('access - a root expiring within the window warns, an expired one says devices refuse releases, a distant expiry is quiet', () => {
    expect(rootExpiryWarning(root, 99 * DAY_MS, 30 * DAY_MS)?.code).toBe('TRUST_ROOT_EXPIRING');
    expect(rootExpiryWarning(root, 100 * DAY_MS, 30 * DAY_MS)?.code).toBe('TRUST_METADATA_EXPIRED');
    expect(rootExpiryWarning(root, 69 * DAY_MS, 30 * DAY_MS)).toBeUndefined();
  });

  it('access - `driftline keys show` warns when the root expires within --warn-within', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'driftline-keys-show-'));
    const driftline = (...args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(process.execPath, [BIN, ...args], (error, stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stdout, stderr })),
      );
    try {
      expect((await driftline('keys', 'init', '--dir', join(dir, 'keys'), '--root-keys', '1', '--threshold', '1', '--expires', '10d')).code).toBe(0);
      const soon = await driftline('--json', 'keys', 'show', '--dir', join(dir, 'keys'));
      expect(soon.code).toBe(0);
      expect((JSON.parse(soon.stdout) as { warnings: Array<{ code: string }> }).warnings.map((w) => w.code)).toEqual(['TRUST_ROOT_EXPIRING']);
      expect(soon.stderr).toContain('warning [TRUST_ROOT_EXPIRING]');
      const quiet = await driftline('--json', 'keys', 'show', '--dir', join(dir, 'keys'), '--warn-within', '5d');
      expect((JSON.parse(quiet.stdout) as { warnings: unknown[] }).warnings).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 240_000);
});
