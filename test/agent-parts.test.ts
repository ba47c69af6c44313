import { describe, expect, it } from 'vitest';
import { DropReporter } from '../agent/buffer/drop-report.js';
import type { AgentStateStore, DropCounts } from '../agent/buffer/ports.js';
import { downlinkDispatcher } from '../agent/downlink.js';
import { DriftReferences } from '../agent/drift/references.js';
import { agentHealth } from '../agent/health.js';
import { agentPaths } from '../agent/paths.js';
import { reportedState, stateReporter } from '../agent/reported-state.js';
import { buildReference } from '../common/drift/reference.js';
import { silentLogger } from '../common/logger.js';
import { Command, DesiredState, ReportedState } from '../common/proto/driftline/v1/device_link.js';

const memoryState = (): AgentStateStore & { writes: number } => {
  const values = new Map<string, string>();
  return {
    writes: 0,
    getState: (key) => values.get(key),
    setState(key, value) {
      this.writes++;
      values.set(key, value);
    },
  };
};

const drops = (budget: number): DropCounts => ({ 1: { quota: 0, budget: 0, ttl: 0 }, 2: { quota: 0, budget, ttl: 0 } });

describe('agent parts', () => {
  it('drift references - kept per model version, parsed once, and an invalid one turns drift off for that version only', () => {
    const state = memoryState();
    const references = new DriftReferences(state, silentLogger());
    const reference = buildReference([[1], [2], [3]], { featureNames: ['x'], classNames: ['a', 'b'] });
    references.remember('vibration', 1, JSON.stringify(reference));
    references.remember('vibration', 2, '{not json');
    expect(references.forModel('vibration', 1)).toEqual(reference);
    expect(references.forModel('vibration', 1)).toBe(references.forModel('vibration', 1));
    expect(references.forModel('vibration', 2)).toBeUndefined();
    expect(references.forModel('vibration', 3)).toBeUndefined();
    // Across a restart: a new cache over the same state finds it again.
    expect(new DriftReferences(state, silentLogger()).forModel('vibration', 1)).toEqual(reference);
  });

  it('drop report - reports changed counts once, and not the drops its own report causes', async () => {
    let current = drops(0);
    const reports: DropCounts[] = [];
    let recorded: () => void = () => {};
    const reporter = new DropReporter({ dropped: () => current }, (d) => {
      reports.push(d);
      return new Promise<void>((resolve) => (recorded = resolve));
    });
    reporter.check();
    expect(reports).toEqual([]);
    current = drops(5);
    reporter.check();
    // The report's record pushed one more out before it was recorded.
    current = drops(6);
    recorded();
    await Promise.resolve();
    await Promise.resolve();
    reporter.check();
    expect(reports).toEqual([drops(5)]);
    current = drops(9);
    reporter.check();
    expect(reports).toEqual([drops(5), drops(9)]);
  });

  it('reported state - the uptime in whole seconds, the last error by code, and nothing sent while offline', async () => {
    const facts = {
      firmwareProfile: 'generic-x86',
      activeModel: { name: 'vibration', version: 3, sha256: 'ab', provider: 'cpu' },
      bufferDepth: 12,
      boot: 4,
      startedAtMs: 10_000,
      nowMs: 71_600,
      desiredRevision: 9,
      lastError: { code: 'MODEL_INVALID', message: 'bad model' },
      droppedRecords: 2,
      warnings: ['slow disk'],
    };
    expect(reportedState(facts)).toMatchObject({
      uptimeS: 62,
      lastErrorCode: 'MODEL_INVALID',
      lastError: 'bad model',
      reportedAtMs: 71_600,
      activeModel: { name: 'vibration', version: 3 },
    });
    const sent: ReportedState[] = [];
    const uplink = { connected: false, publish: async (_: string, bytes: Uint8Array) => void sent.push(ReportedState.decode(bytes)) };
    const report = stateReporter(uplink, () => facts, silentLogger());
    await report();
    expect(sent).toEqual([]);
    uplink.connected = true;
    await report();
    expect(sent.map((s) => s.bufferDepth)).toEqual([12]);
  });

  it('downlink - a desired state is decoded for the model manager, a malformed one and a failing command are only logged', async () => {
    const desired: DesiredState[] = [];
    const commands: Buffer[] = [];
    const dispatch = downlinkDispatcher({
      logger: silentLogger(),
      desired: (d) => void desired.push(d),
      command: async (payload) => {
        commands.push(payload);
        throw new Error('no such command');
      },
    });
    dispatch('desired', Buffer.from(DesiredState.encode(DesiredState.fromPartial({ revision: 5 })).finish()));
    dispatch('desired', Buffer.from([0xff, 0xff, 0xff]));
    dispatch('command', Buffer.from(Command.encode(Command.fromPartial({ id: 'c', kind: 'ping' })).finish()));
    dispatch('ack', Buffer.from([1]));
    await Promise.resolve();
    expect(desired.map((d) => d.revision)).toEqual([5]);
    expect(commands).toHaveLength(1);
  });

  it('health - healthy only while running, with no active model as null', () => {
    const facts = {
      state: 'stopping' as const,
      deviceId: 'edge-1',
      boot: 1,
      uplinkConnected: false,
      bufferDepth: 0,
      bufferBytes: 0,
      bufferBudgetBytes: 1024,
      uploadBytesPerSecond: 0,
      recordsEnqueued: 0,
      recordsDropped: 0,
      recordsAcknowledged: 0,
      activeModel: undefined,
      firmwareProfile: 'generic-x86',
      warnings: [],
      inferenceQueue: { queued: 0, running: 0, peakQueued: 0, runs: 0, largestBatch: 0 } as never,
    };
    expect(agentHealth(facts)).toMatchObject({ ok: false, details: { state: 'stopping', activeModel: null } });
    expect(agentHealth({ ...facts, state: 'running' }).ok).toBe(true);
  });

  it('paths - the data folder layout is decided in one place', () => {
    expect(agentPaths('/var/lib/driftline')).toEqual({
      dataDir: '/var/lib/driftline',
      identity: '/var/lib/driftline/identity.json',
      buffer: '/var/lib/driftline/buffer.db',
      models: '/var/lib/driftline/models',
      trustRoot: '/var/lib/driftline/trust/root.json',
      learner: '/var/lib/driftline/learner.db',
      learnerHeads: '/var/lib/driftline/learner-heads',
    });
  });
});
