/**
 * What a trainer left in its output folder, judged before anything is uploaded: the folder's
 * size against the cap, model.onnx (it loads, and keeps the base model's inputs and outputs:
 * names, element types, shapes), metrics.json (the contract's finite numbers).
 */
import { lstat, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DriftlineError } from '../common/errors.js';
import { METRICS_SCHEMA, TRAINER_OUTPUT_METRICS, TRAINER_OUTPUT_MODEL, type TrainerMetrics } from '../common/learning/trainer-contract.js';
import { readModelSignature, type TensorSignature } from '../common/onnx/signature.js';

/** The port to the runtime that will serve the candidate: load it, say what it takes and gives. */
export type ModelLoadCheck = (bytes: Uint8Array) => Promise<{ inputNames: readonly string[]; outputNames: readonly string[] }>;

export interface OutputLimits {
  maxOutputBytes: number;
  /** A folder of a million empty files is as much a problem as one huge file. */
  maxOutputFiles: number;
}

/** metrics.json is a few numbers; a large one is not a metrics file. */
const MAX_METRICS_BYTES = 1024 * 1024;

export interface CheckedOutput {
  modelPath: string;
  metricsPath: string;
  metrics: TrainerMetrics;
  outputBytes: number;
}

export async function checkTrainerOutput(dir: string, baseModel: Uint8Array, limits: OutputLimits, loadCheck: ModelLoadCheck): Promise<CheckedOutput> {
  const outputBytes = await folderBytes(dir, limits);
  const modelPath = join(dir, TRAINER_OUTPUT_MODEL);
  const metricsPath = join(dir, TRAINER_OUTPUT_METRICS);
  await checkModel(await readRegularFile(modelPath, 'TRAINER_OUTPUT_INVALID', limits.maxOutputBytes), baseModel, loadCheck);
  const metrics = parseMetrics(await readRegularFile(metricsPath, 'TRAINER_METRICS_INVALID', MAX_METRICS_BYTES));
  return { modelPath, metricsPath, metrics, outputBytes };
}

/** Bytes of every file under dir (links count as entries, never followed); stops as soon as a limit is passed. */
async function folderBytes(dir: string, limits: OutputLimits): Promise<number> {
  let bytes = 0;
  let files = 0;
  const walk = async (path: string): Promise<void> => {
    for (const entry of await readdir(path, { withFileTypes: true })) {
      const child = join(path, entry.name);
      files++;
      if (entry.isDirectory()) await walk(child);
      else if (entry.isFile()) bytes += (await lstat(child)).size;
      if (bytes > limits.maxOutputBytes || files > limits.maxOutputFiles) {
        throw new DriftlineError(
          'TRAINER_OUTPUT_TOO_LARGE',
          `the trainer's output folder holds more than ${bytes > limits.maxOutputBytes ? `${limits.maxOutputBytes} bytes` : `${limits.maxOutputFiles} entries`}`,
          { details: { maxOutputBytes: limits.maxOutputBytes, maxOutputFiles: limits.maxOutputFiles } },
        );
      }
    }
  };
  await walk(dir);
  return bytes;
}

async function readRegularFile(path: string, code: 'TRAINER_OUTPUT_INVALID' | 'TRAINER_METRICS_INVALID', maxBytes: number): Promise<Buffer> {
  const info = await lstat(path).catch(() => undefined);
  if (!info) throw new DriftlineError(code, `the trainer wrote no ${path}`);
  // A link could point anywhere on the worker; only a file the trainer wrote is its output.
  if (!info.isFile()) throw new DriftlineError(code, `${path} is not a regular file`);
  if (info.size > maxBytes) throw new DriftlineError(code, `${path} is ${info.size} bytes, more than ${maxBytes}`);
  return readFile(path);
}

async function checkModel(bytes: Uint8Array, baseModel: Uint8Array, loadCheck: ModelLoadCheck): Promise<void> {
  let candidate;
  try {
    candidate = readModelSignature(bytes);
  } catch (cause) {
    throw new DriftlineError('TRAINER_OUTPUT_INVALID', `model.onnx is not an ONNX model: ${(cause as Error).message}`, { cause });
  }
  let loaded;
  try {
    loaded = await loadCheck(bytes);
  } catch (cause) {
    throw new DriftlineError('TRAINER_OUTPUT_INVALID', `model.onnx does not load in onnxruntime: ${(cause as Error).message}`, { cause });
  }
  const base = readModelSignature(baseModel);
  const differences = [...signatureDifferences('input', base.inputs, candidate.inputs), ...signatureDifferences('output', base.outputs, candidate.outputs)];
  const same = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((name, i) => name === b[i]);
  if (
    !same(
      loaded.inputNames,
      base.inputs.map((i) => i.name),
    ) ||
    !same(
      loaded.outputNames,
      base.outputs.map((o) => o.name),
    )
  ) {
    differences.push(`onnxruntime sees inputs [${loaded.inputNames.join(', ')}] and outputs [${loaded.outputNames.join(', ')}]`);
  }
  if (differences.length > 0) {
    throw new DriftlineError('TRAINER_OUTPUT_INVALID', `model.onnx does not keep the base model's signature: ${differences.join('; ')}`, {
      details: { differences },
    });
  }
}

const describe = (t: TensorSignature): string => `${t.name} ${t.type}[${t.shape.map((d) => (d < 0 ? '?' : d)).join(',')}]`;

function signatureDifferences(kind: string, base: readonly TensorSignature[], candidate: readonly TensorSignature[]): string[] {
  const out: string[] = [];
  const count = Math.max(base.length, candidate.length);
  for (let i = 0; i < count; i++) {
    const want = base[i];
    const got = candidate[i];
    if (!want) out.push(`an extra ${kind} ${describe(got!)}`);
    else if (!got) out.push(`${kind} ${describe(want)} is missing`);
    else if (describe(want) !== describe(got)) out.push(`${kind} ${i} is ${describe(got)}, the base model's is ${describe(want)}`);
  }
  return out;
}

function parseMetrics(bytes: Buffer): TrainerMetrics {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (cause) {
    // Python's json.dump writes NaN and Infinity, which JSON does not have: they land here.
    throw new DriftlineError('TRAINER_METRICS_INVALID', 'metrics.json is not JSON (NaN and Infinity are not JSON numbers)', { cause });
  }
  const parsed = METRICS_SCHEMA.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DriftlineError('TRAINER_METRICS_INVALID', `metrics.json: ${issue?.path.join('.') || '(top level)'} ${issue?.message}`);
  }
  return parsed.data;
}
