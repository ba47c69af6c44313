import { DriftlineError } from '../../common/errors.js';
import { seededRandom, type SeededRandom } from './seeded-random.js';

/**
 * Synthetic condition-monitoring features for rotating machines (pumps, fans, motors),
 * the kind an edge box computes from an accelerometer and a thermocouple every few seconds.
 */
export const VIBRATION_FEATURES = [
  'rms_velocity', // mm/s, overall vibration severity (ISO 10816)
  'peak_accel', // g
  'crest_factor', // peak / rms of acceleration
  'kurtosis', // impulsiveness; 3 for a Gaussian signal
  'band_1x', // mm/s at running speed
  'band_2x', // mm/s at twice running speed
  'band_bearing', // g, envelope energy around bearing defect frequencies
  'temperature_c', // housing temperature
] as const;

export const VIBRATION_CLASSES = ['normal', 'imbalance', 'misalignment', 'bearing_fault'] as const;

export type VibrationClass = (typeof VIBRATION_CLASSES)[number];

/**
 * Sensor aging and recalibration across a fleet: accelerometer gain creeps up, the noise
 * floor of the envelope band rises, and the summer makes housings hotter. What a fault looks
 * like does not change, so labels keep their meaning while the feature distributions move.
 */
export type DriftOption = boolean | { severity: number };

export interface VibrationData {
  /** rows * features.length values, row-major. */
  x: Float32Array;
  y: Int32Array;
  featureNames: string[];
  classNames: string[];
}

export interface VibrationRow {
  features: number[];
  label: number;
}

const FEATURE_COUNT = VIBRATION_FEATURES.length;
// A fleet is mostly healthy machines.
const CLASS_WEIGHTS = [0.4, 0.2, 0.2, 0.2];
const [NORMAL, IMBALANCE, MISALIGNMENT, BEARING_FAULT] = [0, 1, 2, 3] as const;

/** An endless stream of labelled rows; the first n rows of a seed are generateVibrationData's rows. */
export function vibrationRowSampler(seed: number, options: { drift?: DriftOption } = {}): () => VibrationRow {
  const rng = seededRandom(seed);
  const severity = driftSeverity(options.drift);
  return () => {
    const label = rng.pick(CLASS_WEIGHTS);
    return { features: measure(sampleMachine(rng, label), severity).map(Math.fround), label };
  };
}

export function generateVibrationData(options: { rows: number; seed: number; drift?: DriftOption }): VibrationData {
  const next = vibrationRowSampler(options.seed, options);
  const x = new Float32Array(options.rows * FEATURE_COUNT);
  const y = new Int32Array(options.rows);
  for (let r = 0; r < options.rows; r++) {
    const row = next();
    x.set(row.features, r * FEATURE_COUNT);
    y[r] = row.label;
  }
  return { x, y, featureNames: [...VIBRATION_FEATURES], classNames: [...VIBRATION_CLASSES] };
}

function driftSeverity(drift: DriftOption | undefined): number {
  if (drift === undefined || drift === false) return 0;
  if (drift === true) return 1;
  if (!Number.isFinite(drift.severity) || drift.severity < 0) {
    throw new DriftlineError('REQUEST_INVALID', `drift severity must be a finite number >= 0, got ${drift.severity}`);
  }
  return drift.severity;
}

/** The true physical state of one machine, before any sensor sees it. */
function sampleMachine(rng: SeededRandom, label: number): number[] {
  const load = rng.uniform(0.5, 1);
  // Early-stage faults are faint and overlap healthy machines; that is where errors come from.
  const sev = label === NORMAL ? 0 : rng.uniform(0.1, 1);
  const is = (c: number): number => (label === c ? sev : 0);

  const band1x = (1.0 * load + 4.0 * is(IMBALANCE) + 1.4 * is(MISALIGNMENT)) * rng.logNormal(0.3);
  const band2x = (0.4 * load + 0.3 * is(IMBALANCE) + 2.8 * is(MISALIGNMENT)) * rng.logNormal(0.3);
  const bandBearing = (0.12 + 0.9 * is(BEARING_FAULT)) * rng.logNormal(0.35);
  const rmsVelocity = Math.hypot(band1x, band2x, 0.8 * load, 0.6 * is(BEARING_FAULT)) * rng.logNormal(0.1);
  const kurtosis = Math.max(1.5, 3 + 4 * is(BEARING_FAULT) - 0.3 * is(IMBALANCE) + rng.normal(0, 0.4));
  const crestFactor = Math.max(1.2, 2.9 + 0.35 * (kurtosis - 3) + rng.normal(0, 0.3));
  const peakAccel = (0.12 * rmsVelocity + 0.8 * bandBearing) * (crestFactor / 3) * rng.logNormal(0.15);
  const ambient = rng.normal(24, 3);
  const temperature = ambient + 18 * load + 3 * is(IMBALANCE) + 8 * is(MISALIGNMENT) + 10 * is(BEARING_FAULT) + rng.normal(0, 2.5);
  return [rmsVelocity, peakAccel, crestFactor, kurtosis, band1x, band2x, bandBearing, temperature];
}

/**
 * What an aged sensor reports. Crest factor and kurtosis are ratios of the same signal,
 * so a gain error cancels out of them; that is physics, not a shortcut.
 */
function measure(state: number[], severity: number): number[] {
  if (severity === 0) return state;
  const [rmsVelocity, peakAccel, crestFactor, kurtosis, band1x, band2x, bandBearing, temperature] = state as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const gain = 1 + 0.35 * severity;
  return [
    rmsVelocity * gain,
    peakAccel * gain,
    crestFactor,
    kurtosis,
    band1x * gain,
    band2x * gain,
    bandBearing * gain + 0.05 * severity,
    temperature + 6 * severity,
  ];
}

/** CSV with a header of feature names then 'label'; labels are class names. */
export function toCsv(data: VibrationData): string {
  const width = data.featureNames.length;
  const lines = [[...data.featureNames, 'label'].join(',')];
  for (let r = 0; r < data.y.length; r++) {
    const values = Array.from(data.x.subarray(r * width, (r + 1) * width), formatFloat32);
    lines.push([...values, data.classNames[data.y[r]!]].join(','));
  }
  return lines.join('\n') + '\n';
}

/** Nine significant digits round-trip any float32 exactly, without float64 noise digits. */
const formatFloat32 = (v: number): string => String(Number(v.toPrecision(9)));

/** Reads what toCsv wrote; the header must name this demo's features in order. */
export function fromCsv(text: string): VibrationData {
  const lines = text.split(/\r?\n/).filter((line) => line.trim() !== '');
  const header = lines[0]?.split(',').map((h) => h.trim());
  const expected = [...VIBRATION_FEATURES, 'label'];
  if (!header || header.join(',') !== expected.join(',')) {
    throw new DriftlineError('PAYLOAD_MALFORMED', `CSV header must be ${expected.join(',')}`, { details: { header } });
  }
  const rows = lines.length - 1;
  const x = new Float32Array(rows * FEATURE_COUNT);
  const y = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const cells = lines[r + 1]!.split(',').map((c) => c.trim());
    const label = (VIBRATION_CLASSES as readonly string[]).indexOf(cells[FEATURE_COUNT] ?? '');
    const values = cells.slice(0, FEATURE_COUNT).map((c) => (c === '' ? Number.NaN : Number(c)));
    if (cells.length !== FEATURE_COUNT + 1 || label < 0 || values.some((v) => !Number.isFinite(v))) {
      throw new DriftlineError('PAYLOAD_MALFORMED', `CSV line ${r + 2} is not ${FEATURE_COUNT} numbers and a class name`, { details: { line: r + 2 } });
    }
    x.set(values, r * FEATURE_COUNT);
    y[r] = label;
  }
  return { x, y, featureNames: [...VIBRATION_FEATURES], classNames: [...VIBRATION_CLASSES] };
}
