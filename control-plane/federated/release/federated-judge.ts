import { DriftlineError } from '../../../common/errors.js';
import {
  DEFAULT_EVALUATION_GATES,
  judgeCandidate,
  normalizeEvaluationGates,
  parseEvaluationGate,
  type EvaluationLimits,
  type EvaluationReport,
} from '../../training/evaluation.js';
import {
  addReport,
  checkReportSums,
  emptyTally,
  metricsOfTally,
  type EvaluationReportSums,
  type FederatedEvaluationTally,
  type FederatedMetrics,
} from './federated-metrics.js';

/**
 * The evaluation gate for a federated candidate, pure: the retraining gate's rules
 * (training/evaluation.ts) over metrics summed from the devices' own held-out samples. The
 * candidate head and the parent's (the base version's head) are evaluated the same way on the
 * same devices; only devices that answered for both count, so both figures come from the same
 * samples. Everything the devices evaluate on is the task's cohort: that is the "test" split.
 * There is no regression split (no central data) and no latency measured, so those rules are
 * refused when a task is started (normalizeFederatedGates) rather than left inconclusive for ever.
 */

/** Better on the cohort, no class left behind (the retraining defaults without the regression rule, which needs central data). */
export const FEDERATED_DEFAULT_GATES: readonly string[] = DEFAULT_EVALUATION_GATES.filter((g) => !g.startsWith('regression-'));

/** Gate metrics a federated evaluation cannot measure. */
const UNMEASURED = new Map<string, string>([
  ['regression-accuracy-delta', 'a federated evaluation has no regression split (the devices evaluate on the cohort’s own samples only)'],
  ['latency-ratio', 'a federated evaluation measures no one-row latency (the canary rollout’s p95-latency-ratio gate judges latency on the devices)'],
]);

/**
 * A task's gate texts, as normalizeEvaluationGates does it (empty → FEDERATED_DEFAULT_GATES,
 * ["none"] → none, canonical form), refusing the rules a federated evaluation cannot measure
 * with FEDERATED_TASK_INVALID: the rounds engine calls this when a task is started.
 */
export function normalizeFederatedGates(texts: readonly string[]): string[] {
  if (texts.length === 0) return [...FEDERATED_DEFAULT_GATES];
  let gates: string[];
  try {
    gates = normalizeEvaluationGates(texts);
  } catch (err) {
    throw new DriftlineError('FEDERATED_TASK_INVALID', (err as Error).message, { cause: err, details: { field: 'gates' } });
  }
  for (const gate of gates) {
    const why = UNMEASURED.get(parseEvaluationGate(gate).metric);
    if (why) throw new DriftlineError('FEDERATED_TASK_INVALID', `gate ${gate}: ${why}`, { details: { field: 'gates', gate } });
  }
  return gates;
}

/** A head's federated evaluation summed over devices (ports.ts FederatedEvaluationCounts, with the optional predicted counts). */
export interface EvaluationCounts {
  devices: number;
  samples: number;
  correct: number;
  /** Sample-weighted mean cross-entropy. */
  loss: number;
  perClassSupport: readonly number[];
  perClassCorrect: readonly number[];
  /** Σ per_class_predicted of the devices that counted them; absent or empty: none did. */
  perClassPredicted?: readonly number[] | undefined;
  /** How many of `devices` counted predictions (absent: all of them when perClassPredicted is given, else none). */
  devicesWithPredicted?: number | undefined;
}

/** Summed counts as a tally, checked as one report (the per-class counts must add up to the totals). */
export function tallyOfCounts(counts: EvaluationCounts, classes: number): FederatedEvaluationTally {
  if (!Number.isSafeInteger(counts.devices) || counts.devices < 0)
    throw new DriftlineError('FEDERATED_REPORT_INVALID', `devices ${counts.devices} is not a count`);
  const predicted = counts.perClassPredicted ?? [];
  const sums: EvaluationReportSums = {
    evalSamples: counts.samples,
    evalCorrect: counts.correct,
    evalLoss: counts.loss,
    perClassSupport: counts.perClassSupport,
    perClassCorrect: counts.perClassCorrect,
    perClassPredicted: predicted,
  };
  // One device's sum bound does not apply to a fleet's sum: only the consistency checks do.
  checkReportSums(sums, classes, { maxSamples: Number.MAX_SAFE_INTEGER });
  const devicesWithPredicted = predicted.length === 0 ? 0 : Math.min(counts.devices, counts.devicesWithPredicted ?? counts.devices);
  return {
    classes,
    devices: counts.devices,
    samples: counts.samples,
    correct: counts.correct,
    lossSum: counts.loss * counts.samples,
    support: [...counts.perClassSupport],
    truePositives: [...counts.perClassCorrect],
    predicted: predicted.length === 0 ? new Array<number>(classes).fill(0) : [...predicted],
    devicesWithPredicted,
  };
}

export interface FederatedJudgement {
  report: EvaluationReport;
  candidate: FederatedMetrics;
  parent: FederatedMetrics;
  /** What the figures cannot say, for the version's metadata and the operator. */
  notes: string[];
}

export interface FederatedJudgeInput {
  /** Canonical gate texts (normalizeFederatedGates). */
  gates: readonly string[];
  /** The final head's evaluation and the base version's head's, on the same devices. */
  candidate: FederatedEvaluationTally;
  parent: FederatedEvaluationTally;
  limits: EvaluationLimits;
  nowMs: number;
}

/**
 * Judges the candidate head against the parent's with the retraining gate's rules, the devices'
 * held-out samples as the "test" split. Below limits.minSplitRows samples the verdict is
 * inconclusive (no version); the two heads evaluated on different numbers of samples are refused
 * (FEDERATED_REPORT_INVALID): the comparison would not be on the same data.
 */
export function judgeFederatedCandidate(input: FederatedJudgeInput): FederatedJudgement {
  if (input.candidate.classes !== input.parent.classes) {
    throw new DriftlineError(
      'FEDERATED_REPORT_INVALID',
      `the candidate was evaluated over ${input.candidate.classes} classes, the parent over ${input.parent.classes}`,
    );
  }
  const candidate = metricsOfTally(input.candidate);
  const parent = metricsOfTally(input.parent);
  if (candidate.rows !== parent.rows) {
    throw new DriftlineError(
      'FEDERATED_REPORT_INVALID',
      `the candidate was evaluated on ${candidate.rows} samples and the parent on ${parent.rows}: not the same held-out samples`,
      { details: { candidateRows: candidate.rows, parentRows: parent.rows } },
    );
  }
  const gates = input.gates.map(parseEvaluationGate);
  const report = judgeCandidate(gates, [{ split: 'test', candidate, parent }], input.limits, input.nowMs);
  const notes = ['expected calibration error is not measured in a federated evaluation (reported as 0)'];
  if (!candidate.macroF1Exact || !parent.macroF1Exact)
    notes.push('macro F1 is approximated as the mean per-class recall (not every device counts its predictions per class)');
  return { report, candidate, parent, notes };
}

/** One device's evaluation of one head. */
export interface DeviceEvaluation {
  deviceId: string;
  sums: EvaluationReportSums;
}

/**
 * The tallies of two heads over only the devices that evaluated both (so both figures come from
 * the same samples); a device answering twice for a head is refused (FEDERATED_REPORT_INVALID).
 */
export function pairedTallies(
  candidate: readonly DeviceEvaluation[],
  parent: readonly DeviceEvaluation[],
  classes: number,
): { candidate: FederatedEvaluationTally; parent: FederatedEvaluationTally; unpaired: number } {
  const byDevice = (list: readonly DeviceEvaluation[], which: string): Map<string, EvaluationReportSums> => {
    const map = new Map<string, EvaluationReportSums>();
    for (const { deviceId, sums } of list) {
      if (map.has(deviceId))
        throw new DriftlineError('FEDERATED_REPORT_INVALID', `device ${deviceId} evaluated the ${which} head twice`, { details: { deviceId } });
      map.set(deviceId, sums);
    }
    return map;
  };
  const c = byDevice(candidate, 'candidate');
  const p = byDevice(parent, 'parent');
  const paired = [...c.keys()].filter((id) => p.has(id)).sort();
  return {
    candidate: paired.map((id) => c.get(id)!).reduce(addReport, emptyTally(classes)),
    parent: paired.map((id) => p.get(id)!).reduce(addReport, emptyTally(classes)),
    unpaired: c.size + p.size - 2 * paired.length,
  };
}
