/**
 * Federated evaluation into the retraining gate, pure: the devices' held-out sums become the same
 * ClassificationMetrics the gate judges (checked against classificationMetrics over the very rows
 * the sums were taken from), reports that do not add up are refused with a stable code, and the
 * gate passes a better head, fails a worse one and stays inconclusive on too few samples.
 */
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../common/seeded-random.js';
import { classificationMetrics } from '../control-plane/training/evaluation.js';
import {
  FEDERATED_DEFAULT_GATES,
  judgeFederatedCandidate,
  normalizeFederatedGates,
  pairedTallies,
  tallyOfCounts,
  type DeviceEvaluation,
} from '../control-plane/federated/release/federated-judge.js';
import { addReport, emptyTally, federatedMetrics, metricsOfTally, type EvaluationReportSums } from '../control-plane/federated/release/federated-metrics.js';

const CLASSES = 3;

/** Rows of one device: labels and softmax probabilities (rows × classes), right with probability `skill`. */
function deviceRows(seed: number, rows: number, skill: number): { labels: number[]; probabilities: number[] } {
  const random = seededRandom(seed);
  const labels: number[] = [];
  const probabilities: number[] = [];
  for (let r = 0; r < rows; r++) {
    // Non-IID: each device leans to one class.
    const label = random.next() < 0.6 ? seed % CLASSES : random.int(CLASSES);
    const predicted = random.next() < skill ? label : (label + 1 + random.int(CLASSES - 1)) % CLASSES;
    const p = Array.from({ length: CLASSES }, () => 0.1 + random.next() * 0.2);
    p[predicted] = 1;
    const sum = p.reduce((a, b) => a + b, 0);
    labels.push(label);
    probabilities.push(...p.map((v) => v / sum));
  }
  return { labels, probabilities };
}

/** What a device reports for its rows (computed independently of the code under test). */
function sumsOf(rows: { labels: number[]; probabilities: number[] }, countPredicted = true): EvaluationReportSums {
  const support = new Array<number>(CLASSES).fill(0);
  const correct = new Array<number>(CLASSES).fill(0);
  const predicted = new Array<number>(CLASSES).fill(0);
  let loss = 0;
  rows.labels.forEach((label, r) => {
    const p = rows.probabilities.slice(r * CLASSES, (r + 1) * CLASSES);
    const best = p.indexOf(Math.max(...p));
    support[label]!++;
    predicted[best]!++;
    if (best === label) correct[label]!++;
    loss -= Math.log(p[label]!);
  });
  return {
    evalSamples: rows.labels.length,
    evalCorrect: correct.reduce((a, b) => a + b, 0),
    evalLoss: loss / rows.labels.length,
    perClassSupport: support,
    perClassCorrect: correct,
    perClassPredicted: countPredicted ? predicted : [],
  };
}

const fleet = (skill: number, seeds = [1, 2, 3, 4]) => seeds.map((seed) => deviceRows(seed * 7 + Math.round(skill * 100), 40 + seed * 13, skill));

describe('federated release - evaluation sums as classification metrics', () => {
  it('federated metrics - equal classificationMetrics over the same rows (accuracy, recall, log loss, exact macro F1)', () => {
    const devices = fleet(0.7);
    const all = { labels: devices.flatMap((d) => d.labels), probabilities: devices.flatMap((d) => d.probabilities) };
    const reference = classificationMetrics(all.labels, all.probabilities, CLASSES);
    const summed = federatedMetrics(
      devices.map((d) => sumsOf(d)),
      CLASSES,
    );
    expect(summed.rows).toBe(reference.rows);
    expect(summed.accuracy).toBeCloseTo(reference.accuracy, 12);
    expect(summed.perClassSupport).toEqual(reference.perClassSupport);
    summed.perClassRecall.forEach((r, c) => expect(r).toBeCloseTo(reference.perClassRecall[c]!, 12));
    expect(summed.logLoss).toBeCloseTo(reference.logLoss, 9);
    expect(summed.macroF1Exact).toBe(true);
    expect(summed.macroF1).toBeCloseTo(reference.macroF1, 12);
    expect(summed.devices).toBe(4);
  });

  it('federated metrics - approximate macro F1 as mean recall and say so when a device does not count predictions; ECE is 0', () => {
    const devices = fleet(0.7);
    const reports = devices.map((d, i) => sumsOf(d, i !== 2));
    const m = federatedMetrics(reports, CLASSES);
    expect(m.macroF1Exact).toBe(false);
    const withSupport = m.perClassRecall.filter((_, c) => m.perClassSupport[c]! > 0);
    expect(m.macroF1).toBeCloseTo(withSupport.reduce((a, b) => a + b, 0) / withSupport.length, 12);
    expect(m.expectedCalibrationError).toBe(0);
    expect(m.calibrationMeasured).toBe(false);
  });

  it('federated metrics - no devices give zero rows and zero figures, not NaN', () => {
    const m = metricsOfTally(emptyTally(CLASSES));
    expect(m).toMatchObject({ rows: 0, accuracy: 0, macroF1: 0, logLoss: 0, devices: 0 });
  });

  const good = sumsOf(deviceRows(3, 50, 0.8));
  it.each<[string, Partial<EvaluationReportSums>]>([
    ['support that does not sum to eval_samples', { evalSamples: good.evalSamples + 1 }],
    ['correct that does not sum to eval_correct', { evalCorrect: good.evalCorrect - 1 }],
    ['more correct than support in a class', { perClassCorrect: [good.perClassSupport[0]! + 1, 0, 0], evalCorrect: good.perClassSupport[0]! + 1 }],
    ['a per-class array of the wrong length', { perClassSupport: [...good.perClassSupport, 0] }],
    ['predictions per class of the wrong length', { perClassPredicted: [1, 2] }],
    ['fewer predictions than correct answers', { perClassPredicted: [0, 0, good.evalSamples] }],
    ['a loss that is not finite', { evalLoss: Number.NaN }],
    ['a negative loss', { evalLoss: -1 }],
    ['a fractional count', { evalSamples: 10.5 }],
    ['an absurd sample count', { evalSamples: 1e12 }],
  ])('federated metrics - refuse a report with %s (FEDERATED_REPORT_INVALID), leaving the tally as it was', (_, change) => {
    const tally = addReport(emptyTally(CLASSES), good);
    expect(() => addReport(tally, { ...good, ...change })).toThrow(expect.objectContaining({ code: 'FEDERATED_REPORT_INVALID' }));
    expect(tally.devices).toBe(1);
    expect(tally.samples).toBe(good.evalSamples);
  });

  it('federated metrics - refuse a head of no classes or of absurdly many (REQUEST_INVALID) before allocating', () => {
    expect(() => emptyTally(0)).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
    expect(() => emptyTally(1e9)).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
  });
});

describe('federated release - the evaluation gate', () => {
  const tally = (skill: number, countPredicted = true) =>
    fleet(skill)
      .map((d) => sumsOf(d, countPredicted))
      .reduce(addReport, emptyTally(CLASSES));
  const limits = { minSplitRows: 50 };
  const gates = normalizeFederatedGates([]);

  it('federated gate - passes a head better on the cohort than the base head, with the metrics of both', () => {
    const judged = judgeFederatedCandidate({ gates, candidate: tally(0.9), parent: tally(0.5), limits, nowMs: 42 });
    expect(judged.report.verdict).toBe('pass');
    expect(judged.report.evaluatedAtMs).toBe(42);
    expect(judged.report.splits).toHaveLength(1);
    expect(judged.report.splits[0]!.split).toBe('test');
    expect(judged.candidate.accuracy).toBeGreaterThan(judged.parent.accuracy);
    expect(judged.notes.join(' ')).toMatch(/calibration/);
  });

  it('federated gate - fails a head worse than the base head and names the accuracy gate', () => {
    const judged = judgeFederatedCandidate({ gates, candidate: tally(0.4), parent: tally(0.9), limits, nowMs: 0 });
    expect(judged.report.verdict).toBe('fail');
    expect(judged.report.gates.find((g) => g.gate === 'accuracy-delta>=0')?.verdict).toBe('fail');
  });

  it('federated gate - is inconclusive on fewer paired samples than the limit (no version follows)', () => {
    const judged = judgeFederatedCandidate({ gates, candidate: tally(0.9), parent: tally(0.5), limits: { minSplitRows: 10_000 }, nowMs: 0 });
    expect(judged.report.verdict).toBe('inconclusive');
  });

  it('federated gate - refuses heads evaluated on different samples (FEDERATED_REPORT_INVALID)', () => {
    const parent = fleet(0.5, [1, 2, 3])
      .map((d) => sumsOf(d))
      .reduce(addReport, emptyTally(CLASSES));
    expect(() => judgeFederatedCandidate({ gates, candidate: tally(0.9), parent, limits, nowMs: 0 })).toThrow(
      expect.objectContaining({ code: 'FEDERATED_REPORT_INVALID' }),
    );
  });

  it('federated gate - the engine’s summed counts judge as the per-device tally does, predicted counts optional', () => {
    const t = tally(0.9);
    const counts = {
      devices: t.devices,
      samples: t.samples,
      correct: t.correct,
      loss: t.lossSum / t.samples,
      perClassSupport: t.support,
      perClassCorrect: t.truePositives,
    };
    const approximated = tallyOfCounts(counts, CLASSES);
    expect(metricsOfTally(approximated).macroF1Exact).toBe(false);
    expect(metricsOfTally(approximated).accuracy).toBeCloseTo(metricsOfTally(t).accuracy, 12);
    const exact = tallyOfCounts({ ...counts, perClassPredicted: t.predicted }, CLASSES);
    expect(metricsOfTally(exact).macroF1).toBeCloseTo(metricsOfTally(t).macroF1, 12);
    expect(() => tallyOfCounts({ ...counts, correct: counts.correct + 1 }, CLASSES)).toThrow(expect.objectContaining({ code: 'FEDERATED_REPORT_INVALID' }));
  });

  it('federated gate - compares only devices that evaluated both heads; a device answering twice is refused', () => {
    const rows = fleet(0.7);
    const as = (prefix: string, list: typeof rows, skip?: number): DeviceEvaluation[] =>
      list.flatMap((d, i) => (i === skip ? [] : [{ deviceId: `${prefix}${i}`, sums: sumsOf(d) }]));
    const paired = pairedTallies(as('d', rows), as('d', rows, 1), CLASSES);
    expect(paired.unpaired).toBe(1);
    expect(paired.candidate.devices).toBe(3);
    expect(paired.candidate.samples).toBe(paired.parent.samples);
    const twice = [...as('d', rows), as('d', rows)[0]!];
    expect(() => pairedTallies(twice, as('d', rows), CLASSES)).toThrow(expect.objectContaining({ code: 'FEDERATED_REPORT_INVALID' }));
  });

  it('federated gates - default to the retraining rules without the regression split; refuse what a federated evaluation cannot measure', () => {
    expect(FEDERATED_DEFAULT_GATES).toEqual(['accuracy-delta>=0', 'class-recall-drop<=0.05']);
    expect(normalizeFederatedGates(['none'])).toEqual([]);
    expect(normalizeFederatedGates(['accuracy-delta >= 0.01', 'macro-f1-delta>=0'])).toEqual(['accuracy-delta>=0.01', 'macro-f1-delta>=0']);
    for (const gate of ['regression-accuracy-delta>=0', 'latency-ratio<=1.5', 'accuracy>=1']) {
      expect(() => normalizeFederatedGates([gate])).toThrow(expect.objectContaining({ code: 'FEDERATED_TASK_INVALID' }));
    }
  });
});
