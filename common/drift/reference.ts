import { z } from 'zod';
import { DriftlineError } from '../errors.js';
import { sha256Hex } from '../hashing.js';

/**
 * What drift is measured against: the reference distributions of one model version,
 * computed from its training (or validation) data. A self-contained value, carried for
 * now in the model's metadata under REFERENCE_METADATA_KEY and handed to the device with
 * the desired model; it can move into the signed release manifest unchanged.
 *
 * Every distribution is counts on bins: for edges e0 < e1 < ... < ek there are k + 2
 * bins: underflow (x < e0), [e0, e1), ..., [e(k-1), ek] and overflow (x > ek).
 */
export interface DriftReference {
  version: 1;
  rows: number;
  /** Name of the input tensor whose rows are the features (the first input when absent). */
  input?: string | undefined;
  /** Name of the probabilities output (the engine's guess when absent). */
  probabilities?: string | undefined;
  /** `importance`: the feature's weight in the verdict (from the model's feature importances; 1 when absent). */
  features: Array<{ name: string; edges: number[]; counts: number[]; importance?: number | undefined }>;
  /**
   * Class distribution of the reference: the reference data's labels, or (source
   * 'predictions') the model's own predictions on the reference data, made at push time.
   * Only predictions are judged against the predicted classes devices send.
   */
  classes: { names: string[]; counts: number[]; source?: 'labels' | 'predictions' | undefined };
  confidence: { edges: number[]; counts: number[] };
  /** This model's drift settings over the control plane's `drift.*` defaults. */
  policy?: DriftPolicy | undefined;
}

/** Per-model drift settings (see control-plane/drift/evaluate.ts for what each does). */
export interface DriftPolicy {
  psiWarn?: number | undefined;
  psiAlert?: number | undefined;
  jensenShannon?: number | undefined;
  alpha?: number | undefined;
  datasetShare?: number | undefined;
  belowFloor?: 'ok' | 'warn' | undefined;
  severeImportance?: number | undefined;
}

export const driftPolicySchema = z
  .object({
    psiWarn: z.number().positive().optional(),
    psiAlert: z.number().positive().optional(),
    jensenShannon: z.number().positive().optional(),
    alpha: z.number().gt(0).lt(1).optional(),
    datasetShare: z.number().gt(0).max(1).optional(),
    belowFloor: z.enum(['ok', 'warn']).optional(),
    severeImportance: z.number().min(0).max(1).optional(),
  })
  .strict();

export const REFERENCE_METADATA_KEY = 'driftline.reference';

const binned = z
  .object({ edges: z.array(z.number().finite()).min(1).max(64), counts: z.array(z.number().int().nonnegative()) })
  .refine((b) => b.counts.length === b.edges.length + 1, 'counts must have edges + 1 entries')
  .refine((b) => b.edges.every((e, i) => i === 0 || e > b.edges[i - 1]!), 'edges must be strictly increasing');

const referenceSchema = z.object({
  version: z.literal(1),
  rows: z.number().int().nonnegative(),
  input: z.string().optional(),
  probabilities: z.string().optional(),
  features: z.array(binned.and(z.object({ name: z.string().min(1).max(128), importance: z.number().finite().nonnegative().optional() }))).max(1024),
  classes: z
    .object({ names: z.array(z.string()).max(10_000), counts: z.array(z.number().int().nonnegative()), source: z.enum(['labels', 'predictions']).optional() })
    .refine((c) => c.names.length === c.counts.length, 'one count per class'),
  confidence: binned,
  policy: driftPolicySchema.optional(),
});

/** Confidence bins when the reference has no predictions of its own: ten equal bins on [0, 1]. */
export const DEFAULT_CONFIDENCE_EDGES: readonly number[] = Array.from({ length: 11 }, (_, i) => i / 10);

export function parseReference(json: string): DriftReference {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (err) {
    throw new DriftlineError('DRIFT_REFERENCE_INVALID', 'the drift reference is not JSON', { cause: err });
  }
  const parsed = referenceSchema.safeParse(value);
  if (!parsed.success) throw new DriftlineError('DRIFT_REFERENCE_INVALID', `the drift reference is invalid: ${parsed.error.issues[0]?.message ?? ''}`);
  return parsed.data as DriftReference;
}

export const serializeReference = (reference: DriftReference): string => JSON.stringify(reference);

/** Identifies a reference's bin layout; sketches merge only when their digests match. */
export function referenceDigest(reference: DriftReference): string {
  const layout = { f: reference.features.map((f) => [f.name, f.edges]), c: reference.classes.names, k: reference.confidence.edges };
  return sha256Hex(JSON.stringify(layout)).slice(0, 16);
}

/** The bin of x on edges (layout above). NaN counts as underflow. */
export function binIndex(edges: readonly number[], x: number): number {
  const k = edges.length;
  if (!(x >= edges[0]!)) return 0;
  if (x > edges[k - 1]!) return k;
  // Largest i in [0, k-2] with edges[i] <= x, plus one for the underflow bin.
  let lo = 0;
  let hi = k - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (edges[mid]! <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}

export function countOnEdges(values: readonly number[], edges: readonly number[]): number[] {
  const counts = new Array<number>(edges.length + 1).fill(0);
  for (const v of values) counts[binIndex(edges, v)]!++;
  return counts;
}

const round = (x: number, digits: number): number => (x === 0 ? 0 : Number(x.toPrecision(digits)));

/** Quantile edges: min, the (i / bins) quantiles, max; rounded to keep the JSON small, deduplicated. */
export function quantileEdges(values: readonly number[], bins: number, digits = 5): number[] {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (sorted.length === 0) return [0];
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * (sorted.length - 1)))]!;
  const raw = [sorted[0]!, ...Array.from({ length: bins - 1 }, (_, i) => at((i + 1) / bins)), sorted.at(-1)!].map((x) => round(x, digits));
  return raw.filter((e, i) => i === 0 || e > raw[i - 1]!);
}

export interface BuildReferenceOptions {
  featureNames: readonly string[];
  classNames: readonly string[];
  /** Labels (or predictions) of the rows, as class indexes. */
  labels?: readonly number[];
  /** Top-class confidences of the model on the rows, when known. */
  confidences?: readonly number[];
  bins?: number;
  input?: string;
  probabilities?: string;
}

/** Computes a reference from rows of features (row-major, one array per row). */
export function buildReference(rows: readonly (readonly number[])[], options: BuildReferenceOptions): DriftReference {
  const bins = options.bins ?? 10;
  const features = options.featureNames.map((name, j) => {
    const column = rows.map((r) => r[j]!);
    const edges = quantileEdges(column, bins);
    return { name, edges, counts: countOnEdges(column, edges) };
  });
  const classCounts = options.classNames.map(() => 0);
  for (const label of options.labels ?? []) if (label >= 0 && label < classCounts.length) classCounts[label]!++;
  const confidenceEdges = [...DEFAULT_CONFIDENCE_EDGES];
  return {
    version: 1,
    rows: rows.length,
    ...(options.input ? { input: options.input } : {}),
    ...(options.probabilities ? { probabilities: options.probabilities } : {}),
    features,
    classes: { names: [...options.classNames], counts: classCounts },
    confidence: { edges: confidenceEdges, counts: countOnEdges(options.confidences ?? [], confidenceEdges) },
  };
}

/**
 * A reference from a CSV with a header row: numeric feature columns, and optionally a
 * label column of class names. Class indexes follow `classNames` when given (the model's
 * output order), otherwise the order labels first appear in.
 */
export function referenceFromCsv(text: string, options: { labelColumn?: string; classNames?: readonly string[]; bins?: number } = {}): DriftReference {
  return referenceAndRowsFromCsv(text, options).reference;
}

/** referenceFromCsv, with the CSV's feature rows (for running the model on them at push time). */
export function referenceAndRowsFromCsv(
  text: string,
  options: { labelColumn?: string; classNames?: readonly string[]; bins?: number } = {},
): { reference: DriftReference; rows: number[][] } {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  const header = lines[0]?.split(',').map((h) => h.trim());
  if (!header || header.length === 0 || lines.length < 2)
    throw new DriftlineError('DRIFT_REFERENCE_INVALID', 'the CSV needs a header row and at least one data row');
  const labelAt = header.indexOf(options.labelColumn ?? 'label');
  const featureAt = header.map((_, i) => i).filter((i) => i !== labelAt);
  const classNames = [...(options.classNames ?? [])];
  const rows: number[][] = [];
  const labels: number[] = [];
  for (let n = 1; n < lines.length; n++) {
    const cells = lines[n]!.split(',');
    const row = featureAt.map((i) => Number(cells[i]));
    if (row.some((v) => !Number.isFinite(v))) throw new DriftlineError('DRIFT_REFERENCE_INVALID', `CSV line ${n + 1} has a value that is not a finite number`);
    rows.push(row);
    if (labelAt >= 0) {
      const label = (cells[labelAt] ?? '').trim();
      let index = classNames.indexOf(label);
      if (index < 0) {
        if (options.classNames) throw new DriftlineError('DRIFT_REFERENCE_INVALID', `CSV line ${n + 1}: unknown class ${JSON.stringify(label)}`);
        index = classNames.push(label) - 1;
      }
      labels.push(index);
    }
  }
  return {
    reference: buildReference(rows, { featureNames: featureAt.map((i) => header[i]!), classNames, labels, ...(options.bins ? { bins: options.bins } : {}) }),
    rows,
  };
}

const policyFileSchema = driftPolicySchema.extend({ importance: z.record(z.string(), z.number().finite().nonnegative()).optional() }).strict();

/**
 * A reference with a model's drift policy from JSON (`models push --drift-policy`): the
 * DriftPolicy fields, and `importance`, a weight per feature name (features left out weigh 1).
 */
export function withDriftPolicy(reference: DriftReference, json: string): DriftReference {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (err) {
    throw new DriftlineError('DRIFT_REFERENCE_INVALID', 'the drift policy is not JSON', { cause: err });
  }
  const parsed = policyFileSchema.safeParse(value);
  if (!parsed.success)
    throw new DriftlineError(
      'DRIFT_REFERENCE_INVALID',
      `the drift policy is invalid: ${parsed.error.issues[0]?.path.join('.') ?? ''} ${parsed.error.issues[0]?.message ?? ''}`,
    );
  const { importance, ...policy } = parsed.data;
  const names = new Set(reference.features.map((f) => f.name));
  const unknown = Object.keys(importance ?? {}).find((name) => !names.has(name));
  if (unknown !== undefined)
    throw new DriftlineError('DRIFT_REFERENCE_INVALID', `the drift policy weighs ${JSON.stringify(unknown)}, which is not a feature of the reference`);
  return {
    ...reference,
    policy,
    features: reference.features.map((f) => (importance && Object.hasOwn(importance, f.name) ? { ...f, importance: importance[f.name]! } : f)),
  };
}

/**
 * The reference with the model's own predictions on the reference rows (top class and its
 * probability per row) as its class and confidence distributions: what devices' predicted
 * classes and confidences are judged against.
 */
export function withPredictions(reference: DriftReference, topClasses: readonly number[], confidences: readonly number[]): DriftReference {
  const classes = Math.max(reference.classes.names.length, ...topClasses.map((c) => c + 1));
  const names = Array.from({ length: classes }, (_, i) => reference.classes.names[i] ?? `class_${i}`);
  const counts = names.map(() => 0);
  for (const c of topClasses) if (c >= 0 && c < classes) counts[c]!++;
  return {
    ...reference,
    classes: { names, counts, source: 'predictions' },
    confidence: { edges: reference.confidence.edges, counts: countOnEdges(confidences, reference.confidence.edges) },
  };
}
