import {
  benjaminiHochberg,
  chiSquare,
  chiSquareQuantile,
  hellinger,
  jensenShannon,
  ksTest,
  noncentralChiSquareSurvival,
  psi,
  wasserstein,
} from '../../common/drift/statistics.js';
import { latencySketch } from '../../common/drift/sketch.js';
import type { DriftPolicy, DriftReference } from '../../common/drift/reference.js';
import type { DriftSketch, DriftStatus, FeatureDrift } from '../../common/proto/driftline/v1/drift.js';

export interface DriftThresholds {
  /** Effect floor: a significant feature is drifted (warn) only with PSI or JS at or above its floor. */
  psiWarn: number;
  /** Severity: a drifted feature with PSI at or above this is severely drifted (feature alert). */
  psiAlert: number;
  jensenShannon: number;
  /** Significance after correction (Benjamini-Hochberg across features). */
  alpha: number;
  /** Importance-weighted share of drifted features at which the whole dataset counts as drifted (alert). */
  datasetShare: number;
  /** A floor under the minimum rows the power calculation gives. */
  minRows: number;
  /** Power the minimum rows buy against a severe (psiAlert) shift of one feature. */
  power: number;
  /** What a feature that is significant but below the effect floors does to the verdict: nothing (ok) or warn. */
  belowFloor: 'ok' | 'warn';
  /** A severely drifted feature alerts its cohort when its importance, relative to the most important feature, is at least this (0: any feature). */
  severeImportance: number;
}

export const DEFAULT_DRIFT_THRESHOLDS: Readonly<DriftThresholds> = {
  psiWarn: 0.1,
  psiAlert: 0.2,
  jensenShannon: 0.1,
  alpha: 0.05,
  datasetShare: 0.5,
  minRows: 50,
  power: 0.8,
  belowFloor: 'ok',
  severeImportance: 0,
};

/** The thresholds for one model: the control plane's, with the model reference's policy over them. */
export function thresholdsFor(reference: DriftReference, base: DriftThresholds): DriftThresholds {
  const policy: DriftPolicy = reference.policy ?? {};
  const defined = Object.fromEntries(Object.entries(policy).filter(([k, v]) => v !== undefined && k in base));
  return { ...base, ...defined };
}

type Level = 'ok' | 'warn' | 'alert';

const minRowsCache = new Map<string, number>();

/**
 * Rows a window needs before it gets a verdict: the smallest n at which the chi-square test of
 * one feature (df degrees of freedom, at level alpha / features, Bonferroni being the worst case
 * of Benjamini-Hochberg for a single drifted feature) rejects with probability `power` when the
 * feature has moved by a PSI of psiAlert. For small shifts the chi-square divergence equals the
 * PSI, so the noncentrality is n_eff * PSI with 1 / n_eff = 1 / n + 1 / n_reference. Below it an
 * `ok` would mean nothing, so the status is no_data; never below `t.minRows`.
 */
export function minimumRows(referenceRows: number, df: number, features: number, t: DriftThresholds): number {
  const level = t.alpha / Math.max(1, features);
  const key = `${referenceRows}/${df}/${level}/${t.psiAlert}/${t.power}/${t.minRows}`;
  const cached = minRowsCache.get(key);
  if (cached !== undefined) return cached;
  let rows = t.minRows;
  if (df > 0) {
    const critical = chiSquareQuantile(level, df);
    let lo = 0;
    let hi = 1;
    while (noncentralChiSquareSurvival(critical, df, hi) < t.power) hi *= 2;
    for (let i = 0; i < 60; i++) {
      const mid = (lo + hi) / 2;
      if (noncentralChiSquareSurvival(critical, df, mid) < t.power) lo = mid;
      else hi = mid;
    }
    const effective = hi / t.psiAlert;
    const needed = effective >= referenceRows ? Number.POSITIVE_INFINITY : (effective * referenceRows) / (referenceRows - effective);
    rows = Math.max(t.minRows, Math.ceil(needed));
  }
  minRowsCache.set(key, rows);
  return rows;
}

/** The statistics of one feature (or the class distribution) in one window; p is its test's, before correction. */
function statistics(reference: readonly number[], current: readonly number[], edges: readonly number[] | undefined) {
  const chi = chiSquare(reference, current);
  const ks = edges ? ksTest(reference, current) : undefined;
  // Two tests of one hypothesis: Bonferroni over them.
  const pValue = ks ? Math.min(1, 2 * Math.min(chi.pValue, ks.pValue)) : chi.pValue;
  return {
    psi: psi(reference, current),
    jensenShannon: jensenShannon(reference, current),
    hellinger: hellinger(reference, current),
    ks: ks?.statistic ?? 0,
    wasserstein: edges ? wasserstein(reference, current, edges) : 0,
    pValue,
  };
}

function featureDrift(
  name: string,
  reference: readonly number[],
  current: readonly number[],
  long: readonly number[] | undefined,
  edges: readonly number[] | undefined,
): FeatureDrift {
  const now = statistics(reference, current, edges);
  // The windowed test: the long window sees a small persistent shift the short one has too few rows for. Bonferroni over the two.
  const pValue = long ? Math.min(1, 2 * Math.min(now.pValue, statistics(reference, long, edges).pValue)) : now.pValue;
  return { name, ...now, pValue, pAdjusted: 1, drifted: false, status: 'ok' };
}

/**
 * A feature's state from its corrected test and the current window's effect sizes. Effects come
 * from the current window only: the long window adds evidence (significance), so a shift that
 * has ended, which the long window still remembers, is at most below_floor.
 */
function featureStatus(f: FeatureDrift, t: DriftThresholds): string {
  if (!(f.pAdjusted < t.alpha)) return 'ok';
  if (f.psi < t.psiWarn && f.jensenShannon < t.jensenShannon) return 'below_floor';
  return f.psi >= t.psiAlert ? 'alert' : 'warn';
}

export interface EvaluateOptions {
  /** The same cohort over the longer drift window, for the windowed test. */
  long?: DriftSketch | undefined;
}

/**
 * Tests a merged sketch against its reference. The verdict, exactly:
 * 1. Fewer rows than minimumRows(): status no_data, every feature no_data.
 * 2. Per feature, the binned chi-square and the binned KS test (Bonferroni over the two, and over
 *    the two windows when a long window is given), corrected across the features by
 *    Benjamini-Hochberg. Not significant: ok. Significant with PSI below
 *    psiWarn and JS below its floor: below_floor. Otherwise drifted: warn, or alert at PSI >= psiAlert.
 * 3. The cohort alerts when a feature is alert and its relative importance is at least
 *    severeImportance, or when the importance-weighted share of drifted features reaches
 *    datasetShare; it warns when any feature drifted, or, with
 *    belowFloor 'warn', when any is below_floor; otherwise ok. `reason` says which rule decided.
 */
export function evaluateDrift(
  reference: DriftReference,
  sketch: DriftSketch,
  base: DriftThresholds = DEFAULT_DRIFT_THRESHOLDS,
  options: EvaluateOptions = {},
): Omit<DriftStatus, 'model' | 'version' | 'cohort' | 'devices'> {
  const t = thresholdsFor(reference, base);
  const latency = latencySketch(sketch);
  const long = options.long && options.long.rows > sketch.rows ? options.long : undefined;
  // Degrees of freedom of the test: the reference's bins that hold real mass (the outer bins catch
  // at most a few rows the rounded edges left out, and pool into their neighbours).
  const df = Math.max(0, ...reference.features.map((f) => f.counts.filter((c) => c >= 0.01 * reference.rows).length - 1));
  const referenceHasClasses = reference.classes.counts.some((c) => c > 0);
  const minRows = minimumRows(reference.rows, df, reference.features.length, t);
  const base0 = {
    rows: sketch.rows,
    errorRate: sketch.requests > 0 ? sketch.errors / sketch.requests : 0,
    latencyP50Ms: latency.count > 0 ? latency.getValueAtQuantile(0.5) : 0,
    latencyP95Ms: latency.count > 0 ? latency.getValueAtQuantile(0.95) : 0,
    windowStartMs: sketch.windowStartMs,
    windowEndMs: sketch.windowEndMs,
    minRows: Number.isFinite(minRows) ? minRows : 0,
  };
  const zeros = (n: number): number[] => new Array<number>(n).fill(0);
  const countsOf = (s: DriftSketch | undefined, j: number): number[] | undefined =>
    s ? (s.features[j]?.counts ?? zeros(reference.features[j]!.counts.length)) : undefined;
  const features = reference.features.map((f, j) => featureDrift(f.name, f.counts, countsOf(sketch, j)!, countsOf(long, j), f.edges));
  const predictions = referenceHasClasses
    ? featureDrift('predicted_class', reference.classes.counts, sketch.classCounts, long?.classCounts, undefined)
    : undefined;
  const confidence = reference.confidence.counts.some((c) => c > 0)
    ? featureDrift('confidence', reference.confidence.counts, sketch.confidenceCounts, long?.confidenceCounts, reference.confidence.edges)
    : undefined;
  // Predicted classes are judged only against predictions (made at push time by running the model
  // on the reference rows); against labels they are shown with their uncorrected p-value and stay
  // out of the correction and the verdict. The confidence reference is always the model's.
  const judgedPredictions = predictions && reference.classes.source === 'predictions' ? predictions : undefined;
  const outputs = [judgedPredictions, confidence].filter((f): f is FeatureDrift => f !== undefined);
  const tested = [...features, ...outputs];
  const adjusted = benjaminiHochberg(tested.map((f) => f.pValue));
  tested.forEach((f, j) => (f.pAdjusted = adjusted[j]!));
  if (predictions && !judgedPredictions) predictions.pAdjusted = predictions.pValue;
  const all = [...tested, ...(predictions && !judgedPredictions ? [predictions] : [])];
  for (const f of all) {
    f.status = featureStatus(f, t);
    f.drifted = f.status === 'warn' || f.status === 'alert';
  }
  const weights = reference.features.map((f) => (f.importance === undefined ? 1 : f.importance));
  const maxWeight = Math.max(0, ...weights);
  const totalWeight = weights.reduce((a, b) => a + b, 0);
  const driftedShare = totalWeight > 0 ? features.reduce((s, f, j) => s + (f.drifted ? weights[j]! : 0), 0) / totalWeight : 0;

  if (sketch.rows < minRows) {
    for (const f of all) Object.assign(f, { status: 'no_data', drifted: false });
    return {
      ...base0,
      status: 'no_data',
      driftedShare: 0,
      features,
      predictions,
      confidence,
      reason: `${sketch.rows} rows, fewer than the ${Number.isFinite(minRows) ? minRows : 'unreachable'} a verdict needs`,
    };
  }
  // The model's outputs weigh as much as the most important feature.
  const severe = [
    ...features.filter((f, j) => f.status === 'alert' && maxWeight > 0 && weights[j]! / maxWeight >= t.severeImportance),
    ...outputs.filter((f) => f.status === 'alert'),
  ];
  const names = (fs: FeatureDrift[]): string => fs.map((f) => f.name).join(', ');
  let status: Level = 'ok';
  let reason = 'no feature significantly drifted';
  if (severe.length > 0) {
    status = 'alert';
    reason = `severely drifted (PSI >= ${t.psiAlert}): ${names(severe)}`;
  } else if (driftedShare >= t.datasetShare) {
    status = 'alert';
    reason = `drifted share ${driftedShare.toFixed(2)} >= ${t.datasetShare}: ${names(features.filter((f) => f.drifted))}`;
  } else if (tested.some((f) => f.drifted)) {
    status = 'warn';
    reason = `drifted: ${names(tested.filter((f) => f.drifted))}`;
  } else if (tested.some((f) => f.status === 'below_floor')) {
    if (t.belowFloor === 'warn') status = 'warn';
    reason = `significant but below the effect floor (PSI ${t.psiWarn}, JS ${t.jensenShannon}): ${names(tested.filter((f) => f.status === 'below_floor'))}`;
  }
  return { ...base0, status, driftedShare, features, predictions, confidence, reason };
}
