import ort from 'onnxruntime-node';
import { DriftlineError } from '../../../common/errors.js';
import { sha256Hex } from '../../../common/hashing.js';
import { readModelSignature, type TensorSignature } from '../../../common/onnx/signature.js';
import { toGoldenTensor } from '../../../common/trust/golden.js';
import { buildManifest, type GoldenVector, type ReferenceDistributions, type ReleaseManifest, type ReleaseManifestInput } from '../../../common/trust/manifest.js';

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
  const vectors = await goldenVectors(input.bytes, signature.inputs, table, input.goldenVectors ?? 3);
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

async function goldenVectors(bytes: Uint8Array, inputs: readonly TensorSignature[], table: NumericTable | undefined, count: number): Promise<GoldenVector[]> {
  if (count === 0 || inputs.length === 0) return [];
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], logSeverityLevel: 4, intraOpNumThreads: 1 });
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', `onnxruntime cannot load the model to record golden vectors: ${(err as Error).message}`, { cause: err });
  }
  try {
    const vectors: GoldenVector[] = [];
    let seed = 0x2545f491;
    const next = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return Math.round(((seed / 0xffffffff) * 2 - 1) * 1000) / 1000;
    };
    for (let v = 0; v < count; v++) {
      const feeds: Record<string, ort.Tensor> = {};
      for (const spec of inputs) {
        const dims = spec.shape.length === 0 ? [] : spec.shape.map((d) => (d < 0 ? 1 : d));
        const size = dims.reduce((a, b) => a * b, 1);
        const row = table && inputs.length === 1 && table.rows.length > 0 ? table.rows[v % table.rows.length] : undefined;
        const values = Array.from({ length: size }, (_, i) => (row && row.length === size ? row[i]! : next()));
        feeds[spec.name] = tensorOf(spec.type, values, dims);
      }
      const outputs = await session.run(feeds);
      vectors.push({
        inputs: Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, toGoldenTensor({ type: t.type, dims: t.dims, data: t.data as ArrayLike<number> })])),
        outputs: Object.fromEntries(
          Object.entries(outputs)
            .filter(([, t]) => t instanceof ort.Tensor || (t as ort.Tensor).data !== undefined)
            .map(([k, t]) => [k, toGoldenTensor({ type: (t as ort.Tensor).type, dims: (t as ort.Tensor).dims, data: (t as ort.Tensor).data as ArrayLike<number> })]),
        ),
      });
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
