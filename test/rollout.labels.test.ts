import { describe, expect, it } from 'vitest';
import { Outcome, Stream, type TelemetryRecord } from '../common/proto/driftline/v1/device_link.js';
import { evaluateGates, type CohortStats } from '../control-plane/rollout/gates.js';
import { parseGate } from '../control-plane/rollout/plan.js';
import { SqliteCohortMetrics } from '../control-plane/store/sqlite/cohort-metrics.js';
import { openDatabase } from '../control-plane/store/sqlite/database.js';
import { SqliteTelemetryRepository } from '../control-plane/store/sqlite/telemetry-repository.js';

const inference = (seq: number, version: number): TelemetryRecord => ({
  boot: 1,
  seq,
  timeMs: 0,
  stream: Stream.STREAM_INFERENCE,
  body: {
    $case: 'inference',
    value: {
      model: 'vibration',
      version,
      provider: 'cpu',
      latencyMs: 2,
      outcome: Outcome.OUTCOME_OK,
      topClass: 1,
      confidence: 0.9,
      errorCode: '',
      batchSize: 1,
    },
  },
});

const label = (seq: number, version: number, correct: boolean): TelemetryRecord => ({
  boot: 1,
  seq,
  timeMs: 0,
  stream: Stream.STREAM_INFERENCE,
  body: { $case: 'label', value: { model: 'vibration', version, requestId: `r-${seq}`, predicted: 1, label: correct ? 1 : 2, correct, inferenceTimeMs: 0 } },
});

/** `n` inference records then `n` labels, `correct` of them right, for one device and version, from seq `from` on. */
const labelled = (from: number, version: number, n: number, correct: number): TelemetryRecord[] => [
  ...Array.from({ length: n }, (_, i) => inference(from + i, version)),
  ...Array.from({ length: n }, (_, i) => label(from + n + i, version, i < correct)),
];

describe('rollout accuracy from device labels', () => {
  it('rollout - counts labels per version cohort within the window and judges the accuracy-delta gate on them', async () => {
    const db = openDatabase(':memory:');
    const telemetry = new SqliteTelemetryRepository(db);
    // Before the window: labels that must not count.
    await telemetry.commit('d-1', [label(1, 2, false), label(2, 2, false)], 500);
    // v2 (canary) on d-1 and d-2: 100 labels, 92 right. v1 (baseline) on d-3 and d-4: 100 labels, 93 right.
    await telemetry.commit('d-1', labelled(10, 2, 60, 55), 1000);
    await telemetry.commit('d-2', labelled(1, 2, 40, 37), 1000);
    await telemetry.commit('d-3', labelled(1, 1, 50, 47), 1000);
    await telemetry.commit('d-4', labelled(1, 1, 50, 46), 1000);
    const metrics = new SqliteCohortMetrics(db);
    const devices = ['d-1', 'd-2', 'd-3', 'd-4'];
    const canary = await metrics.cohort({ model: 'vibration', version: 2, deviceIds: devices, sinceMs: 1000 });
    const baseline = await metrics.cohort({ model: 'vibration', excludeVersion: 2, deviceIds: devices, sinceMs: 1000 });
    // Labels leave the inference figures as they were.
    expect(canary).toEqual({ devices: 4, devicesWithData: 2, inferences: 100, errors: 0, p95LatencyMs: 2, labeled: { total: 100, correct: 92 } });
    expect(baseline).toMatchObject({ inferences: 100, labeled: { total: 100, correct: 93 } });
    expect((await metrics.cohort({ model: 'vibration', version: 2, deviceIds: devices, sinceMs: 0 })).labeled).toEqual({ total: 102, correct: 92 });
    expect((await metrics.cohort({ model: 'other', deviceIds: devices, sinceMs: 0 })).labeled).toBeUndefined();

    const gate = [parseGate('accuracy-delta>=-0.02')];
    const judge = (c: CohortStats, b: CohortStats) =>
      evaluateGates(gate, { install: { attempted: 2, installed: 2, failed: 0, pending: 0 }, canary: c, baseline: b }, { minDevices: 2, minInferences: 50 });
    // 92% vs 93%: one point worse, within the gate.
    expect(judge(canary, baseline)).toMatchObject({ verdict: 'pass', results: [{ value: -0.01 }] });

    // Three more wrong canary labels: 92 of 103 (89.3%) vs 93%, past the gate.
    await telemetry.commit('d-2', [label(200, 2, false), label(201, 2, false), label(202, 2, false)], 2000);
    const worse = await metrics.cohort({ model: 'vibration', version: 2, deviceIds: devices, sinceMs: 1000 });
    expect(worse.labeled).toEqual({ total: 103, correct: 92 });
    expect(judge(worse, baseline).verdict).toBe('fail');

    // Too few labels on either side: no verdict either way.
    const few = await metrics.cohort({ model: 'vibration', version: 2, deviceIds: devices, sinceMs: 2000 });
    expect(few.labeled).toEqual({ total: 3, correct: 0 });
    expect(judge({ ...canary, labeled: few.labeled }, baseline).verdict).toBe('inconclusive');
    expect(judge({ ...canary, labeled: undefined }, baseline).verdict).toBe('inconclusive');
    db.close();
  });
});
