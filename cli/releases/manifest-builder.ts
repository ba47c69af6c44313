import ort from 'onnxruntime-node';
import { DriftlineError } from '../../common/errors.js';
import { sha256Hex } from '../../common/hashing.js';
import { candidateExamples, describeExample, type ExampleInput, type ExampleInputs } from '../../common/onnx/example-inputs.js';
import { describeRuntimeFailure, explainRuntimeFailure } from '../../common/onnx/runtime-errors.js';
import { readModelSignature, type TensorSignature } from '../../common/onnx/signature.js';
import { toGoldenTensor } from '../../common/trust/golden.js';
import { buildManifest, type GoldenVector, type ReferenceDistributions, type ReleaseManifest, type ReleaseManifestInput } from '../../common/trust/manifest.js';

export interface ManifestBuildInput {
  bytes: Uint8Array;
  name: string;
  version: number;
  createdAtMs: number;
  /** CSV text with a header row; numeric columns become reference distributions and golden inputs. */
  referenceCsv?: string;
  constraints?: ReleaseManifestInput['constraints'];
  lineage?: ReleaseManifestInput['lineage'];
  /** How many golden vectors to record (rows of the reference, or seeded synthetic inputs). */
  goldenVectors?: number;
  /** Inputs the model is known to run on: signed into the manifest for the device's warm-up, and the shapes (and values) of the golden vectors. */
  examples?: ExampleInputs;
}

const GOLDEN_TOLERANCE = { abs: 1e-4, rel: 1e-3 };
const REFERENCE_BINS = 10;

/**
 * Builds a release manifest from the model file itself: signature and opset read from the
 * ONNX bytes, reference distributions from the CSV, and golden vectors recorded by running
 * the model in onnxruntime on reference rows (or seeded inputs) so the device can check that
 * it computes the same outputs before it swaps.
 */
export async function buildReleaseManifest(input: ManifestBuildInput): Promise<ReleaseManifest> {
  const signature = readModelSignature(input.bytes);
  const table = input.referenceCsv ? parseNumericCsv(input.referenceCsv) : undefined;
  const reference = table && input.referenceCsv ? referenceOf(table, sha256Hex(input.referenceCsv)) : undefined;
  const vectors = await goldenVectors(input.bytes, signature.inputs, table, input.goldenVectors ?? 3, input.examples);
  return buildManifest({
    type: 'driftline-release',
    name: input.name,
    version: input.version,
    artifact: { sha256: sha256Hex(input.bytes), sizeBytes: input.bytes.length },
    opset: signature.opset,
    inputs: signature.inputs,
    outputs: signature.outputs,
    constraints: input.constraints ?? {},
    ...(reference ? { reference } : {}),
    ...(input.examples ? { examples: input.examples } : {}),
    golden: { tolerance: GOLDEN_TOLERANCE, vectors },
    lineage: { ...(input.lineage ?? {}), dataSha256: input.lineage?.dataSha256 || reference?.dataSha256 || '' },
    createdAtMs: input.createdAtMs,
  });
}

export interface NumericTable {
  columns: string[];
  rows: number[][];
}

/** The numeric columns of a CSV with a header row (non-numeric columns are dropped). */
export function parseNumericCsv(text: string): NumericTable {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  if (lines.length < 2) throw new DriftlineError('REQUEST_INVALID', 'the reference CSV needs a header row and at least one data row');
  const header = lines[0]!.split(',').map((h) => h.trim());
  const cells = lines.slice(1).map((l) => l.split(',').map((c) => Number(c.trim())));
  const numeric = header.map((_, i) => cells.every((row) => Number.isFinite(row[i])));
  const keep = header.map((_, i) => i).filter((i) => numeric[i]);
  if (keep.length === 0) throw new DriftlineError('REQUEST_INVALID', 'the reference CSV has no numeric column');
  return { columns: keep.map((i) => header[i]!), rows: cells.map((row) => keep.map((i) => row[i]!)) };
}

/** Per feature: interior decile edges and the count of rows in each bin (value < edge goes left). */
export function referenceOf(table: NumericTable, dataSha256: string): ReferenceDistributions {
  return {
    rows: table.rows.length,
    dataSha256,
    features: table.columns.map((name, i) => {
      const values = table.rows.map((r) => r[i]!).sort((a, b) => a - b);
      const edges = [...new Set(Array.from({ length: REFERENCE_BINS - 1 }, (_, k) => values[Math.floor(((k + 1) * values.length) / REFERENCE_BINS)]!))];
      const counts = new Array<number>(edges.length + 1).fill(0);
      for (const v of values) {
        let bin = 0;
        while (bin < edges.length && v >= edges[bin]!) bin++;
        counts[bin]!++;
      }
      return { name, edges, counts };
    }),
  };
}

/**
 * Records golden vectors by running the model: on the example inputs when there are some
 * (their values, or seeded values of their shapes), else on the first candidate size for
 * dynamic dims that runs. A model that runs on none is MODEL_WARMUP_FAILED in its own words.
 */
async function goldenVectors(
  bytes: Uint8Array,
  inputs: readonly TensorSignature[],
  table: NumericTable | undefined,
  count: number,
  examples: ExampleInputs | undefined,
): Promise<GoldenVector[]> {
  if (count === 0 || inputs.length === 0) return [];
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], logSeverityLevel: 4, intraOpNumThreads: 1 });
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', `onnxruntime cannot load the model to record golden vectors: ${(err as Error).message}`, { cause: err });
  }
  try {
    let seed = 0x2545f491;
    const next = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return Math.round(((seed / 0xffffffff) * 2 - 1) * 1000) / 1000;
    };
    const feedsOf = (example: ExampleInput, v: number, zeros = false): Record<string, ort.Tensor> => {
      const feeds: Record<string, ort.Tensor> = {};
      for (const spec of inputs) {
        const given = Object.hasOwn(example, spec.name) ? example[spec.name] : undefined;
        if (!given) throw new DriftlineError('REQUEST_INVALID', `the example inputs give no ${spec.name}, which the model needs`);
        if (given.type !== spec.type)
          throw new DriftlineError('REQUEST_INVALID', `the example input ${spec.name} is ${given.type}; the model takes ${spec.type}`);
        const size = given.dims.reduce((a, b) => a * b, 1);
        const row = table && inputs.length === 1 && table.rows.length > 0 ? table.rows[v % table.rows.length] : undefined;
        const values = given.data
          ? given.data.map((x) => Number(x))
          : zeros
            ? new Array<number>(size).fill(0)
            : Array.from({ length: size }, (_, i) => (row && row.length === size ? row[i]! : next()));
        feeds[spec.name] = tensorOf(spec.type, values, given.dims);
      }
      return feeds;
    };
    const record = async (feeds: Record<string, ort.Tensor>): Promise<GoldenVector> => {
      const outputs = await session.run(feeds);
      return {
        inputs: Object.fromEntries(
          Object.entries(feeds).map(([k, t]) => [k, toGoldenTensor({ type: t.type, dims: t.dims, data: t.data as ArrayLike<number> })]),
        ),
        outputs: Object.fromEntries(
          Object.entries(outputs)
            .filter(([, t]) => t instanceof ort.Tensor || (t as ort.Tensor).data !== undefined)
            .map(([k, t]) => [
              k,
              toGoldenTensor({ type: (t as ort.Tensor).type, dims: (t as ort.Tensor).dims, data: (t as ort.Tensor).data as ArrayLike<number> }),
            ]),
        ),
      };
    };
    const failed = (example: ExampleInput, err: unknown, given: boolean, tried: string[]): DriftlineError => {
      const why = describeRuntimeFailure(explainRuntimeFailure(err instanceof Error ? err.message : String(err)));
      const on = given
        ? `its example input ${describeExample(example)}`
        : `every size tried for its dynamic dimensions (${tried.map((t) => `[${t}]`).join('; ')})`;
      return new DriftlineError(
        'MODEL_WARMUP_FAILED',
        `the model did not run on ${on}, so no golden vectors could be recorded: ${why}${given ? '' : '; give it example inputs with --examples <file.json>'}`,
        {
          cause: err,
          details: { inputs: describeExample(example) },
        },
      );
    };
    let shapes = examples;
    if (!shapes) {
      // The first candidate size the model runs on stands in for example inputs.
      const tried: string[] = [];
      for (const candidate of candidateExamples(inputs)) {
        tried.push(describeExample(candidate));
        try {
          await session.run(feedsOf(candidate, 0, true));
          shapes = [candidate];
          break;
        } catch (err) {
          if (err instanceof DriftlineError) throw err;
          if (tried.length === candidateExamples(inputs).length) throw failed(candidate, err, false, tried);
        }
      }
    }
    const vectors: GoldenVector[] = [];
    for (let v = 0; v < count; v++) {
      const example = shapes![v % shapes!.length]!;
      try {
        vectors.push(await record(feedsOf(example, v)));
      } catch (err) {
        if (err instanceof DriftlineError) throw err;
        throw failed(example, err, examples !== undefined, [describeExample(example)]);
      }
    }
    return vectors;
  } finally {
    await session.release();
  }
}

function tensorOf(type: string, values: number[], dims: number[]): ort.Tensor {
  switch (type) {
    case 'float32':
      return new ort.Tensor('float32', Float32Array.from(values), dims);
    case 'float64':
      return new ort.Tensor('float64', Float64Array.from(values), dims);
    case 'int32':
      return new ort.Tensor('int32', Int32Array.from(values.map(Math.round)), dims);
    case 'int64':
      return new ort.Tensor('int64', BigInt64Array.from(values.map((x) => BigInt(Math.round(x)))), dims);
    default:
      throw new DriftlineError('REQUEST_INVALID', `golden vectors for inputs of type ${type} are not supported; push with --golden 0`);
  }
}
