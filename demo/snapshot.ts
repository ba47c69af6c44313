import type { Device } from '../common/proto/driftline/v1/fleet.js';
import type { TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { summarizeDrift, type DemoDriftReport } from './drift-scenario.js';
import type { DemoFleet } from './fleet.js';
import type { DeviceTraffic } from './traffic.js';

const HEALTH_TIMEOUT_MS = 2_000;

/** What an agent's GET /healthz reports (the fields the demo reads). */
export interface AgentHealth {
  state: string;
  uplinkConnected: boolean;
  bufferDepth: number;
  recordsEnqueued: number;
  recordsAcknowledged: number;
  recordsDropped: number;
  activeModel: { name: string; version: number; provider: string } | null;
}

export interface DemoDevice {
  id: string;
  localApiUrl: string;
  traffic: DeviceTraffic;
}

export interface DeviceStatusRow {
  id: string;
  /** From the control plane; undefined when it could not be asked. */
  online: boolean | undefined;
  health: AgentHealth | undefined;
  sent: number;
  failed: number;
  correct: number;
  p50Ms: number | undefined;
  /** Records the control plane has stored for this device. */
  stored: number | undefined;
}

export interface FleetSnapshot {
  elapsedS: number;
  rows: DeviceStatusRow[];
  recordsStored: number | undefined;
  duplicatesDropped: number | undefined;
  /** Drift per cohort from the DriftService, when the snapshot was asked for a model's; undefined before any sketch or when it could not be asked. */
  drift?: DemoDriftReport | undefined;
}

/** Reads one agent's health; undefined when it does not answer (stopping, busy, gone). */
export async function readAgentHealth(localApiUrl: string): Promise<AgentHealth | undefined> {
  try {
    const response = await fetch(`${localApiUrl}/healthz`, { signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS) });
    const body = (await response.json()) as { details?: AgentHealth };
    return body.details;
  } catch {
    return undefined;
  }
}

/**
 * One look at the whole loop: what each application sent, what each agent holds, what the
 * control plane knows and has stored. Parts that do not answer show as unknown rather than
 * stopping the view.
 */
export async function collectSnapshot(fleet: DemoFleet, devices: readonly DemoDevice[], elapsedS: number, driftModel?: string): Promise<FleetSnapshot> {
  const [listed, summary, health, drift] = await Promise.all([
    fleet.listDevices().catch((): Device[] | undefined => undefined),
    fleet.summary().catch((): TelemetrySummary | undefined => undefined),
    Promise.all(devices.map((d) => readAgentHealth(d.localApiUrl))),
    driftModel === undefined
      ? undefined
      : fleet.driftStatus(driftModel).then(
          (s) => summarizeDrift(s),
          () => undefined,
        ),
  ]);
  const online = new Map(listed?.map((d) => [d.id, d.online]));
  const stored = new Map(summary?.devices.map((d) => [d.deviceId, d.records]));
  return {
    elapsedS,
    rows: devices.map((d, i) => ({
      id: d.id,
      online: listed ? (online.get(d.id) ?? false) : undefined,
      health: health[i],
      sent: d.traffic.ok,
      failed: d.traffic.failed,
      correct: d.traffic.correct,
      p50Ms: d.traffic.recentP50(),
      stored: summary ? (stored.get(d.id) ?? 0) : undefined,
    })),
    recordsStored: summary?.recordsStored,
    duplicatesDropped: summary?.duplicatesDropped,
    ...(driftModel === undefined ? {} : { drift }),
  };
}
