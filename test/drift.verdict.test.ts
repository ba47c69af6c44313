import { describe, expect, it } from 'vitest';
import { parseReference, serializeReference, withDriftPolicy, type DriftReference } from '../common/drift/reference.js';
import { DEFAULT_DRIFT_THRESHOLDS, evaluateDrift, minimumRows, type DriftThresholds } from '../control-plane/drift/evaluate.js';
import { normalReference, normalRows, sketchOfRows, type Shift } from '../demo/model/shifted-normal.js';

// Eight independent N(0, 1) features; the reference is 20,000 rows, as a training set would give.
const FEATURES = 8;
const reference = normalReference(1, 20_000, FEATURES);
const windowOf = (seed: number, rows: number, shift?: Shift, ref: DriftReference = reference, t: DriftThresholds = DEFAULT_DRIFT_THRESHOLDS) =>
  evaluateDrift(ref, sketchOfRows(ref, normalRows(seed, rows, FEATURES, shift)), t);
const withPolicy = (policy: DriftReference['policy'], importance?: number[]): DriftReference =>
  parseReference(
    serializeReference({ ...reference, policy, features: reference.features.map((f, j) => ({ ...f, ...(importance ? { importance: importance[j] } : {}) })) }),
  );

describe('drift verdicts', () => {
  it('verdict - a 0.5 sigma shift on one feature of eight alerts its cohort (severe feature), not only warns', () => {
    const status = windowOf(2, 2000, { feature: 3, sigma: 0.5 });
    expect(status.features[3]).toMatchObject({ status: 'alert', drifted: true });
    expect(status.driftedShare).toBeCloseTo(1 / 8, 10);
    expect(status.status).toBe('alert');
    expect(status.reason).toContain('f3');
    expect(status.features.filter((f) => f.drifted).map((f) => f.name)).toEqual(['f3']);
  });

  it('verdict - a broken sensor (one feature constant) alerts', () => {
    const status = windowOf(3, 500, { feature: 5, constant: 0.42 });
    expect(status.features[5]).toMatchObject({ status: 'alert', drifted: true });
    expect(status.status).toBe('alert');
  });

  it('verdict - feature importances: a severe shift on an unimportant feature warns when severeImportance asks for an important one', () => {
    const importance = [1, 1, 1, 0.05, 1, 1, 1, 1];
    const unimportant = withPolicy({ severeImportance: 0.5 }, importance);
    expect(windowOf(2, 2000, { feature: 3, sigma: 0.5 }, unimportant).status).toBe('warn');
    expect(windowOf(2, 2000, { feature: 2, sigma: 0.5 }, unimportant).status).toBe('alert');
    // The share rule weighs features by importance: two important features of eight carry 2 / 7.05 of the weight.
    const two = evaluateDrift(
      unimportant,
      sketchOfRows(
        unimportant,
        normalRows(4, 2000, FEATURES).map((r) => r.map((x, j) => (j < 2 ? x + 0.4 : x))),
      ),
    );
    expect(two.driftedShare).toBeCloseTo(2 / 7.05, 10);
  });

  it('verdict - a 0.1 sigma shift on one feature is named below_floor within 8,000 rows, and warns where the model asks for it', () => {
    const status = windowOf(5, 8000, { feature: 0, sigma: 0.1 });
    expect(status.features[0]!.status).toBe('below_floor');
    expect(status.features[0]!.drifted).toBe(false);
    expect(status.status).toBe('ok');
    expect(status.reason).toContain('below the effect floor');
    expect(windowOf(5, 8000, { feature: 0, sigma: 0.1 }, withPolicy({ belowFloor: 'warn' })).status).toBe('warn');
    // A per-model effect floor low enough for a 0.1 sigma shift (PSI ~0.01) makes it drifted.
    const sensitive = windowOf(5, 8000, { feature: 0, sigma: 0.1 }, withPolicy({ psiWarn: 0.005, jensenShannon: 0.04 }));
    expect(sensitive.features[0]).toMatchObject({ status: 'warn', drifted: true });
    expect(sensitive.status).toBe('warn');
  });

  it('verdict - the windowed test names a small persistent shift the current window has too few rows for', () => {
    const shift = { feature: 0, sigma: 0.1 };
    const current = sketchOfRows(reference, normalRows(6, 400, FEATURES, shift));
    const long = sketchOfRows(reference, normalRows(7, 12_000, FEATURES, shift));
    expect(evaluateDrift(reference, current).features[0]!.status).toBe('ok');
    expect(evaluateDrift(reference, current, DEFAULT_DRIFT_THRESHOLDS, { long }).features[0]!.status).toBe('below_floor');
  });

  it('verdict - minimum rows come from the power against a severe shift: below them no verdict and no feature status', () => {
    const rows = minimumRows(reference.rows, 9, FEATURES, DEFAULT_DRIFT_THRESHOLDS);
    expect(windowOf(8, 10).minRows).toBe(rows);
    // chi-square, df 9, level 0.05 / 8, power 0.8 at PSI 0.2: noncentrality ~24, so ~120 rows.
    expect(rows).toBeGreaterThan(100);
    expect(rows).toBeLessThan(150);
    const few = windowOf(8, rows - 1, { feature: 1, constant: 3 });
    expect(few).toMatchObject({ status: 'no_data', minRows: rows });
    expect(few.features.every((f) => f.status === 'no_data' && !f.drifted)).toBe(true);
    expect(windowOf(8, rows, { feature: 1, constant: 3 }).status).toBe('alert');
    // At the minimum rows a severe (PSI 0.2 ~ 0.45 sigma) shift alerts in at least 80 % of windows.
    let alerts = 0;
    for (let w = 0; w < 100; w++) if (windowOf(100 + w, rows, { feature: 2, sigma: 0.45 }).status !== 'ok') alerts++;
    expect(alerts).toBeGreaterThanOrEqual(80);
  });

  it('verdict - 1,000 clean windows at the minimum rows raise an alert or a warning in at most alpha (5 %) of them', () => {
    const rows = minimumRows(reference.rows, 9, FEATURES, DEFAULT_DRIFT_THRESHOLDS);
    let alarms = 0;
    let alerts = 0;
    for (let w = 0; w < 1000; w++) {
      const status = windowOf(10_000 + w, rows).status;
      if (status !== 'ok') alarms++;
      if (status === 'alert') alerts++;
    }
    expect(alarms / 1000).toBeLessThanOrEqual(DEFAULT_DRIFT_THRESHOLDS.alpha);
    expect(alerts / 1000).toBeLessThanOrEqual(DEFAULT_DRIFT_THRESHOLDS.alpha);
  }, 60_000);

  it('verdict - models push --drift-policy puts thresholds and importances into the reference, refusing bad ones with DRIFT_REFERENCE_INVALID', () => {
    const pushed = parseReference(
      serializeReference(withDriftPolicy(reference, JSON.stringify({ psiAlert: 0.3, belowFloor: 'warn', importance: { f3: 0.05 } }))),
    );
    expect(pushed.policy).toEqual({ psiAlert: 0.3, belowFloor: 'warn' });
    expect(pushed.features.map((f) => f.importance)).toEqual([undefined, undefined, undefined, 0.05, undefined, undefined, undefined, undefined]);
    expect(evaluateDrift(pushed, sketchOfRows(pushed, normalRows(5, 8000, FEATURES, { feature: 0, sigma: 0.1 }))).status).toBe('warn');
    for (const bad of ['{', '{"psiWarn":0}', '{"importance":{"nope":1}}', '{"importance":{"f0":-1}}', '{"belowFloor":"maybe"}']) {
      expect(() => withDriftPolicy(reference, bad)).toThrow(expect.objectContaining({ code: 'DRIFT_REFERENCE_INVALID' }));
    }
  });

  it('verdict - a per-model policy in the reference is validated', () => {
    expect(() => parseReference(serializeReference({ ...reference, policy: { psiWarn: -1 } }))).toThrow(
      expect.objectContaining({ code: 'DRIFT_REFERENCE_INVALID' }),
    );
    expect(() => parseReference(JSON.stringify({ ...reference, policy: { psiWran: 0.1 } }))).toThrow(
      expect.objectContaining({ code: 'DRIFT_REFERENCE_INVALID' }),
    );
  });
});
