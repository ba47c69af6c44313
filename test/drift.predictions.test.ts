import { describe, expect, it } from 'vitest';
import { buildReference, parseReference, serializeReference, type DriftReference } from '../common/drift/reference.js';
import { SketchBuilder } from '../common/drift/sketch.js';
import { referenceWithModelPredictions } from '../cli/releases/prediction-reference.js';
import { evaluateDrift } from '../control-plane/drift/evaluate.js';
import { VIBRATION_CLASSES, VIBRATION_FEATURES, vibrationRowSampler } from '../demo/model/vibration-data.js';
import { demoModelBytes } from './fixtures/models.js';

const model = demoModelBytes(7);
const rowsOf = (seed: number, n: number, drift = false) => {
  const next = vibrationRowSampler(seed, { drift });
  return Array.from({ length: n }, next);
};

/** A window as a device sketches it: features from `featureRows`, the model's predictions and confidences on `outputRows`. */
async function windowOf(reference: DriftReference, featureRows: number[][], outputRows: number[][]) {
  const builder = new SketchBuilder(reference, 'vibration', 1, 0);
  builder.observeFeatures(featureRows.flat(), featureRows.length, featureRows[0]!.length);
  builder.observeRequest(1, true);
  const outputs = await referenceWithModelPredictions(model, reference, outputRows);
  return { ...builder.finish(1), classCounts: outputs.classes.counts, confidenceCounts: outputs.confidence.counts };
}

describe('prediction drift against predictions', () => {
  it('predictions - models push runs the model on the reference rows: classes and confidences are its predictions', async () => {
    const data = rowsOf(1, 3000);
    const labelled = buildReference(
      data.map((r) => r.features),
      { featureNames: VIBRATION_FEATURES, classNames: VIBRATION_CLASSES, labels: data.map((r) => r.label) },
    );
    expect(labelled.confidence.counts.every((c) => c === 0)).toBe(true);
    const reference = parseReference(
      serializeReference(
        await referenceWithModelPredictions(
          model,
          labelled,
          data.map((r) => r.features),
        ),
      ),
    );
    expect(reference.classes.source).toBe('predictions');
    expect(reference.classes.names).toEqual(VIBRATION_CLASSES);
    expect(reference.classes.counts.reduce((a, b) => a + b, 0)).toBe(3000);
    expect(reference.confidence.counts.reduce((a, b) => a + b, 0)).toBe(3000);
  });

  it('predictions - clean windows leave predictions and confidence ok; a shift seen only in the outputs counts in the verdict', async () => {
    const data = rowsOf(1, 3000);
    const labelled = buildReference(
      data.map((r) => r.features),
      { featureNames: VIBRATION_FEATURES, classNames: VIBRATION_CLASSES, labels: data.map((r) => r.label) },
    );
    const reference = await referenceWithModelPredictions(
      model,
      labelled,
      data.map((r) => r.features),
    );
    const clean = rowsOf(2, 1500).map((r) => r.features);
    const cleanStatus = evaluateDrift(reference, await windowOf(reference, clean, clean));
    expect(cleanStatus.predictions).toMatchObject({ drifted: false });
    expect(cleanStatus.confidence).toMatchObject({ drifted: false });
    expect(cleanStatus.status).toBe('ok');
    // Clean features, but the model's outputs on aged sensors: only predictions and confidence can tell.
    const drifted = rowsOf(3, 1500, true).map((r) => r.features);
    const outputsOnly = evaluateDrift(reference, await windowOf(reference, clean, drifted));
    expect(outputsOnly.features.every((f) => !f.drifted)).toBe(true);
    expect(outputsOnly.predictions!.drifted || outputsOnly.confidence!.drifted).toBe(true);
    expect(outputsOnly.status).not.toBe('ok');
    expect(outputsOnly.reason).toMatch(/predicted_class|confidence/);
  });
});
