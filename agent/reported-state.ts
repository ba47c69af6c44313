import type { Logger } from '../common/logger.js';
import { ReportedState } from '../common/proto/driftline/v1/device_link.js';
import { DRIFTLINE_VERSION } from '../common/version.js';
import type { Uplink } from './uplink/ports.js';

/** What the reported state is made of, read from the agent's parts at the moment of the report. */
export interface ReportedStateFacts {
  firmwareProfile: string;
  activeModel: { name: string; version: number; sha256: string; provider: string } | undefined;
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
  const active = facts.activeModel;
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
    activeModels: [],
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
