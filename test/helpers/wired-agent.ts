import { join } from 'node:path';
import { startAgent, type AgentHandle, type ScheduleName } from '../../agent/agent.js';
import { loadAgentConfig } from '../../agent/config.js';
import type { HostProbe } from '../../agent/profiles/detect.js';
import { ManualClock, type Clock } from '../../common/clock.js';
import { silentLogger } from '../../common/logger.js';
import { startControlPlane, type ControlPlane } from '../../control-plane/server.js';
import { fleetApi, type FleetApi } from './fleet-api.js';

/**
 * Schedules a test fires itself: on a ManualClock that moves only when the test advances it
 * (`await schedules.advanceAsync(30_000)` runs each of them that falls due), so the records a
 * test counts are the ones it caused. The others keep the agent's clock.
 */
export function byHand(names: readonly ScheduleName[]): { schedules: ManualClock; scheduleClocks: Partial<Record<ScheduleName, Clock>> } {
  const schedules = new ManualClock();
  return { schedules, scheduleClocks: Object.fromEntries(names.map((name) => [name, schedules])) };
}

/** An enrolled agent, and the clock of the schedules its test fires by hand. */
export type WiredAgent = AgentHandle & { readonly schedules: ManualClock };

/** A control plane in `<dir>/<name>` on OS-chosen ports, and an operator client with its admin token. */
export async function startTestControlPlane(dir: string, options: { name?: string } = {}): Promise<{ cp: ControlPlane; api: FleetApi }> {
  const cp = await startControlPlane(
    { dataDir: join(dir, options.name ?? 'cp'), grpc: { port: 0 }, http: { port: 0 }, mqtt: { port: 0 } },
    { logger: silentLogger() },
  );
  return { cp, api: fleetApi(cp.addresses.grpc, cp.adminTokenFile) };
}

/**
 * An in-process agent enrolled with a fresh one-time token. Its local API listens on a free
 * port, and periodic system metrics and drift windows (or the schedules `deps.byHand` names)
 * wait on the returned `schedules` ManualClock: they run only when the test advances it, so
 * the records a test counts are the ones it caused. `flags` go over these defaults one level
 * deep (flags.localApi, flags.schedule... keep the defaults they do not name).
 */
export async function startEnrolledAgent(
  cp: ControlPlane,
  api: FleetApi,
  deviceId: string,
  dataDir: string,
  flags: Record<string, unknown> = {},
  deps: { hostProbe?: HostProbe; byHand?: readonly ScheduleName[] } = {},
): Promise<WiredAgent> {
  const defaults: Record<string, unknown> = {
    deviceId,
    enrollToken: await api.createEnrollmentToken(deviceId),
    server: cp.addresses.grpc,
    dataDir,
    localApi: { port: 0 },
  };
  const merged: Record<string, unknown> = { ...defaults };
  for (const [key, value] of Object.entries(flags)) {
    const base = defaults[key];
    merged[key] = isObject(base) && isObject(value) ? { ...base, ...value } : value;
  }
  const { schedules, scheduleClocks } = byHand(deps.byHand ?? ['system', 'driftWindow']);
  const agent = await startAgent(loadAgentConfig({ env: {}, flags: merged }), { logger: silentLogger(), hostProbe: deps.hostProbe, scheduleClocks });
  return Object.assign(agent, { schedules });
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
