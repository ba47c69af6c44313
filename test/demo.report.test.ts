import { describe, expect, it } from 'vitest';
import type { TelemetrySummary } from '../common/proto/driftline/v1/telemetry.js';
import { buildReport, type AgentAccount, type DeviceOutcome } from '../demo/report.js';
import { DeviceTraffic, quantile } from '../demo/traffic.js';

const model = { name: 'vibration', version: 1, sha256: 'ab'.repeat(32), accuracy: 0.93 };

function device(
  id: string,
  traffic: { ok: number; failed?: number; correct?: number; lastError?: string },
  account: AgentAccount | undefined,
  lastHealth?: AgentAccount,
): DeviceOutcome {
  // Nothing is sent: the report only reads the counters.
  const t = new DeviceTraffic('http://127.0.0.1:9', { model: 'vibration', ratePerSecond: 1, seed: 1 });
  Object.assign(t, { failed: 0, correct: 0, ...traffic });
  return { id, traffic: t, account, lastHealth };
}

function summary(stored: Record<string, number>, duplicatesDropped = 0): TelemetrySummary {
  const devices = Object.entries(stored).map(([deviceId, records]) => ({
    deviceId,
    records,
    inferences: 0,
    inferenceErrors: 0,
    latencyMeanMs: 0,
    latencyMaxMs: 0,
    events: 0,
    lastRecordMs: 0,
    bufferDepth: 0,
    droppedRecords: 0,
    refusals: [],
  }));
  return { devices, recordsStored: Object.values(stored).reduce((a, b) => a + b, 0), duplicatesDropped, rejectedBatches: 0 };
}

const clean = (enqueued: number): AgentAccount => ({ enqueued, acknowledged: enqueued, buffered: 0, dropped: 0 });

describe('demo report', () => {
  it('is ok when every enqueued record is stored and every inference answered', () => {
    const report = buildReport({
      devices: [device('d1', { ok: 10, correct: 9 }, clean(12)), device('d2', { ok: 10, correct: 10 }, clean(12))],
      summary: summary({ d1: 12, d2: 12 }, 3),
      model,
      durationS: 2.04,
      ratePerDevice: 5,
      problems: [],
    });
    expect(report).toMatchObject({
      ok: true,
      devices: 2,
      inferences: 20,
      failedInferences: 0,
      telemetryStored: 24,
      lost: 0,
      duplicatesDropped: 3,
      durationS: 2,
      liveAccuracy: 0.95,
    });
    expect(report.problems).toEqual([]);
  });

  it('counts what an agent enqueued but the store lacks as lost, per device, never below zero', () => {
    const report = buildReport({
      devices: [device('d1', { ok: 5 }, clean(10)), device('d2', { ok: 5 }, clean(4))],
      // d2 has more stored than its final line says (records from before a restart): that hides nothing of d1's loss.
      summary: summary({ d1: 7, d2: 6 }),
      model,
      durationS: 1,
      ratePerDevice: 5,
      problems: [],
    });
    expect(report.lost).toBe(3);
    expect(report.perDevice.map((d) => d.lost)).toEqual([3, 0]);
    expect(report.ok).toBe(false);
  });

  it('fails on failed inferences and on an agent that did not stop cleanly, falling back to its last health figures', () => {
    const report = buildReport({
      devices: [
        device('d1', { ok: 5, failed: 2, lastError: 'HTTP 500 INFERENCE_FAILED' }, clean(5)),
        device('d2', { ok: 5 }, undefined, { enqueued: 8, acknowledged: 6, buffered: 2, dropped: 0 }),
      ],
      summary: summary({ d1: 5, d2: 6 }),
      model,
      durationS: 1,
      ratePerDevice: 5,
      problems: ['d2 exited unexpectedly'],
    });
    expect(report).toMatchObject({ ok: false, failedInferences: 2, lost: 2, buffered: 2 });
    expect(report.perDevice[1]).toMatchObject({ stoppedCleanly: false, enqueued: 8 });
    expect(report.problems).toHaveLength(4);
    expect(report.problems.join('\n')).toContain('HTTP 500 INFERENCE_FAILED');
  });

  it('takes nearest-rank quantiles', () => {
    expect(quantile([], 0.5)).toBeUndefined();
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2);
    expect(quantile([1, 2, 3, 4], 0.95)).toBe(4);
    expect(quantile([7], 0)).toBe(7);
  });
});
