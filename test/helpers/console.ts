import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../common/clock.js';
import { silentLogger } from '../../common/logger.js';
import { sha256Hex } from '../../common/hashing.js';
import { OperatorTokenStore } from '../../control-plane/fleet/operator-tokens.js';
import { startControlPlane, type ControlPlane } from '../../control-plane/server.js';
import { openDatabase } from '../../control-plane/store/sqlite/database.js';
import { SqliteFleetRepository } from '../../control-plane/store/sqlite/fleet-repository.js';
import { SqliteOperatorTokenRepository } from '../../control-plane/store/sqlite/operator-token-repository.js';
import type { ControlPlaneConfigInput } from '../../control-plane/config.js';

export const CHROMIUM = '/usr/bin/chromium';
export const hasChromium = existsSync(CHROMIUM);

/** The flags that keep Debian's chromium off the network and quiet in CI. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-default-apps',
  '--disable-sync',
  '--metrics-recording-only',
  '--no-first-run',
  '--disable-dev-shm-usage',
  '--disable-gpu',
];

export interface SeededDevice {
  id: string;
  labels: Record<string, string>;
  /** Seen at this time (0: never). */
  lastSeenMs?: number;
  agentVersion?: string;
}

export interface ConsoleRig {
  dir: string;
  cp: ControlPlane;
  /** http://127.0.0.1:port */
  base: string;
  tokens: { viewer: string; operator: string; admin: string; worker: string };
  stop(): Promise<void>;
}

/**
 * A control plane whose store was seeded before it started, straight through the SQLite
 * repositories (fast: 10,000 devices in one transaction), with a viewer and an operator token.
 */
export async function startConsoleRig(
  options: { clock?: Clock; devices?: SeededDevice[]; config?: Partial<ControlPlaneConfigInput> } = {},
): Promise<ConsoleRig> {
  const dir = await mkdtemp(join(tmpdir(), 'driftline-console-'));
  const dataDir = join(dir, 'cp');
  const db = openDatabase(join(dataDir, 'control-plane.db'));
  const tokenStore = new OperatorTokenStore(new SqliteOperatorTokenRepository(db));
  const now = options.clock?.now() ?? Date.now();
  const viewer = (await tokenStore.create('console-viewer', 'viewer', now)).secret;
  const operator = (await tokenStore.create('console-operator', 'operator', now)).secret;
  const worker = (await tokenStore.create('console-worker', 'worker', now)).secret;
  const fleet = new SqliteFleetRepository(db);
  const devices = options.devices ?? [];
  await fleet.transaction(async (tx) => {
    for (const d of devices) {
      await tx.saveEnrolledDevice({ id: d.id, labels: d.labels, secretHash: sha256Hex(`secret-${d.id}`), enrolledAtMs: now });
      if (d.agentVersion)
        await tx.saveReported(
          d.id,
          {
            agentVersion: d.agentVersion,
            firmwareProfile: d.labels.profile ?? '',
            activeModel: undefined,
            activeModels: [],
            bufferDepth: 0,
            boot: 1,
            uptimeS: 60,
            desiredRevision: 0,
            lastErrorCode: '',
            lastError: '',
            droppedRecords: 0,
            reportedAtMs: d.lastSeenMs ?? now,
            warnings: [],
          },
          d.lastSeenMs ?? now,
        );
      else if (d.lastSeenMs) await tx.recordSeen(d.id, d.lastSeenMs);
    }
  });
  db.close();
  const cp = await startControlPlane(
    { dataDir, grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 }, rollout: { tickInterval: '1h', watchInterval: '100ms' }, ...options.config },
    { logger: silentLogger(), ...(options.clock ? { clock: options.clock } : {}) },
  );
  const { readFileSync } = await import('node:fs');
  const admin = readFileSync(cp.adminTokenFile, 'utf8').trim();
  return {
    dir,
    cp,
    base: cp.addresses.http,
    tokens: { viewer, operator, admin, worker },
    async stop() {
      await cp.shutdown();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP request with exactly the headers given (no cookie jar, no redirects followed). */
export function http(
  base: string,
  path: string,
  options: { method?: string; headers?: Record<string, string>; form?: Record<string, string> } = {},
): Promise<RawResponse> {
  const body = options.form ? new URLSearchParams(options.form).toString() : undefined;
  return new Promise((resolve, reject) => {
    const req = request(
      new URL(path, base),
      {
        method: options.method ?? (body !== undefined ? 'POST' : 'GET'),
        headers: {
          ...(body !== undefined ? { 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': String(Buffer.byteLength(body)) } : {}),
          ...options.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Signs in over HTTP; the session cookie ("name=value") and the CSRF token of the fleet page's sign-out form. */
export async function signIn(base: string, token: string): Promise<{ cookie: string; csrf: string }> {
  const res = await http(base, '/ui/login', { form: { token }, headers: { Origin: base } });
  if (res.status !== 303) throw new Error(`sign-in answered ${res.status}`);
  const setCookie = ([] as string[]).concat(res.headers['set-cookie'] ?? [])[0] ?? '';
  const cookie = setCookie.split(';')[0]!;
  const fleet = await http(base, '/ui/fleet', { headers: { Cookie: cookie } });
  const csrf = /name="csrf" value="([^"]+)"/.exec(fleet.body)?.[1];
  if (!csrf) throw new Error('no CSRF token on the fleet page');
  return { cookie, csrf };
}
