import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DriftMonitor } from '../agent/drift/monitor.js';
import { InferenceEngine, type InferenceRecord } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { argmax, probabilitiesOutput, topClasses } from '../common/classification.js';
import { ManualClock } from '../common/clock.js';
import { buildReference } from '../common/drift/reference.js';
import { silentLogger } from '../common/logger.js';
import type { DriftSketch } from '../common/proto/driftline/v1/drift.js';
import { modelFolder, twoScoreOutputsModelBytes, type ModelFile, type ModelFolder } from './fixtures/models.js';

const float = (name: string, shape: Array<number | string> = [-1, 4]) => ({ name, float: true, shape });

describe('classification', () => {
  it('takes the output the model names, else the first float rank-2 output that says "prob", else the first float rank-2 output', () => {
    const outputs = [{ name: 'label', float: false, shape: [-1] }, float('logits'), float('class_probs'), float('other')];
    expect(probabilitiesOutput(outputs, 'other')).toBe('other');
    expect(probabilitiesOutput(outputs)).toBe('class_probs');
    expect(probabilitiesOutput(outputs, 'missing')).toBe('class_probs');
    expect(probabilitiesOutput([float('logits'), float('other')])).toBe('logits');
    // A one-column score says nothing about classes; an integer label is no probability.
    expect(probabilitiesOutput([float('probability', [-1, 1]), { name: 'label', float: false, shape: [-1, 3] }])).toBeUndefined();
  });

  it('argmax takes the first of equal values, row by row', () => {
    expect(argmax([0.2, 0.5, 0.5], 0, 3)).toBe(1);
    expect(topClasses([0.1, 0.9, 0.7, 0.3], 2, 2)).toEqual([
      { topClass: 1, confidence: 0.9 },
      { topClass: 0, confidence: 0.7 },
    ]);
  });

  describe('a model with two float rank-2 outputs', () => {
    let folder: ModelFolder;
    let model: ModelFile;
    beforeAll(async () => {
      folder = await modelFolder();
      model = await folder.write('two.onnx', twoScoreOutputsModelBytes());
    });
    afterAll(() => folder.remove());

    it('the engine and the drift monitor take the class from the same output', async () => {
      const records: InferenceRecord[] = [];
      const clock = new ManualClock();
      const engine = await InferenceEngine.create({
        runtime: createOnnxRuntime({ logger: silentLogger() }),
        providers: ['cpu'],
        logger: silentLogger(),
        clock,
        observer: { onInference: (r) => void records.push(r) },
      });
      await engine.load({ name: 'two', version: 1, ...model });
      const sketches: DriftSketch[] = [];
      const drift = new DriftMonitor({ drift: (s) => void sketches.push(s), event: () => {} }, clock, silentLogger());
      drift.setModel(
        'two',
        1,
        buildReference(
          [
            [0, 0, 0],
            [1, 1, 1],
          ],
          { featureNames: ['a', 'b', 'c'], classNames: ['a', 'b', 'c'] },
        ),
      );
      const inputs = [{ name: 'x', datatype: 'FP32', shape: [1, 3], data: [0.1, 2, 0.5] }];
      const result = await engine.infer('two', inputs);
      drift.observe(result.model, result.version, inputs, result.outputs, 1, true, result.probabilities);
      drift.flush();
      // softmax(x) peaks at class 1; the negated scores would say class 0.
      expect(result).toMatchObject({ topClass: 1, probabilities: 'probabilities' });
      expect(records[0]!.topClass).toBe(1);
      expect(sketches[0]!.classCounts).toEqual([0, 1, 0]);
      await engine.shutdown();
    });
  });
});
