import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { buildMaintenanceModel, expectedUrgency, URGENCY_CLASSES } from '../demo/model/maintenance-model.js';
import { generateVibrationData, VIBRATION_CLASSES, VIBRATION_FEATURES } from '../demo/model/vibration-data.js';

describe('demo maintenance model (the pipeline scenario`s second stage)', () => {
  let urgency: ort.InferenceSession;
  let faults: ort.InferenceSession;

  beforeAll(async () => {
    urgency = await ort.InferenceSession.create(Buffer.from(buildMaintenanceModel()));
    faults = await ort.InferenceSession.create(Buffer.from(buildDemoModel().bytes));
  });
  afterAll(async () => {
    await urgency.release();
    await faults.release();
  });

  it('gives each confident fault verdict its known urgency', async () => {
    const k = VIBRATION_CLASSES.length;
    const oneHot = VIBRATION_CLASSES.flatMap((_, c) => VIBRATION_CLASSES.map((__, j) => (j === c ? 1 : 0)));
    const out = await urgency.run({ fault_probabilities: new ort.Tensor('float32', Float32Array.from(oneHot), [k, k]) });
    expect(Array.from(out.urgency!.data as BigInt64Array, Number)).toEqual(VIBRATION_CLASSES.map((_, c) => expectedUrgency(c)));
    expect(URGENCY_CLASSES[expectedUrgency(VIBRATION_CLASSES.indexOf('bearing_fault'))]).toBe('stop_now');
  });

  it('chains onto the fault classifier: its probabilities in, a distribution over urgencies out', async () => {
    const rows = generateVibrationData({ rows: 500, seed: 99 });
    const first = await faults.run({ features: new ort.Tensor('float32', rows.x, [rows.y.length, VIBRATION_FEATURES.length]) });
    const second = await urgency.run({ fault_probabilities: first.probabilities! });
    const p = second.urgency_probabilities!.data as Float32Array;
    expect(second.urgency_probabilities!.dims).toEqual([rows.y.length, URGENCY_CLASSES.length]);
    for (let r = 0; r < rows.y.length; r++) expect(p[r * 3]! + p[r * 3 + 1]! + p[r * 3 + 2]!).toBeCloseTo(1, 5);
    // Where the classifier is right, the urgency is the one its true class calls for, nearly always.
    const labels = first.label!.data as BigInt64Array;
    const urgencies = second.urgency!.data as BigInt64Array;
    const right = Array.from(labels).map((l, r) => Number(l) === rows.y[r]);
    const agreeing = right.filter((ok, r) => ok && Number(urgencies[r]) === expectedUrgency(rows.y[r]!)).length;
    expect(agreeing / right.filter(Boolean).length).toBeGreaterThan(0.95);
  });
});
