import type { RequestQueueStats } from './inference/batcher.js';
import type { ActiveModelInfo } from './inference/engine.js';

/** What the health document (GET /healthz) is made of, read when it is asked for. */
export interface AgentHealthFacts {
  state: 'starting' | 'running' | 'stopping' | 'stopped';
  deviceId: string;
  boot: number;
  uplinkConnected: boolean;
  bufferDepth: number;
  bufferBytes: number;
  bufferBudgetBytes: number;
  uploadBytesPerSecond: number;
  recordsEnqueued: number;
  recordsDropped: number;
  recordsAcknowledged: number;
  activeModel: ActiveModelInfo | undefined;
  firmwareProfile: string;
  warnings: readonly string[];
  inferenceQueue: RequestQueueStats;
}

/** The agent's health: healthy while running; the details are what an operator looks at first. */
export function agentHealth(facts: AgentHealthFacts): { ok: boolean; details: Record<string, unknown> } {
  // Spelled out, in the order operators have read it in.
  const f = facts;
  return {
    ok: f.state === 'running',
    details: {
      state: f.state,
      deviceId: f.deviceId,
      boot: f.boot,
      uplinkConnected: f.uplinkConnected,
      bufferDepth: f.bufferDepth,
      bufferBytes: f.bufferBytes,
      bufferBudgetBytes: f.bufferBudgetBytes,
      uploadBytesPerSecond: f.uploadBytesPerSecond,
      recordsEnqueued: f.recordsEnqueued,
      recordsDropped: f.recordsDropped,
      recordsAcknowledged: f.recordsAcknowledged,
      activeModel: f.activeModel ?? null,
      firmwareProfile: f.firmwareProfile,
      warnings: f.warnings,
      inferenceQueue: f.inferenceQueue,
    },
  };
}
