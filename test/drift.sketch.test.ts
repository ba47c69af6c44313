import { describe, expect, it } from 'vitest';
import { Adwin, PageHinkley } from '../common/drift/detectors.js';
import { binIndex, buildReference, parseReference, serializeReference, type DriftReference } from '../common/drift/reference.js';
import { SketchBuilder, latencySketch, mergeSketches } from '../common/drift/sketch.js';
import { evaluateDrift } from '../control-plane/drift/evaluate.js';
import { seededRandom } from '../demo/model/seeded-random.js';
import { VIBRATION_CLASSES, VIBRATION_FEATURES, vibrationRowSampler } from '../demo/model/vibration-data.js';

function referenceFrom(seed: number, rows: number): DriftReference {
  const next = vibrationRowSampler(seed);
  const data = Array.from({ length: rows }, next);
  return buildReference(
    data.map((r) => r.features),
    { featureNames: VIBRATION_FEATURES, classNames: VIBRATION_CLASSES, labels: data.map((r) => r.label) },
  );
}

function sketchOf(reference: DriftReference, seed: number, rows: number, drift = false) {
  const next = vibrationRowSampler(seed, { drift });
  const rng = seededRandom(seed);
  const builder = new SketchBuilder(reference, 'vibration', 1, 1000);
  for (let i = 0; i < rows; i++) {
    const row = next();
    builder.observeFeatures(row.features, 1, row.features.length);
    builder.observePrediction(row.label, 0.5 + rng.next() / 2);
    builder.observeRequest(1 + rng.next() * 10, i % 50 !== 0);
  }
  return builder.finish(2000 + seed);
}

describe('drift sketches', () => {
  const reference = referenceFrom(1, 5000);

  it('put values on the reference edges with under- and overflow bins', () => {
    const edges = [0, 1, 2];
    expect([-1, 0, 0.5, 1, 1.99, 2, 2.01, Number.NaN].map((x) => binIndex(edges, x))).toEqual([0, 1, 1, 2, 2, 2, 3, 0]);
  });

  it('a reference survives its JSON form and fits in one metadata value', () => {
    const json = serializeReference(reference);
    expect(json.length).toBeLessThan(4096);
    expect(parseReference(json)).toEqual(reference);
  });

  it('a malformed reference is refused with DRIFT_REFERENCE_INVALID', () => {
    expect(() => parseReference('{"version":1}')).toThrow(expect.objectContaining({ code: 'DRIFT_REFERENCE_INVALID' }));
    expect(() => parseReference('not json')).toThrow(expect.objectContaining({ code: 'DRIFT_REFERENCE_INVALID' }));
  });

  it('merge associatively, and merging windows equals one sketch of all the rows', () => {
    const [a, b, c] = [sketchOf(reference, 11, 700), sketchOf(reference, 12, 500), sketchOf(reference, 13, 900)];
    const left = mergeSketches(mergeSketches(a, b), c);
    const right = mergeSketches(a, mergeSketches(b, c));
    const strip = (s: typeof a) => ({ ...s, latencyDdsketch: undefined });
    expect(strip(left)).toEqual(strip(right));
    expect(left.rows).toBe(2100);
    for (const q of [0.5, 0.95, 0.99]) expect(latencySketch(left).getValueAtQuantile(q)).toBe(latencySketch(right).getValueAtQuantile(q));
    expect(left.features[0]!.counts.reduce((x, y) => x + y, 0)).toBe(2100);
    expect(mergeSketches(b, a).features).toEqual(mergeSketches(a, b).features);
  });

  it('sketches of different references do not merge', () => {
    const other = sketchOf(referenceFrom(2, 500), 11, 10);
    expect(() => mergeSketches(sketchOf(reference, 11, 10), other)).toThrow(expect.objectContaining({ code: 'DRIFT_SKETCH_INCOMPATIBLE' }));
  });

  it('fleet drift test alerts on drifted sensors and stays ok on healthy ones', () => {
    const healthy = evaluateDrift(reference, mergeSketches(sketchOf(reference, 21, 3000), sketchOf(reference, 22, 3000)));
    const drifted = evaluateDrift(reference, mergeSketches(sketchOf(reference, 31, 3000, true), sketchOf(reference, 32, 3000, true)));
    expect(healthy.status).toBe('ok');
    expect(healthy.driftedShare).toBe(0);
    expect(drifted.status).toBe('alert');
    expect(drifted.driftedShare).toBeGreaterThanOrEqual(0.5);
    // Crest factor and kurtosis are ratios, which a gain error cancels out of.
    expect(drifted.features.find((f) => f.name === 'kurtosis')?.drifted).toBe(false);
    expect(drifted.features.find((f) => f.name === 'temperature_c')?.status).toBe('alert');
  });

  it('gives no verdict on too few rows', () => {
    expect(evaluateDrift(reference, sketchOf(reference, 41, 20, true)).status).toBe('no_data');
  });
});

describe('change detectors (river defaults)', () => {
  const stream = (seed: number, n: number, mean: number) => {
    const rng = seededRandom(seed);
    return Array.from({ length: n }, () => Math.min(1, Math.max(0, rng.normal(mean, 0.05))));
  };

  it('Page-Hinkley stays quiet on a stationary confidence stream and fires after its mean drops', () => {
    const ph = new PageHinkley();
    expect(stream(1, 2000, 0.9).some((x) => ph.update(x))).toBe(false);
    const after = stream(2, 1000, 0.5).findIndex((x) => ph.update(x));
    expect(after).toBeGreaterThan(0);
    expect(after).toBeLessThan(300);
  });

  it('ADWIN stays quiet on a stationary stream and shrinks its window after a change', () => {
    const adwin = new Adwin();
    expect(stream(3, 2000, 0.9).some((x) => adwin.update(x))).toBe(false);
    const after = stream(4, 1000, 0.6).findIndex((x) => adwin.update(x));
    expect(after).toBeGreaterThan(0);
    expect(after).toBeLessThan(200);
    expect(adwin.windowWidth).toBeLessThan(1000);
  });
});
