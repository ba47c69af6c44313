import { benjaminiHochberg, chiSquare, hellinger, jensenShannon, ksStatistic, psi, wasserstein } from '../../common/drift/statistics.js';
import { latencySketch } from '../../common/drift/sketch.js';
import type { DriftReference } from '../../common/drift/reference.js';
import type { DriftSketch, DriftStatus, FeatureDrift } from '../../common/proto/driftline/v1/drift.js';

export interface DriftThresholds {
  psiWarn: number;
  psiAlert: number;
  jensenShannon: number;
  /** Significance after correction. */
  alpha: number;
  /** Share of drifted features at which the whole dataset counts as drifted (alert). */
  datasetShare: number;
  /** Below this many rows a verdict is not given (status no_data). */
  minRows: number;
}

export const DEFAULT_DRIFT_THRESHOLDS: Readonly<DriftThresholds> = { psiWarn: 0.1, psiAlert: 0.2, jensenShannon: 0.1, alpha: 0.05, datasetShare: 0.5, minRows: 100 };

type Level = 'ok' | 'warn' | 'alert';

function featureDrift(name: string, reference: readonly number[], current: readonly number[], edges: readonly number[] | undefined, t: DriftThresholds): FeatureDrift {
  const p = psi(reference, current);
  const js = jensenShannon(reference, current);
  return {
    name,
    psi: p,
    jensenShannon: js,
    hellinger: hellinger(reference, current),
    ks: ksStatistic(reference, current),
    wasserstein: edges ? wasserstein(reference, current, edges) : 0,
    pValue: chiSquare(reference, current).pValue,
    pAdjusted: 1,
    drifted: false,
    status: p >= t.psiAlert ? 'alert' : p >= t.psiWarn || js >= t.jensenShannon ? 'warn' : 'ok',
  };
}

/**
 * Tests a merged sketch against its reference. A feature is drifted when its corrected
 * chi-square test rejects (Benjamini-Hochberg over the features) and the effect is not
 * negligible (PSI at or above the warn level, or JS distance at or above its threshold):
 * with fleet-sized samples every tiny shift is significant, so significance alone says
 * little. The dataset rule turns the share of drifted features into the verdict.
 */
export function evaluateDrift(reference: DriftReference, sketch: DriftSketch, t: DriftThresholds = DEFAULT_DRIFT_THRESHOLDS): Omit<DriftStatus, 'model' | 'version' | 'cohort' | 'devices'> {
  const latency = latencySketch(sketch);
  const base = {
    rows: sketch.rows,
    errorRate: sketch.requests > 0 ? sketch.errors / sketch.requests : 0,
    latencyP50Ms: latency.count > 0 ? latency.getValueAtQuantile(0.5) : 0,
    latencyP95Ms: latency.count > 0 ? latency.getValueAtQuantile(0.95) : 0,
    windowStartMs: sketch.windowStartMs,
    windowEndMs: sketch.windowEndMs,
  };
  const features = reference.features.map((f, j) => featureDrift(f.name, f.counts, sketch.features[j]?.counts ?? f.counts.map(() => 0), f.edges, t));
  const adjusted = benjaminiHochberg(features.map((f) => f.pValue));
  features.forEach((f, j) => {
    f.pAdjusted = adjusted[j]!;
    f.drifted = f.pAdjusted < t.alpha && f.status !== 'ok';
  });
  const referenceHasClasses = reference.classes.counts.some((c) => c > 0);
  const predictions = referenceHasClasses ? featureDrift('predicted_class', reference.classes.counts, sketch.classCounts, undefined, t) : undefined;
  if (predictions) predictions.drifted = predictions.pValue < t.alpha && predictions.status !== 'ok';
  const driftedShare = features.length > 0 ? features.filter((f) => f.drifted).length / features.length : 0;
  let status: Level | 'no_data' = 'ok';
  if (sketch.rows < t.minRows) status = 'no_data';
  else if (driftedShare >= t.datasetShare) status = 'alert';
  else if (features.some((f) => f.drifted)) status = 'warn';
  return { ...base, status, driftedShare, features, predictions };
}
