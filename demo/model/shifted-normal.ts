import { buildReference, type DriftReference } from '../../common/drift/reference.js';
import { SketchBuilder } from '../../common/drift/sketch.js';
import type { DriftSketch } from '../../common/proto/driftline/v1/drift.js';
import { seededRandom } from './seeded-random.js';

/**
 * Generated drift data with known shifts, for the drift power and false-alarm tests and
 * bench:drift: every feature is an independent N(0, 1); a shift moves one feature's mean by
 * `sigma` standard deviations, a broken sensor pins it to a constant.
 */
export interface Shift {
  feature: number;
  /** Mean shift in standard deviations. */
  sigma?: number;
  /** A broken sensor: this value on every row. */
  constant?: number;
}

export const featureNames = (count: number): string[] => Array.from({ length: count }, (_, j) => `f${j}`);

/** Row-major rows of `features` columns. */
export function normalRows(seed: number, rows: number, features: number, shift?: Shift): number[][] {
  const random = seededRandom(seed);
  return Array.from({ length: rows }, () =>
    Array.from({ length: features }, (_, j) => {
      const x = random.normal();
      if (!shift || shift.feature !== j) return x;
      return shift.constant !== undefined ? shift.constant : x + (shift.sigma ?? 0);
    }),
  );
}

export function normalReference(seed: number, rows: number, features: number): DriftReference {
  return buildReference(normalRows(seed, rows, features), { featureNames: featureNames(features), classNames: [] });
}

/** One window's sketch of rows against the reference (as a device makes it). */
export function sketchOfRows(reference: DriftReference, rows: readonly (readonly number[])[]): DriftSketch {
  const builder = new SketchBuilder(reference, 'generated', 1, 0);
  const columns = reference.features.length;
  const flat = new Float64Array(rows.length * columns);
  rows.forEach((r, i) => flat.set(r, i * columns));
  builder.observeFeatures(flat, rows.length, columns);
  builder.observeRequest(1, true);
  return builder.finish(1);
}
