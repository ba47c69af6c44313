import ort from 'onnxruntime-node';
import { isFloatType, probabilitiesOutput, topClasses } from '../../common/classification.js';
import { withPredictions, type DriftReference } from '../../common/drift/reference.js';
import { DriftlineError } from '../../common/errors.js';

/** Reference rows run through the model per session.run call. */
const BATCH_ROWS = 256;

/**
 * Runs the model (onnxruntime-node, CPU) on the reference rows at push time and returns the
 * reference with the model's predicted classes and top-class confidences as its class and
 * confidence distributions, so devices' predictions are judged against predictions, not labels.
 * The probabilities output is picked as the agent picks it (common/classification.ts): the
 * reference's name, else the first float rank-2 output whose name says "prob", else the first
 * float rank-2 output. A model without such an output keeps the reference as it is.
 */
export async function referenceWithModelPredictions(
  bytes: Uint8Array,
  reference: DriftReference,
  rows: readonly (readonly number[])[],
): Promise<DriftReference> {
  if (rows.length === 0) return reference;
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], logSeverityLevel: 4, intraOpNumThreads: 1 });
  } catch (err) {
    throw new DriftlineError('MODEL_INVALID', `onnxruntime cannot load the model to predict on the drift reference: ${(err as Error).message}`, { cause: err });
  }
  try {
    const input = reference.input ?? session.inputNames[0];
    if (!input) return reference;
    const columns = reference.features.length;
    const top: number[] = [];
    const confidences: number[] = [];
    for (let start = 0; start < rows.length; start += BATCH_ROWS) {
      const batch = rows.slice(start, start + BATCH_ROWS);
      const data = new Float32Array(batch.length * columns);
      batch.forEach((r, i) => data.set(r.slice(0, columns), i * columns));
      let outputs: ort.InferenceSession.OnnxValueMapType;
      try {
        outputs = await session.run({ [input]: new ort.Tensor('float32', data, [batch.length, columns]) });
      } catch (err) {
        throw new DriftlineError('MODEL_INVALID', `the model does not run on the drift reference rows: ${(err as Error).message}`, { cause: err });
      }
      const tensors = Object.entries(outputs).filter((entry): entry is [string, ort.Tensor] => Array.isArray((entry[1] as ort.Tensor).dims));
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
  } finally {
    await session.release();
  }
}
