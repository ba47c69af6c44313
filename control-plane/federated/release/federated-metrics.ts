import { DriftlineError } from '../../../common/errors.js';
import type { ClassificationMetrics } from '../../training/evaluation.js';

/**
 * Federated evaluation, pure: each device evaluates a head on its own held-out samples and
 * reports sums (samples, correct, mean loss, per-class support, correct and, from devices that
 * count them, predicted); the control plane adds the sums up and turns them into the same
 * ClassificationMetrics the retraining gate judges. Sums are additive, so the tally holds
 * O(classes) whatever the number of devices, and the same sums can later travel through secure
 * aggregation.
 *
 * What sums cannot give:
 * - expected calibration error needs each sample's confidence: it is 0 here (the gate has no
 *   rule on it; `calibrationMeasured` false says so);
 * - macro F1 needs per-class precision, i.e. how many samples were predicted as each class.
 *   With per_class_predicted from every device it is exact (scikit-learn's macro F1 over the
 *   classes present in labels or predictions). When a device did not count predictions it is
 *   approximated as the mean recall over the classes with support (`macroF1Exact` false).
 * - one-row latency is not measured on the devices' evaluation: the latency-ratio gate is
 *   inconclusive for a federated candidate.
 */

/** One device's answer to an evaluate invitation (the FederatedReport's KIND_EVALUATE fields). */
export interface EvaluationReportSums {
  evalSamples: number;
  evalCorrect: number;
  /** Mean cross-entropy over the device's held-out samples. */
  evalLoss: number;
  perClassSupport: readonly number[];
  perClassCorrect: readonly number[];
  /** Empty when the device does not count predictions. */
  perClassPredicted: readonly number[];
}

export interface FederatedEvaluationTally {
  classes: number;
  devices: number;
  samples: number;
  correct: number;
  /** Σ devices' mean loss × their samples. */
  lossSum: number;
  support: number[];
  truePositives: number[];
  predicted: number[];
  /** Devices that reported per_class_predicted (macro F1 is exact when it equals devices). */
  devicesWithPredicted: number;
}

/** A device's sample count above this is refused (a report that cannot be real; it would swamp the sums). */
export const MAX_EVAL_SAMPLES_PER_DEVICE = 10_000_000;
/** More classes than this is not a head a device evaluates (checked before any array is allocated). */
export const MAX_CLASSES = 4096;

export function emptyTally(classes: number): FederatedEvaluationTally {
  if (!Number.isInteger(classes) || classes < 1 || classes > MAX_CLASSES) {
    throw new DriftlineError('REQUEST_INVALID', `a federated evaluation needs 1 to ${MAX_CLASSES} classes, not ${classes}`);
  }
  return {
    classes,
    devices: 0,
    samples: 0,
    correct: 0,
    lossSum: 0,
    support: new Array<number>(classes).fill(0),
    truePositives: new Array<number>(classes).fill(0),
    predicted: new Array<number>(classes).fill(0),
    devicesWithPredicted: 0,
  };
}

const invalid = (message: string, details: Record<string, unknown> = {}): DriftlineError =>
  new DriftlineError('FEDERATED_REPORT_INVALID', message, { details });

const isCount = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;

/**
 * Checks one device's sums against each other before they are added: a report that does not
 * add up is refused whole (FEDERATED_REPORT_INVALID), never partly counted.
 */
export function checkReportSums(
  report: EvaluationReportSums,
  classes: number,
  bounds: { maxSamples: number } = { maxSamples: MAX_EVAL_SAMPLES_PER_DEVICE },
): void {
  const { evalSamples, evalCorrect, evalLoss, perClassSupport, perClassCorrect, perClassPredicted } = report;
  if (!isCount(evalSamples) || evalSamples > bounds.maxSamples) {
    throw invalid(`eval_samples ${evalSamples} is not a count up to ${bounds.maxSamples}`, { evalSamples });
  }
  if (!isCount(evalCorrect) || evalCorrect > evalSamples) throw invalid(`eval_correct ${evalCorrect} is not a count up to eval_samples ${evalSamples}`);
  if (!Number.isFinite(evalLoss) || evalLoss < 0) throw invalid(`eval_loss ${evalLoss} is not a finite, non-negative mean loss`);
  // Checked before anything is iterated: a report with a million-entry array costs nothing.
  for (const [name, counts] of [
    ['per_class_support', perClassSupport],
    ['per_class_correct', perClassCorrect],
  ] as const) {
    if (counts.length !== classes) throw invalid(`${name} has ${counts.length} entries; the head has ${classes} classes`, { field: name });
  }
  if (perClassPredicted.length !== 0 && perClassPredicted.length !== classes) {
    throw invalid(`per_class_predicted has ${perClassPredicted.length} entries; the head has ${classes} classes (or none)`, { field: 'per_class_predicted' });
  }
  let support = 0;
  let correct = 0;
  let predicted = 0;
  for (let c = 0; c < classes; c++) {
    const s = perClassSupport[c]!;
    const k = perClassCorrect[c]!;
    if (!isCount(s) || !isCount(k) || k > s)
      throw invalid(`class ${c}: ${k} correct of ${s} samples is not a pair of counts with correct ≤ support`, { class: c });
    support += s;
    correct += k;
    if (perClassPredicted.length > 0) {
      const p = perClassPredicted[c]!;
      if (!isCount(p) || p < k) throw invalid(`class ${c}: ${p} predicted is not a count of at least its ${k} correct`, { class: c });
      predicted += p;
    }
  }
  if (support !== evalSamples) throw invalid(`per_class_support sums to ${support}, eval_samples is ${evalSamples}`);
  if (correct !== evalCorrect) throw invalid(`per_class_correct sums to ${correct}, eval_correct is ${evalCorrect}`);
  if (perClassPredicted.length > 0 && predicted !== evalSamples) throw invalid(`per_class_predicted sums to ${predicted}, eval_samples is ${evalSamples}`);
}

/** The tally with one more device's sums (checked first; the tally given is not changed). */
export function addReport(tally: FederatedEvaluationTally, report: EvaluationReportSums): FederatedEvaluationTally {
  checkReportSums(report, tally.classes);
  const withPredicted = report.perClassPredicted.length > 0;
  return {
    classes: tally.classes,
    devices: tally.devices + 1,
    samples: tally.samples + report.evalSamples,
    correct: tally.correct + report.evalCorrect,
    lossSum: tally.lossSum + report.evalLoss * report.evalSamples,
    support: tally.support.map((v, c) => v + report.perClassSupport[c]!),
    truePositives: tally.truePositives.map((v, c) => v + report.perClassCorrect[c]!),
    predicted: withPredicted ? tally.predicted.map((v, c) => v + report.perClassPredicted[c]!) : [...tally.predicted],
    devicesWithPredicted: tally.devicesWithPredicted + (withPredicted ? 1 : 0),
  };
}

export interface FederatedMetrics extends ClassificationMetrics {
  /** Devices whose sums are in the figures. */
  devices: number;
  /** True when every device counted its predictions: macro F1 is exact; false: it is mean recall (see the module comment). */
  macroF1Exact: boolean;
  /** Always false: sums carry no confidences, so expected calibration error is reported as 0. */
  calibrationMeasured: false;
}

/** The tally as the retraining gate's metrics (accuracy, per-class recall, log loss exact; macro F1 exact or approximated; ECE 0). */
export function metricsOfTally(tally: FederatedEvaluationTally): FederatedMetrics {
  const { samples, support, truePositives, predicted } = tally;
  const perClassRecall = support.map((s, c) => (s === 0 ? 0 : truePositives[c]! / s));
  const exact = tally.devices > 0 && tally.devicesWithPredicted === tally.devices;
  let macroF1: number;
  if (exact) {
    // As classificationMetrics does it: over the classes present in labels or predictions.
    let sum = 0;
    let present = 0;
    for (let c = 0; c < tally.classes; c++) {
      const denominator = support[c]! + predicted[c]!;
      if (denominator === 0) continue;
      present++;
      sum += (2 * truePositives[c]!) / denominator;
    }
    macroF1 = present === 0 ? 0 : sum / present;
  } else {
    const withSupport = support.filter((s) => s > 0).length;
    macroF1 = withSupport === 0 ? 0 : perClassRecall.reduce((acc, r, c) => (support[c]! > 0 ? acc + r : acc), 0) / withSupport;
  }
  return {
    rows: samples,
    accuracy: samples === 0 ? 0 : tally.correct / samples,
    macroF1,
    perClassRecall,
    perClassSupport: [...support],
    logLoss: samples === 0 ? 0 : tally.lossSum / samples,
    expectedCalibrationError: 0,
    devices: tally.devices,
    macroF1Exact: exact,
    calibrationMeasured: false,
  };
}

/** Adds every report up: the metrics of a head over the devices that evaluated it. */
export function federatedMetrics(reports: readonly EvaluationReportSums[], classes: number): FederatedMetrics {
  return metricsOfTally(reports.reduce(addReport, emptyTally(classes)));
}
