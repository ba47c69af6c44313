import type { Logger } from '../common/logger.js';
import { ReportedState } from '../common/proto/driftline/v1/device_link.js';
import { DRIFTLINE_VERSION } from '../common/version.js';
import type { Uplink } from './uplink/ports.js';

/** One model of the set, as its slot and the engine know it. */
export interface ReportedModelFacts {
  name: string;
  version: number;
  sha256: string;
  state: 'serving' | 'loading' | 'refused';
  /** Serving models: the provider that loaded it, those that failed before it, and the memory it took. */
  provider?: string;
  fallbacks?: ReadonlyArray<{ provider: string; reason: string }>;
  memoryBytes?: number;
  error?: { code: string; message: string } | undefined;
}

/** Every model of the desired set as the reported state lists it: what its slot says, with the engine's facts for those serving. */
export function reportedModels(
  entries: ReadonlyArray<{ name: string; version: number; sha256: string; state: ReportedModelFacts['state']; error?: ReportedModelFacts['error'] }>,
  served: (name: string) => { provider: string; fallbacks: ReadonlyArray<{ provider: string; reason: string }>; memoryBytes: number } | undefined,
): ReportedModelFacts[] {
  return entries.map((entry) => {
    const info = entry.state === 'serving' ? served(entry.name) : undefined;
    return {
      name: entry.name,
      version: entry.version,
      sha256: entry.sha256,
      state: entry.state,
      ...(info ? { provider: info.provider, fallbacks: info.fallbacks, memoryBytes: info.memoryBytes } : {}),
      error: entry.error,
    };
  });
}

/** What the reported state is made of, read from the agent's parts at the moment of the report. */
export interface ReportedStateFacts {
  firmwareProfile: string;
  activeModel: { name: string; version: number; sha256: string; provider: string } | undefined;
  /** Every model of the desired set (absent: the active model alone, as an agent of one model reported it). */
  models?: readonly ReportedModelFacts[];
  bufferDepth: number;
  boot: number;
  startedAtMs: number;
  nowMs: number;
  desiredRevision: number;
  lastError: { code: string; message: string } | undefined;
  /** Refused by the buffer plus dropped by its policy (all boots). */
  droppedRecords: number;
  warnings: readonly string[];
}

/** The state a device reports (heartbeat, after a change, on request). */
export function reportedState(facts: ReportedStateFacts): ReportedState {
  // The first serving model of the set (old control planes read this one field).
  const firstServing = facts.models?.find((m) => m.state === 'serving');
  const active = facts.models ? (firstServing ? { ...firstServing, provider: firstServing.provider ?? '' } : undefined) : facts.activeModel;
  return {
    agentVersion: DRIFTLINE_VERSION,
    firmwareProfile: facts.firmwareProfile,
    activeModel: active
      ? {
          name: active.name,
          version: active.version,
          sha256: active.sha256,
          provider: active.provider,
          fallbacks: [],
          lastErrorCode: '',
          lastError: '',
          memoryBytes: 0,
          state: 'serving',
        }
      : undefined,
    activeModels: (facts.models ?? []).map((m) => ({
      name: m.name,
      version: m.version,
      sha256: m.sha256,
      provider: m.provider ?? '',
      fallbacks: (m.fallbacks ?? []).map((f) => f.provider),
      lastErrorCode: m.error?.code ?? '',
      lastError: m.error?.message ?? '',
      memoryBytes: m.memoryBytes ?? 0,
      state: m.state,
    })),
    bufferDepth: facts.bufferDepth,
    boot: facts.boot,
    uptimeS: Math.round((facts.nowMs - facts.startedAtMs) / 1000),
    desiredRevision: facts.desiredRevision,
    lastErrorCode: facts.lastError?.code ?? '',
    lastError: facts.lastError?.message ?? '',
    droppedRecords: facts.droppedRecords,
    reportedAtMs: facts.nowMs,
    warnings: [...facts.warnings],
  };
}

/** Sends the reported state when the uplink is connected; a report that does not go is not retried (the next one will). */
export function stateReporter(uplink: Pick<Uplink, 'connected' | 'publish'>, facts: () => ReportedStateFacts, logger: Logger): () => Promise<void> {
  return async () => {
    if (!uplink.connected) return;
    await uplink
      .publish('state', ReportedState.encode(reportedState(facts())).finish())
      .catch((err: unknown) => logger.debug({ err }, 'state report not sent'));
  };
}
