import { describe, expect, it } from 'vitest';
import { DriftlineError } from '../common/errors.js';
import {
  classificationMetrics,
  judgeCandidate,
  normalizeEvaluationGates,
  parseEvaluationGate,
  type ClassificationMetrics,
  type SplitEvaluation,
} from '../control-plane/training/evaluation.js';

// Four rows, three classes; the numbers below are worked out by hand in the comments.
const labels = [0, 1, 2, 1];
const probabilities = [
  [0.7, 0.2, 0.1], // predicts 0, right, confidence 0.7
  [0.1, 0.6, 0.3], // predicts 1, right, confidence 0.6
  [0.2, 0.5, 0.3], // predicts 1, wrong (2), confidence 0.5
  [0.5, 0.4, 0.1], // predicts 0, wrong (1), confidence 0.5
].flat();

const metrics = (over: Partial<ClassificationMetrics>): ClassificationMetrics => ({
  rows: 100,
  accuracy: 0.8,
  macroF1: 0.8,
  perClassRecall: [0.8, 0.8],
  perClassSupport: [50, 50],
  logLoss: 0.5,
  expectedCalibrationError: 0.05,
  ...over,
});
const split = (role: SplitEvaluation['split'], candidate: Partial<ClassificationMetrics>, parent: Partial<ClassificationMetrics> = {}): SplitEvaluation => ({
  split: role,
  candidate: metrics(candidate),
  parent: metrics(parent),
});
const gates = (...texts: string[]) => texts.map(parseEvaluationGate);
const limits = { minSplitRows: 30 };

describe('training evaluation metrics', () => {
  it('computes accuracy, macro F1, per-class recall, log loss and ECE on a worked example', () => {
    const m = classificationMetrics(labels, probabilities, 3);
    expect(m.rows).toBe(4);
    expect(m.accuracy).toBe(0.5); // 2 of 4
    expect(m.perClassRecall).toEqual([1, 0.5, 0]); // 1/1, 1/2, 0/1
    expect(m.perClassSupport).toEqual([1, 2, 1]);
    // F1 per class: 2·1/(1+2) = 2/3, 2·1/(2+2) = 1/2, 0 → mean 7/18.
    expect(m.macroF1).toBeCloseTo(7 / 18, 12);
    // −(ln 0.7 + ln 0.6 + ln 0.3 + ln 0.4) / 4
    expect(m.logLoss).toBeCloseTo(-(Math.log(0.7) + Math.log(0.6) + Math.log(0.3) + Math.log(0.4)) / 4, 12);
    expect(m.logLoss).toBeCloseTo(0.746941, 5);
    // Bins: 0.7 → |1 − 0.7|·¼, 0.6 → |1 − 0.6|·¼, 0.5 and 0.5 → |0 − 0.5|·½: 0.075 + 0.1 + 0.25.
    expect(m.expectedCalibrationError).toBeCloseTo(0.425, 12);
  });

  it('costs a confident wrong answer a large but finite log loss, and puts confidence 1 in the last bin', () => {
    const m = classificationMetrics([1], [1, 0], 2);
    expect(m.logLoss).toBeCloseTo(-Math.log(1e-15), 6);
    expect(m.expectedCalibrationError).toBe(1);
    expect(m.macroF1).toBe(0); // class 0 predicted never right, class 1 never predicted
  });

  it('refuses labels out of range, NaN probabilities and a shape that does not fit', () => {
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return (err as DriftlineError).code;
      }
      return undefined;
    };
    expect(code(() => classificationMetrics([3], [0.5, 0.5], 2))).toBe('REQUEST_INVALID');
    expect(code(() => classificationMetrics([0], [Number.NaN, 0.5], 2))).toBe('REQUEST_INVALID');
    expect(code(() => classificationMetrics([0, 1], [0.5, 0.5], 2))).toBe('REQUEST_INVALID');
  });
});

describe('training evaluation gates', () => {
  it('parses the gate rules and refuses unknown metrics with REQUEST_INVALID', () => {
    expect(parseEvaluationGate('accuracy-delta>=0.01')).toEqual({ metric: 'accuracy-delta', op: '>=', threshold: 0.01 });
    expect(parseEvaluationGate(' regression-accuracy-delta >= -0.005 ')).toEqual({ metric: 'regression-accuracy-delta', op: '>=', threshold: -0.005 });
    expect(normalizeEvaluationGates([])).toEqual(['accuracy-delta>=0', 'regression-accuracy-delta>=-0.005', 'class-recall-drop<=0.05']);
    expect(normalizeEvaluationGates(['none'])).toEqual([]);
    expect(() => parseEvaluationGate('p95-latency-ratio<=1.5')).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
    expect(() => parseEvaluationGate('accuracy-delta=1')).toThrow(expect.objectContaining({ code: 'REQUEST_INVALID' }));
  });

  it('passes a candidate better on the cohort and no worse elsewhere, a value at the threshold included', () => {
    const report = judgeCandidate(
      gates('accuracy-delta>=0.01', 'regression-accuracy-delta>=-0.005', 'class-recall-drop<=0.05', 'macro-f1-delta>=0', 'log-loss-delta<=0'),
      [split('test', { accuracy: 0.81, macroF1: 0.85, logLoss: 0.4 }), split('regression', { accuracy: 0.795, perClassRecall: [0.75, 0.9] })],
      limits,
      5,
    );
    expect(report.verdict).toBe('pass');
    expect(report.reason).toBe('');
    expect(report.gates.map((g) => [g.gate, g.verdict, g.value])).toEqual([
      ['accuracy-delta>=0.01', 'pass', 0.01],
      ['regression-accuracy-delta>=-0.005', 'pass', -0.005],
      ['class-recall-drop<=0.05', 'pass', 0.05],
      ['macro-f1-delta>=0', 'pass', 0.05],
      ['log-loss-delta<=0', 'pass', -0.1],
    ]);
    expect(report.evaluatedAtMs).toBe(5);
  });

  it('fails a candidate that forgets a class on the regression split, naming the class', () => {
    const report = judgeCandidate(
      gates('accuracy-delta>=0', 'class-recall-drop<=0.05'),
      [split('test', { accuracy: 0.9 }), split('regression', { perClassRecall: [0.9, 0.6] })],
      limits,
      0,
    );
    expect(report.verdict).toBe('fail');
    expect(report.gates[1]).toMatchObject({ verdict: 'fail', value: 0.2 });
    expect(report.reason).toMatch(/^class-recall-drop<=0.05: class 1 recall .* regression split/);
  });

  it('is inconclusive on a split below the minimum size or missing, never a pass', () => {
    const small = judgeCandidate(
      gates('accuracy-delta>=0', 'regression-accuracy-delta>=0'),
      [split('test', { accuracy: 0.9, rows: 29 }, { rows: 29 })],
      limits,
      0,
    );
    expect(small.verdict).toBe('inconclusive');
    expect(small.gates.map((g) => g.detail)).toEqual(['only 29 rows in the test split (need 30)', 'no regression split']);
    // A failing gate on enough data wins over an inconclusive one.
    const mixed = judgeCandidate(gates('accuracy-delta>=0', 'regression-accuracy-delta>=0'), [split('test', { accuracy: 0.7 })], limits, 0);
    expect(mixed.verdict).toBe('fail');
  });

  it('judges the one-row latency ratio on the test split, inconclusive where it was not measured', () => {
    const fast = judgeCandidate(gates('latency-ratio<=1.5'), [split('test', { latencyP50Ms: 0.3 }, { latencyP50Ms: 0.25 })], limits, 0);
    expect(fast.verdict).toBe('pass');
    expect(fast.gates[0]!.value).toBeCloseTo(1.2);
    const slow = judgeCandidate(gates('latency-ratio<=1.5'), [split('test', { latencyP50Ms: 0.8 }, { latencyP50Ms: 0.25 })], limits, 0);
    expect(slow.verdict).toBe('fail');
    expect(slow.gates[0]!.detail).toMatch(/one-row p50 latency 0\.800 ms vs 0\.250 ms/);
    const unmeasured = judgeCandidate(gates('latency-ratio<=1.5'), [split('test', {})], limits, 0);
    expect(unmeasured.verdict).toBe('inconclusive');
    expect(unmeasured.gates[0]!.detail).toBe('no latency measured on the test split');
  });
});
