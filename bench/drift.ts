/**
 * npm run bench:drift: how many rows the fleet drift verdict needs to name a mean shift of
 * 0.1, 0.25 and 0.5 standard deviations on one feature of eight, and how often it raises a
 * warning or an alert on clean data, against, in the same run, a bare baseline: the exact
 * two-sample KS statistic on the raw values (not binned) with its Kolmogorov p-value and
 * Benjamini-Hochberg across the features. Generated data (demo/model/shifted-normal.ts), seeded.
 * Prints one JSON line of figures last.
 *
 * Rows to detect: per trial, rows arrive in steps (a geometric grid, x sqrt 2); the first step
 * at which the shifted feature is named (below_floor, warn or alert; for the baseline: adjusted
 * p < alpha) is that trial's figure; the median over the trials is reported.
 */
import { kolmogorovSurvival, benjaminiHochberg } from '../common/drift/statistics.js';
import { SketchBuilder } from '../common/drift/sketch.js';
import { DEFAULT_DRIFT_THRESHOLDS, evaluateDrift } from '../control-plane/drift/evaluate.js';
import { normalReference, normalRows } from '../demo/model/shifted-normal.js';

const FEATURES = 8;
const REFERENCE_ROWS = Number(process.env.BENCH_REFERENCE_ROWS ?? 20_000);
const TRIALS = Number(process.env.BENCH_TRIALS ?? 15);
const CLEAN_WINDOWS = Number(process.env.BENCH_CLEAN_WINDOWS ?? 1000);
const MAX_ROWS = 102_400;
const GRID = Array.from({ length: 40 }, (_, k) => Math.round(50 * Math.SQRT2 ** k)).filter((n) => n <= MAX_ROWS);
const alpha = DEFAULT_DRIFT_THRESHOLDS.alpha;
const log = (line: string): void => void process.stderr.write(`${line}\n`);

const referenceRows = normalRows(1, REFERENCE_ROWS, FEATURES);
const reference = normalReference(1, REFERENCE_ROWS, FEATURES);
const sortedReference = Array.from({ length: FEATURES }, (_, j) => Float64Array.from(referenceRows.map((r) => r[j]!)).sort());

/** Exact two-sample KS statistic on raw values (both sorted), with the asymptotic Kolmogorov p-value (Stephens' correction). */
function exactKs(a: Float64Array, b: Float64Array): number {
  let i = 0;
  let j = 0;
  let d = 0;
  while (i < a.length && j < b.length) {
    const x = Math.min(a[i]!, b[j]!);
    while (i < a.length && a[i]! <= x) i++;
    while (j < b.length && b[j]! <= x) j++;
    d = Math.max(d, Math.abs(i / a.length - j / b.length));
  }
  const ne = Math.sqrt((a.length * b.length) / (a.length + b.length));
  return kolmogorovSurvival((ne + 0.12 + 0.11 / ne) * d);
}

function baselineNames(rows: readonly (readonly number[])[], n: number): boolean[] {
  const p = Array.from({ length: FEATURES }, (_, j) => exactKs(sortedReference[j]!, Float64Array.from(rows.slice(0, n).map((r) => r[j]!)).sort()));
  return benjaminiHochberg(p).map((q) => q < alpha);
}

const NAMED = new Set(['below_floor', 'warn', 'alert']);

/** Median rows to name a shift of `sigma` on feature 0, for the verdict and for the baseline. */
function rowsToDetect(sigma: number): { verdict: number; baseline: number } {
  const verdict: number[] = [];
  const baseline: number[] = [];
  for (let trial = 0; trial < TRIALS; trial++) {
    const rows = normalRows(1000 + trial * 7 + Math.round(sigma * 1000), MAX_ROWS, FEATURES, { feature: 0, sigma });
    const builder = new SketchBuilder(reference, 'bench', 1, 0);
    let seen = 0;
    let found = Number.POSITIVE_INFINITY;
    let foundBaseline = Number.POSITIVE_INFINITY;
    for (const n of GRID) {
      const chunk = rows.slice(seen, n);
      builder.observeFeatures(chunk.flat(), chunk.length, FEATURES);
      seen = n;
      if (found === Number.POSITIVE_INFINITY && NAMED.has(evaluateDrift(reference, builder.finish(1)).features[0]!.status)) found = n;
      if (foundBaseline === Number.POSITIVE_INFINITY && baselineNames(rows, n)[0]) foundBaseline = n;
      if (found < Number.POSITIVE_INFINITY && foundBaseline < Number.POSITIVE_INFINITY) break;
    }
    verdict.push(found);
    baseline.push(foundBaseline);
  }
  const median = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor((s.length - 1) / 2)]!;
  };
  return { verdict: median(verdict), baseline: median(baseline) };
}

function cleanRates(rows: number): { alarms: number; alerts: number; baseline: number } {
  let alarms = 0;
  let alerts = 0;
  let baseline = 0;
  for (let w = 0; w < CLEAN_WINDOWS; w++) {
    const data = normalRows(50_000 + w, rows, FEATURES);
    const builder = new SketchBuilder(reference, 'bench', 1, 0);
    builder.observeFeatures(data.flat(), rows, FEATURES);
    const status = evaluateDrift(reference, builder.finish(1)).status;
    if (status === 'warn' || status === 'alert') alarms++;
    if (status === 'alert') alerts++;
    if (baselineNames(data, rows).some(Boolean)) baseline++;
  }
  return { alarms: alarms / CLEAN_WINDOWS, alerts: alerts / CLEAN_WINDOWS, baseline: baseline / CLEAN_WINDOWS };
}

function main(): void {
  const started = performance.now();
  const detect: Record<string, { verdict: number; baseline: number }> = {};
  for (const sigma of [0.1, 0.25, 0.5]) {
    detect[sigma] = rowsToDetect(sigma);
    log(`shift ${sigma} sigma: verdict names it at ${detect[sigma]!.verdict} rows (median of ${TRIALS}), exact KS + BH at ${detect[sigma]!.baseline}`);
  }
  const minRows = evaluateDrift(reference, new SketchBuilder(reference, 'bench', 1, 0).finish(1)).minRows;
  const clean = cleanRates(minRows);
  const clean1000 = cleanRates(1000);
  log(
    `clean windows of ${minRows} rows (the minimum): ${(clean.alarms * 100).toFixed(1)} % warn or alert, ${(clean.alerts * 100).toFixed(1)} % alert; exact KS + BH ${(clean.baseline * 100).toFixed(1)} %`,
  );
  log(`clean windows of 1000 rows: ${(clean1000.alarms * 100).toFixed(1)} % warn or alert; exact KS + BH ${(clean1000.baseline * 100).toFixed(1)} %`);
  const at = (x: number): number | null => (Number.isFinite(x) ? x : null);
  console.log(
    JSON.stringify({
      rows_to_detect_0_1: at(detect[0.1]!.verdict),
      rows_to_detect_0_25: at(detect[0.25]!.verdict),
      rows_to_detect_0_5: at(detect[0.5]!.verdict),
      exact_ks_rows_to_detect_0_1: at(detect[0.1]!.baseline),
      exact_ks_rows_to_detect_0_25: at(detect[0.25]!.baseline),
      exact_ks_rows_to_detect_0_5: at(detect[0.5]!.baseline),
      ratio_0_25: Number((detect[0.25]!.verdict / detect[0.25]!.baseline).toFixed(2)),
      false_alert_rate: clean.alarms,
      false_alert_only_rate: clean.alerts,
      false_alert_rate_1000_rows: clean1000.alarms,
      exact_ks_false_alert_rate: clean.baseline,
      clean_window_rows: minRows,
      clean_windows: CLEAN_WINDOWS,
      trials: TRIALS,
      features: FEATURES,
      reference_rows: REFERENCE_ROWS,
      alpha,
      seconds: Number(((performance.now() - started) / 1000).toFixed(1)),
    }),
  );
}

main();
