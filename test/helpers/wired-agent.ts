import { join } from 'node:path';
import { startAgent, type AgentHandle } from '../../agent/agent.js';
import { loadAgentConfig } from '../../agent/config.js';
import type { HostProbe } from '../../agent/profiles/detect.js';
import { silentLogger } from '../../common/logger.js';
import { startControlPlane, type ControlPlane } from '../../control-plane/server.js';
import { fleetApi, type FleetApi } from './fleet-api.js';

/** A cron expression that never fires in a test's lifetime (1 January, midnight). */
export const NEVER = '0 0 1 1 *';

/** A control plane in `<dir>/<name>` on OS-chosen ports, and an operator client with its admin token. */
export async function startTestControlPlane(dir: string, options: { name?: string } = {}): Promise<{ cp: ControlPlane; api: FleetApi }> {
  const cp = await startControlPlane({ dataDir: join(dir, options.name ?? 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } }, { logger: silentLogger() });
  return { cp, api: fleetApi(cp.addresses.grpc, cp.adminTokenFile) };
}

/**
 * An in-process agent enrolled with a fresh one-time token. Its local API listens on a free
 * port, and periodic system metrics and drift windows are off unless `flags` turn them on,
 * so the records a test counts are the ones it caused. `flags` go over these defaults one
 * level deep (flags.localApi, flags.schedule... keep the defaults they do not name).
 */
export async function startEnrolledAgent(
  cp: ControlPlane,
  api: FleetApi,
  deviceId: string,
  dataDir: string,
  flags: Record<string, unknown> = {},
  deps: { hostProbe?: HostProbe } = {},
): Promise<AgentHandle> {
  const defaults: Record<string, unknown> = {
    deviceId,
    enrollToken: await api.createEnrollmentToken(deviceId),
    server: cp.addresses.grpc,
    dataDir,
    localApi: { port: 0 },
    schedule: { system: NEVER, driftWindow: NEVER },
  };
  const merged: Record<string, unknown> = { ...defaults };
  for (const [key, value] of Object.entries(flags)) {
    const base = defaults[key];
    merged[key] = isObject(base) && isObject(value) ? { ...base, ...value } : value;
  }
  return startAgent(loadAgentConfig({ env: {}, flags: merged }), { logger: silentLogger(), ...deps });
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
