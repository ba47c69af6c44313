import { readFile } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import { isFloatType, probabilitiesOutput, PROBABILITIES_OUTPUT_KEY } from '../../../common/classification.js';
import { DriftlineError } from '../../../common/errors.js';
import { readModelSignature } from '../../../common/onnx/signature.js';
import { classificationMetrics, type ClassificationMetrics, type SplitEvaluation, type SplitRole } from '../evaluation.js';
import type { EvaluationInput, Evaluator } from '../ports.js';

/** One labelled split, flattened: rows × the model's per-row input shape. */
export interface LabelledSplit {
  x: Float32Array;
  /** The model input's shape without the batch dimension. */
  rowShape: readonly number[];
  /** Class index per row (unlabelled rows left out). */
  labels: ArrayLike<number>;
}

/**
 * The evaluation splits of a dataset snapshot (the datasets domain reads them from the
 * driftline-dataset/1 files): "test", the triggering cohort's, and "regression", the other
 * cohorts' and the parent's own test data. A split may be missing: its gates are inconclusive.
 */
export interface EvaluationData {
  /** focusSelector: see EvaluationInput (the devices whose rows make the "test" split). */
  splits(datasetId: string, options?: { focusSelector?: string | undefined }): Promise<Partial<Record<SplitRole, LabelledSplit>>>;
  /** The class count of the dataset's model output. */
  classes(datasetId: string): Promise<number>;
}

/** The parent version's ONNX bytes (the registry's artifact). */
export interface ParentModels {
  bytes(model: string, version: number): Promise<Uint8Array>;
}

const BATCH_ROWS = 256;
/** One-row runs timed per model and split (after one untimed run): enough for a p95, cheap next to the split itself. */
const LATENCY_RUNS = 64;

/**
 * The evaluation gate's measurements with onnxruntime-node on this host's CPU: the candidate and
 * its parent run on each split, and the metrics come from their probabilities. A model whose
 * output is not probabilities (rows that do not sum to 1) is read through a softmax.
 */
export class OnnxRuntimeEvaluator implements Evaluator {
  constructor(private readonly deps: { data: EvaluationData; parents: ParentModels }) {}

  async evaluate(input: EvaluationInput): Promise<{ splits: SplitEvaluation[] }> {
    const [candidateBytes, parentBytes] = await Promise.all([readFile(input.candidate.path), this.deps.parents.bytes(input.model, input.parentVersion)]);
    const classes = await this.deps.data.classes(input.datasetId);
    const splits = await this.deps.data.splits(input.datasetId, { focusSelector: input.focusSelector });
    const candidate = await loadClassifier(candidateBytes, 'candidate');
    const parent = await loadClassifier(parentBytes, `parent v${input.parentVersion}`);
    try {
      const out: SplitEvaluation[] = [];
      for (const role of ['test', 'regression'] as const) {
        const split = splits[role];
        if (!split) continue;
        out.push({ split: role, candidate: await candidate.measure(split, classes), parent: await parent.measure(split, classes) });
      }
      return { splits: out };
    } finally {
      await Promise.allSettled([candidate.release(), parent.release()]);
    }
  }
}

interface Classifier {
  measure(split: LabelledSplit, classes: number): Promise<ClassificationMetrics>;
  release(): Promise<void>;
}

async function loadClassifier(bytes: Uint8Array, what: string): Promise<Classifier> {
  const signature = (() => {
    try {
      return readModelSignature(bytes);
    } catch (err) {
      throw new DriftlineError('MODEL_INVALID', `the ${what} is not a valid ONNX model`, { cause: err });
    }
  })();
  const input = signature.inputs[0];
  const output = probabilitiesOutput(
    signature.outputs.map((o) => ({ name: o.name, float: isFloatType(o.type), shape: o.shape })),
    signature.metadata[PROBABILITIES_OUTPUT_KEY],
  );
  if (!input || signature.inputs.length !== 1 || !output) {
    throw new DriftlineError('MODEL_INVALID', `the ${what} must take one input and give class probabilities (a float output of rank 2)`, {
      details: { inputs: signature.inputs.length, outputs: signature.outputs.map((o) => o.name) },
    });
  }
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'] });
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', `onnxruntime cannot load the ${what}`, { cause: err });
  }
  return {
    async measure(split, classes) {
      const rowElements = split.rowShape.reduce((a, b) => a * b, 1);
      const rows = split.labels.length;
      if (split.x.length !== rows * rowElements) {
        throw new DriftlineError('DATASET_INVALID', `a split holds ${split.x.length} values for ${rows} rows of ${rowElements}`, {
          details: { rows, rowElements },
        });
      }
      const probabilities = new Float32Array(rows * classes);
      for (let start = 0; start < rows; start += BATCH_ROWS) {
        const n = Math.min(BATCH_ROWS, rows - start);
        const feeds = { [input.name]: new ort.Tensor('float32', split.x.subarray(start * rowElements, (start + n) * rowElements), [n, ...split.rowShape]) };
        let result: ort.InferenceSession.ReturnType;
        try {
          result = await session.run(feeds, [output]);
        } catch (err) {
          throw new DriftlineError('INFERENCE_FAILED', `the ${what} failed on the evaluation split`, { cause: err });
        }
        const tensor = result[output]!;
        if (tensor.dims.length !== 2 || Number(tensor.dims[1]) !== classes) {
          throw new DriftlineError('MODEL_INVALID', `the ${what} gives ${tensor.dims.join('×')} scores; the dataset has ${classes} classes`, {
            details: { dims: tensor.dims, classes },
          });
        }
        probabilities.set(asProbabilities(tensor.data as Float32Array, n, classes), start * classes);
      }
      return { ...classificationMetrics(split.labels, probabilities, classes), ...(await oneRowLatency(session, input.name, output, split, rowElements)) };
    },
    release: () => session.release(),
  };
}

/** p50 and p95 of one-row runs over the split's first rows, as a device serves a request. */
async function oneRowLatency(
  session: ort.InferenceSession,
  inputName: string,
  output: string,
  split: LabelledSplit,
  rowElements: number,
): Promise<{ latencyP50Ms?: number; latencyP95Ms?: number }> {
  const rows = split.labels.length;
  if (rows === 0) return {};
  const timings: number[] = [];
  for (let i = 0; i <= LATENCY_RUNS; i++) {
    const r = i % rows;
    const feeds = { [inputName]: new ort.Tensor('float32', split.x.subarray(r * rowElements, (r + 1) * rowElements), [1, ...split.rowShape]) };
    const started = performance.now();
    try {
      await session.run(feeds, [output]);
    } catch {
      // A model that runs in batches but not on one row (a fixed batch size): its latency is not measured.
      return {};
    }
    // The first run pays for allocations the rest reuse.
    if (i > 0) timings.push(performance.now() - started);
  }
  timings.sort((a, b) => a - b);
  const at = (q: number): number => Math.round(timings[Math.min(timings.length - 1, Math.floor(q * timings.length))]! * 1e4) / 1e4;
  return { latencyP50Ms: at(0.5), latencyP95Ms: at(0.95) };
}

/** Rows that already sum to 1 are kept; any other row (logits, scores) goes through a softmax. */
function asProbabilities(values: Float32Array, rows: number, classes: number): Float32Array {
  const out = new Float32Array(values);
  for (let r = 0; r < rows; r++) {
    const row = out.subarray(r * classes, (r + 1) * classes);
    const sum = row.reduce((a, b) => a + b, 0);
    if (row.every((v) => v >= 0) && Math.abs(sum - 1) < 1e-3) continue;
    const max = Math.max(...row);
    let total = 0;
    for (let c = 0; c < classes; c++) total += row[c] = Math.exp(row[c]! - max);
    for (let c = 0; c < classes; c++) row[c]! /= total;
  }
  return out;
}
