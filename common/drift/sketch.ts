import { DDSketch } from '@datadog/sketches-js';
import { DriftlineError } from '../errors.js';
import type { DriftSketch } from '../proto/driftline/v1/drift.js';
import { binIndex, referenceDigest, type DriftReference } from './reference.js';

/** Relative accuracy of latency quantiles; sketches merge only with the same value. */
export const LATENCY_RELATIVE_ACCURACY = 0.01;

/**
 * Accumulates one window of drift counts against a reference. Every field is a sum, so
 * the window's sketch merges with any other made against the same reference.
 */
export class SketchBuilder {
  private readonly digest: string;
  private readonly features: number[][];
  private readonly classCounts: number[];
  private readonly confidenceCounts: number[];
  private latency = new DDSketch({ relativeAccuracy: LATENCY_RELATIVE_ACCURACY });
  rows = 0;
  requests = 0;
  errors = 0;

  constructor(
    readonly reference: DriftReference,
    readonly model: string,
    readonly version: number,
    readonly windowStartMs: number,
  ) {
    this.digest = referenceDigest(reference);
    this.features = reference.features.map((f) => new Array<number>(f.edges.length + 1).fill(0));
    this.classCounts = reference.classes.names.map(() => 0);
    this.confidenceCounts = new Array<number>(reference.confidence.edges.length + 1).fill(0);
  }

  /** Rows of a row-major [rows, columns] tensor; columns beyond the reference's features are ignored. */
  observeFeatures(data: ArrayLike<number>, rows: number, columns: number): void {
    const n = Math.min(columns, this.features.length);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < n; j++) this.features[j]![binIndex(this.reference.features[j]!.edges, Number(data[r * columns + j]))]!++;
    }
    this.rows += rows;
  }

  observePrediction(topClass: number, confidence: number): void {
    if (topClass >= 0 && topClass < this.classCounts.length) this.classCounts[topClass]!++;
    if (Number.isFinite(confidence)) this.confidenceCounts[binIndex(this.reference.confidence.edges, confidence)]!++;
  }

  observeRequest(latencyMs: number, ok: boolean): void {
    this.requests++;
    if (!ok) this.errors++;
    if (Number.isFinite(latencyMs) && latencyMs >= 0) this.latency.accept(latencyMs);
  }

  get empty(): boolean {
    return this.requests === 0 && this.rows === 0;
  }

  finish(windowEndMs: number): DriftSketch {
    return {
      model: this.model,
      version: this.version,
      windowStartMs: this.windowStartMs,
      windowEndMs,
      rows: this.rows,
      errors: this.errors,
      requests: this.requests,
      features: this.reference.features.map((f, j) => ({ name: f.name, counts: [...this.features[j]!] })),
      classCounts: [...this.classCounts],
      confidenceCounts: [...this.confidenceCounts],
      latencyDdsketch: this.latency.count > 0 ? Buffer.from(this.latency.toProto()) : Buffer.alloc(0),
      referenceDigest: this.digest,
    };
  }
}

const addCounts = (a: readonly number[], b: readonly number[], what: string): number[] => {
  if (a.length !== b.length) throw new DriftlineError('DRIFT_SKETCH_INCOMPATIBLE', `${what}: ${a.length} bins and ${b.length} bins do not merge`);
  return a.map((x, i) => x + b[i]!);
};

export function latencySketch(sketch: Pick<DriftSketch, 'latencyDdsketch'>): DDSketch {
  return sketch.latencyDdsketch.length > 0 ? DDSketch.fromProto(sketch.latencyDdsketch) : new DDSketch({ relativeAccuracy: LATENCY_RELATIVE_ACCURACY });
}

/** The sum of two sketches of the same model and reference; the window spans both. */
export function mergeSketches(a: DriftSketch, b: DriftSketch): DriftSketch {
  if (a.referenceDigest !== b.referenceDigest || a.model !== b.model) {
    throw new DriftlineError('DRIFT_SKETCH_INCOMPATIBLE', 'sketches of different models or references do not merge');
  }
  if (a.features.length !== b.features.length) throw new DriftlineError('DRIFT_SKETCH_INCOMPATIBLE', 'sketches with different features do not merge');
  const latency = latencySketch(a);
  if (b.latencyDdsketch.length > 0) latency.merge(latencySketch(b));
  return {
    model: a.model,
    version: a.version === b.version ? a.version : 0,
    windowStartMs: Math.min(a.windowStartMs, b.windowStartMs),
    windowEndMs: Math.max(a.windowEndMs, b.windowEndMs),
    rows: a.rows + b.rows,
    errors: a.errors + b.errors,
    requests: a.requests + b.requests,
    features: a.features.map((f, j) => ({ name: f.name, counts: addCounts(f.counts, b.features[j]!.counts, f.name) })),
    classCounts: addCounts(a.classCounts, b.classCounts, 'classes'),
    confidenceCounts: addCounts(a.confidenceCounts, b.confidenceCounts, 'confidence'),
    latencyDdsketch: latency.count > 0 ? Buffer.from(latency.toProto()) : Buffer.alloc(0),
    referenceDigest: a.referenceDigest,
  };
}
