import { DriftlineError } from '../../../common/errors.js';
import {
  DEFAULT_EVALUATION_GATES,
  judgeCandidate,
  normalizeEvaluationGates,
  parseEvaluationGate,
  type EvaluationLimits,
  type EvaluationReport,
} from '../../training/evaluation.js';
import { federatedMetrics, type EvaluationReportSums, type FederatedMetrics } from './federated-metrics.js';

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

/** One device's evaluation of one head. */
export interface DeviceEvaluation {
  deviceId: string;
  sums: EvaluationReportSums;
}

export interface FederatedJudgement {
  report: EvaluationReport;
  candidate: FederatedMetrics;
  parent: FederatedMetrics;
  /** Devices whose answers for both heads are in the figures. */
  devices: number;
  /** Devices that answered for one head only: left out of both figures. */
  unpaired: number;
  /** What the figures cannot say, for the version's metadata and the operator. */
  notes: string[];
}

export interface FederatedJudgeInput {
  /** Canonical gate texts (normalizeFederatedGates). */
  gates: readonly string[];
  classes: number;
  candidate: readonly DeviceEvaluation[];
  parent: readonly DeviceEvaluation[];
  limits: EvaluationLimits;
  nowMs: number;
}

/**
 * Judges the candidate head against the parent's. Each device counts once per head (a second
 * answer from the same device is refused with FEDERATED_REPORT_INVALID: the rounds engine
 * de-duplicates before this). Below limits.minSplitRows paired samples the verdict is inconclusive.
 */
export function judgeFederatedCandidate(input: FederatedJudgeInput): FederatedJudgement {
  const byDevice = (list: readonly DeviceEvaluation[], which: string): Map<string, EvaluationReportSums> => {
    const map = new Map<string, EvaluationReportSums>();
    for (const { deviceId, sums } of list) {
      if (map.has(deviceId))
        throw new DriftlineError('FEDERATED_REPORT_INVALID', `device ${deviceId} evaluated the ${which} head twice`, { details: { deviceId } });
      map.set(deviceId, sums);
    }
    return map;
  };
  const candidates = byDevice(input.candidate, 'candidate');
  const parents = byDevice(input.parent, 'parent');
  const paired = [...candidates.keys()].filter((id) => parents.has(id)).sort();
  const unpaired = candidates.size + parents.size - 2 * paired.length;
  const candidate = federatedMetrics(
    paired.map((id) => candidates.get(id)!),
    input.classes,
  );
  const parent = federatedMetrics(
    paired.map((id) => parents.get(id)!),
    input.classes,
  );
  // The same devices evaluated both heads; their held-out samples should be the same too.
  if (candidate.rows !== parent.rows) {
    throw new DriftlineError(
      'FEDERATED_REPORT_INVALID',
      `the paired devices evaluated the candidate on ${candidate.rows} samples and the parent on ${parent.rows}: not the same held-out samples`,
      { details: { candidateRows: candidate.rows, parentRows: parent.rows } },
    );
  }
  const gates = input.gates.map(parseEvaluationGate);
  const report = judgeCandidate(gates, [{ split: 'test', candidate, parent }], input.limits, input.nowMs);
  const notes = ['expected calibration error is not measured in a federated evaluation (reported as 0)'];
  if (!candidate.macroF1Exact || !parent.macroF1Exact)
    notes.push('macro F1 is approximated as the mean per-class recall (some devices do not count predictions per class)');
  if (unpaired > 0) notes.push(`${unpaired} device answers for one head only were left out`);
  return { report, candidate, parent, devices: paired.length, unpaired, notes };
}
