import ort from 'onnxruntime-node';
import { referenceWithPredictionsOf } from '../../common/drift/model-predictions.js';
import type { DriftReference } from '../../common/drift/reference.js';
import { DriftlineError } from '../../common/errors.js';
import type { TensorSession } from '../../common/onnx/tensor-session.js';

/**
 * Runs the model (onnxruntime-node, CPU) on the reference rows at push time and returns the
 * reference with the model's predicted classes and top-class confidences as its class and
 * confidence distributions (common/drift/model-predictions.ts, which the control plane also
 * runs on a retrained version's training rows).
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
  const wrapped: TensorSession = {
    inputNames: session.inputNames,
    async run(feeds) {
      const outputs = await session.run(Object.fromEntries(Object.entries(feeds).map(([name, f]) => [name, new ort.Tensor(f.type, f.data, f.dims)])));
      return Object.fromEntries(
        Object.entries(outputs)
          .filter((entry): entry is [string, ort.Tensor] => Array.isArray((entry[1] as ort.Tensor).dims))
          .map(([name, t]) => [name, { type: t.type, dims: t.dims.map(Number), data: t.data as ArrayLike<number> }]),
      );
    },
    release: () => session.release(),
  };
  try {
    return await referenceWithPredictionsOf(wrapped, reference, rows);
  } finally {
    await session.release();
  }
}
