import { isFloatType, probabilitiesOutput, topClasses } from '../classification.js';
import { DriftlineError } from '../errors.js';
import type { TensorSession } from '../onnx/tensor-session.js';
import { withPredictions, type DriftReference } from './reference.js';

/** Reference rows run through the model per session.run call. */
const BATCH_ROWS = 256;

/**
 * The reference with the model's predicted classes and top-class confidences on the reference
 * rows as its class and confidence distributions, so devices' predictions are judged against
 * predictions, not labels (`models push --reference`, and a retrained version's reference).
 * The probabilities output is picked as the agent picks it (common/classification.ts): the
 * reference's name, else the first float rank-2 output whose name says "prob", else the first
 * float rank-2 output. A model without such an output keeps the reference as it is.
 */
export async function referenceWithPredictionsOf(
  session: TensorSession,
  reference: DriftReference,
  rows: readonly (readonly number[])[],
): Promise<DriftReference> {
  if (rows.length === 0) return reference;
  const input = reference.input ?? session.inputNames[0];
  if (!input) return reference;
  const columns = reference.features.length;
  const top: number[] = [];
  const confidences: number[] = [];
  for (let start = 0; start < rows.length; start += BATCH_ROWS) {
    const batch = rows.slice(start, start + BATCH_ROWS);
    const data = new Float32Array(batch.length * columns);
    batch.forEach((r, i) => data.set(r.slice(0, columns), i * columns));
    let outputs: Awaited<ReturnType<TensorSession['run']>>;
    try {
      outputs = await session.run({ [input]: { type: 'float32', data, dims: [batch.length, columns] } });
    } catch (err) {
      throw new DriftlineError('MODEL_INVALID', `the model does not run on the drift reference rows: ${(err as Error).message}`, { cause: err });
    }
    const tensors = Object.entries(outputs).filter((entry) => Array.isArray(entry[1].dims));
    const name = probabilitiesOutput(
      tensors.map(([n, t]) => ({ name: n, float: isFloatType(t.type), shape: t.dims.map(Number) })),
      reference.probabilities,
    );
    const tensor = tensors.find(([n]) => n === name)?.[1];
    if (!tensor || tensor.dims.length !== 2) return reference;
    for (const row of topClasses(tensor.data as ArrayLike<number>, batch.length, Number(tensor.dims[1]))) {
      top.push(row.topClass);
      confidences.push(row.confidence);
    }
  }
  return withPredictions(reference, top, confidences);
}
