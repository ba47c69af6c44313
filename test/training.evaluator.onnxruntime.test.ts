import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildDemoModel } from '../demo/model/demo-model.js';
import { generateVibrationData } from '../demo/model/vibration-data.js';
import { OnnxRuntimeEvaluator } from '../control-plane/training/onnxruntime/onnx-evaluator.js';

/**
 * The evaluation gate's measurements with the real onnxruntime-node: the candidate and its parent
 * on a split of drifted vibration rows, with accuracy from their probabilities and the one-row
 * latency a device would see per request, measured on this host.
 */
describe('onnxruntime evaluator', () => {
  const dir = mkdtempSync(join(tmpdir(), 'driftline-evaluator-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('measures both models on each split, latency included, and a model judged against itself ties', async () => {
    const parent = buildDemoModel({ seed: 1 }).bytes;
    const candidate = buildDemoModel({ seed: 2 }).bytes;
    const path = join(dir, 'candidate.onnx');
    writeFileSync(path, candidate);
    const data = generateVibrationData({ rows: 300, seed: 5, drift: { severity: 1 } });
    const split = { x: data.x, rowShape: [8], labels: data.y };
    const evaluator = new OnnxRuntimeEvaluator({
      data: { splits: async () => ({ test: split, regression: split }), classes: async () => 4 },
      parents: { bytes: async () => parent },
    });
    const { splits } = await evaluator.evaluate({ jobId: 'tj_1', model: 'vibration', parentVersion: 1, datasetId: 'd', candidate: { sha256: '', path } });
    expect(splits.map((s) => s.split)).toEqual(['test', 'regression']);
    for (const s of splits) {
      for (const m of [s.candidate, s.parent]) {
        expect(m.rows).toBe(300);
        expect(m.accuracy).toBeGreaterThan(0.5);
        expect(m.latencyP50Ms).toBeGreaterThan(0);
        expect(m.latencyP95Ms!).toBeGreaterThanOrEqual(m.latencyP50Ms!);
      }
    }
    // Same model as parent and candidate: the same answers, so the same quality figures.
    const self = new OnnxRuntimeEvaluator({
      data: { splits: async () => ({ test: split }), classes: async () => 4 },
      parents: { bytes: async () => candidate },
    });
    const [same] = (await self.evaluate({ jobId: 'tj_2', model: 'vibration', parentVersion: 1, datasetId: 'd', candidate: { sha256: '', path } })).splits;
    expect(same!.candidate.accuracy).toBe(same!.parent.accuracy);
    expect(same!.candidate.logLoss).toBe(same!.parent.logLoss);
  });
});
