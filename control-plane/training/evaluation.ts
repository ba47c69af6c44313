import { DriftlineError } from '../../common/errors.js';
import { combineGateResults, thresholdJudge, type GateResult, type Verdict } from '../rollout/gates.js';

/**
 * The evaluation gate, pure: classification metrics from labels and predicted probabilities,
 * and the rules (in the rollout gates' style) that compare a candidate with its parent on two
 * test splits: the triggering cohort's ("test", where it must improve) and a regression split
 * from the other cohorts and the parent's own test data ("regression", where it must not get worse).
 */

export interface ClassificationMetrics {
  rows: number;
  accuracy: number;
  macroF1: number;
  /** Indexed by class; 0 for a class with no rows (perClassSupport says which). */
  perClassRecall: number[];
  perClassSupport: number[];
  logLoss: number;
  /** Over ECE_BINS equal-width confidence bins. */
  expectedCalibrationError: number;
  /**
   * One-row inference latency on the evaluating host (p50, p95 in ms), as a device serves one
   * request; absent when it was not measured. The host is not the device: compare candidate with
   * parent (latency-ratio), never with a device's figures.
   */
  latencyP50Ms?: number | undefined;
  latencyP95Ms?: number | undefined;
}

export const ECE_BINS = 10;
/** Probabilities are clipped here so a confident wrong answer costs a large, finite log loss (as scikit-learn does). */
const LOG_LOSS_EPSILON = 1e-15;

/**
 * Metrics of one model on one split. `probabilities` is row-major, rows × classes (a softmax
 * output as onnxruntime returns it); the prediction is the most probable class (the lowest index on a tie).
 */
export function classificationMetrics(labels: ArrayLike<number>, probabilities: ArrayLike<number>, classes: number): ClassificationMetrics {
  const rows = labels.length;
  if (!Number.isInteger(classes) || classes < 1) throw new DriftlineError('REQUEST_INVALID', `classes must be a positive integer, not ${classes}`);
  if (probabilities.length !== rows * classes) {
    throw new DriftlineError('REQUEST_INVALID', `expected ${rows} × ${classes} probabilities, got ${probabilities.length}`, {
      details: { rows, classes, probabilities: probabilities.length },
    });
  }
  const support = new Array<number>(classes).fill(0);
  const predicted = new Array<number>(classes).fill(0);
  const truePositives = new Array<number>(classes).fill(0);
  const binCount = new Array<number>(ECE_BINS).fill(0);
  const binCorrect = new Array<number>(ECE_BINS).fill(0);
  const binConfidence = new Array<number>(ECE_BINS).fill(0);
  let correct = 0;
  let logLossSum = 0;
  for (let r = 0; r < rows; r++) {
    const label = labels[r]!;
    if (!Number.isInteger(label) || label < 0 || label >= classes) {
      throw new DriftlineError('REQUEST_INVALID', `label ${label} of row ${r} is not a class index below ${classes}`, { details: { row: r, label } });
    }
    let best = 0;
    let bestP = -Infinity;
    for (let c = 0; c < classes; c++) {
      const p = probabilities[r * classes + c]!;
      if (!Number.isFinite(p)) throw new DriftlineError('REQUEST_INVALID', `probability of row ${r}, class ${c} is ${p}`, { details: { row: r, class: c } });
      if (p > bestP) [best, bestP] = [c, p];
    }
    support[label]!++;
    predicted[best]!++;
    const hit = best === label;
    if (hit) {
      correct++;
      truePositives[label]!++;
    }
    const pLabel = Math.min(1, Math.max(LOG_LOSS_EPSILON, probabilities[r * classes + label]!));
    logLossSum -= Math.log(pLabel);
    const confidence = Math.min(1, Math.max(0, bestP));
    const bin = Math.min(ECE_BINS - 1, Math.floor(confidence * ECE_BINS));
    binCount[bin]!++;
    binConfidence[bin]! += confidence;
    if (hit) binCorrect[bin]!++;
  }
  const perClassRecall = support.map((s, c) => (s === 0 ? 0 : truePositives[c]! / s));
  // Macro F1 over the classes that occur in the labels or the predictions (scikit-learn's labels=None).
  const present = support.map((s, c) => s > 0 || predicted[c]! > 0);
  const f1 = support.map((s, c) => {
    const tp = truePositives[c]!;
    const denominator = s + predicted[c]!;
    return denominator === 0 ? 0 : (2 * tp) / denominator;
  });
  const presentCount = present.filter(Boolean).length;
  const macroF1 = presentCount === 0 ? 0 : f1.reduce((sum, v, c) => (present[c] ? sum + v : sum), 0) / presentCount;
  let ece = 0;
  for (let b = 0; b < ECE_BINS; b++) {
    const n = binCount[b]!;
    if (n > 0) ece += (n / rows) * Math.abs(binCorrect[b]! / n - binConfidence[b]! / n);
  }
  return {
    rows,
    accuracy: rows === 0 ? 0 : correct / rows,
    macroF1,
    perClassRecall,
    perClassSupport: support,
    logLoss: rows === 0 ? 0 : logLossSum / rows,
    expectedCalibrationError: ece,
  };
}

export type SplitRole = 'test' | 'regression';

/** Candidate and parent on one split: what an Evaluator returns per split. */
export interface SplitEvaluation {
  split: SplitRole;
  candidate: ClassificationMetrics;
  parent: ClassificationMetrics;
}

export interface EvaluationReport {
  verdict: Verdict;
  /** One line naming what failed or was inconclusive; empty on pass. */
  reason: string;
  gates: GateResult[];
  splits: SplitEvaluation[];
  evaluatedAtMs: number;
}

/**
 * Gate metrics. Deltas are candidate − parent. "test" is the triggering cohort's split,
 * "regression" the other cohorts' and the parent's own test data.
 */
export const EVALUATION_GATE_METRICS = [
  'accuracy-delta', // on the test split
  'macro-f1-delta', // on the test split
  'log-loss-delta', // on the test split (lower is better: use <=)
  'regression-accuracy-delta', // on the regression split
  'class-recall-drop', // the largest parent − candidate recall of any class with rows, over both splits
  'latency-ratio', // candidate ÷ parent one-row p50 latency on this host, on the test split (use <=)
] as const;
export type EvaluationGateMetric = (typeof EVALUATION_GATE_METRICS)[number];

export interface EvaluationGate {
  metric: EvaluationGateMetric;
  op: '<=' | '>=';
  threshold: number;
}

/** Used when a job names no gate: better on the cohort, no worse elsewhere, no class left behind. */
export const DEFAULT_EVALUATION_GATES: readonly string[] = ['accuracy-delta>=0', 'regression-accuracy-delta>=-0.005', 'class-recall-drop<=0.05'];

const GATE_TEXT = /^\s*([a-z0-9-]+)\s*(<=|>=)\s*(-?\d+(?:\.\d+)?)\s*$/;

/** Parses "accuracy-delta>=0.01"; REQUEST_INVALID names the gate and the metrics there are. */
export function parseEvaluationGate(text: string): EvaluationGate {
  const m = GATE_TEXT.exec(text);
  if (!m || !(EVALUATION_GATE_METRICS as readonly string[]).includes(m[1]!)) {
    throw new DriftlineError(
      'REQUEST_INVALID',
      `evaluation gate ${JSON.stringify(text)} must look like <metric><=|>=<number> with metric one of ${EVALUATION_GATE_METRICS.join(', ')}`,
      { details: { gate: text } },
    );
  }
  return { metric: m[1] as EvaluationGateMetric, op: m[2] as '<=' | '>=', threshold: Number(m[3]) };
}

export const formatEvaluationGate = (gate: EvaluationGate): string => `${gate.metric}${gate.op}${gate.threshold}`;

/** A job's gate texts: empty → the defaults, ["none"] → none; each parsed, then kept in canonical form. */
export function normalizeEvaluationGates(texts: readonly string[]): string[] {
  if (texts.length === 0) return [...DEFAULT_EVALUATION_GATES];
  if (texts.length === 1 && texts[0]!.trim() === 'none') return [];
  return texts.map((t) => formatEvaluationGate(parseEvaluationGate(t)));
}

export interface EvaluationLimits {
  /** A split with fewer rows than this makes its gates inconclusive. */
  minSplitRows: number;
}

/**
 * Judges a candidate. A gate fails only on enough data: on a split below minSplitRows (or
 * missing) it is inconclusive, and the candidate is not accepted. A value at the threshold passes.
 */
export function judgeCandidate(
  gates: readonly EvaluationGate[],
  splits: readonly SplitEvaluation[],
  limits: EvaluationLimits,
  nowMs: number,
): EvaluationReport {
  const results = gates.map((gate) => judgeGate(gate, splits, limits));
  return { ...combineGateResults(results), gates: results, splits: [...splits], evaluatedAtMs: nowMs };
}

function judgeGate(gate: EvaluationGate, splits: readonly SplitEvaluation[], limits: EvaluationLimits): GateResult {
  const { unsure, judge } = thresholdJudge(formatEvaluationGate(gate), gate);
  const usable = (role: SplitRole): SplitEvaluation | string => {
    const split = splits.find((s) => s.split === role);
    if (!split) return `no ${role} split`;
    const rows = Math.min(split.candidate.rows, split.parent.rows);
    return rows < limits.minSplitRows ? `only ${rows} rows in the ${role} split (need ${limits.minSplitRows})` : split;
  };
  const pct = (n: number): string => `${(n * 100).toFixed(2)}%`;
  switch (gate.metric) {
    case 'accuracy-delta':
    case 'regression-accuracy-delta': {
      const split = usable(gate.metric === 'accuracy-delta' ? 'test' : 'regression');
      if (typeof split === 'string') return unsure(split);
      return judge(
        split.candidate.accuracy - split.parent.accuracy,
        `${split.split} accuracy ${pct(split.candidate.accuracy)} vs ${pct(split.parent.accuracy)} for the parent`,
      );
    }
    case 'macro-f1-delta': {
      const split = usable('test');
      if (typeof split === 'string') return unsure(split);
      return judge(
        split.candidate.macroF1 - split.parent.macroF1,
        `test macro F1 ${split.candidate.macroF1.toFixed(4)} vs ${split.parent.macroF1.toFixed(4)} for the parent`,
      );
    }
    case 'log-loss-delta': {
      const split = usable('test');
      if (typeof split === 'string') return unsure(split);
      return judge(
        split.candidate.logLoss - split.parent.logLoss,
        `test log loss ${split.candidate.logLoss.toFixed(4)} vs ${split.parent.logLoss.toFixed(4)} for the parent`,
      );
    }
    case 'class-recall-drop': {
      const judged = (['test', 'regression'] as const).map(usable).filter((s): s is SplitEvaluation => typeof s !== 'string');
      if (judged.length === 0) return unsure((['test', 'regression'] as const).map(usable).join('; '));
      let worst = { drop: -Infinity, split: '', cls: -1 };
      for (const split of judged) {
        split.parent.perClassRecall.forEach((parentRecall, cls) => {
          // A class with no rows has no recall to lose.
          if ((split.parent.perClassSupport[cls] ?? 0) === 0) return;
          const drop = parentRecall - (split.candidate.perClassRecall[cls] ?? 0);
          if (drop > worst.drop) worst = { drop, split: split.split, cls };
        });
      }
      if (worst.cls < 0) return unsure('no class has rows');
      return judge(worst.drop, `class ${worst.cls} recall changed by ${(-worst.drop * 100).toFixed(2)} points on the ${worst.split} split (the largest drop)`);
    }
    case 'latency-ratio': {
      const split = splits.find((s) => s.split === 'test');
      const candidate = split?.candidate.latencyP50Ms;
      const parent = split?.parent.latencyP50Ms;
      if (candidate === undefined || parent === undefined || !(parent > 0)) return unsure('no latency measured on the test split');
      return judge(candidate / parent, `one-row p50 latency ${candidate.toFixed(3)} ms vs ${parent.toFixed(3)} ms for the parent on this host`);
    }
  }
}
