import ort from 'onnxruntime-node';
import { withPredictions, type DriftReference } from '../../../common/drift/reference.js';
import { DriftlineError } from '../../../common/errors.js';

/** Reference rows run through the model per session.run call. */
const BATCH_ROWS = 256;

/**
 * Runs the model (onnxruntime-node, CPU) on the reference rows at push time and returns the
 * reference with the model's predicted classes and top-class confidences as its class and
 * confidence distributions, so devices' predictions are judged against predictions, not labels.
 * The probabilities output is picked as the agent picks it: a 2-D output with more than one
 * column, by the reference's name, else one whose name says "prob", else the last. A model
 * without such an output keeps the reference as it is.
 */
export async function referenceWithModelPredictions(bytes: Uint8Array, reference: DriftReference, rows: readonly (readonly number[])[]): Promise<DriftReference> {
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
      const twoD = Object.entries(outputs).filter(([, t]) => (t as ort.Tensor).dims?.length === 2 && Number((t as ort.Tensor).dims[1]) > 1);
      const picked = (reference.probabilities ? twoD.find(([n]) => n === reference.probabilities) : undefined) ?? twoD.find(([n]) => /prob/i.test(n)) ?? twoD.at(-1);
      if (!picked) return reference;
      const tensor = picked[1] as ort.Tensor;
      const classes = Number(tensor.dims[1]);
      const values = tensor.data as ArrayLike<number>;
      for (let r = 0; r < batch.length; r++) {
        let best = 0;
        for (let c = 1; c < classes; c++) if (values[r * classes + c]! > values[r * classes + best]!) best = c;
        top.push(best);
        confidences.push(Number(values[r * classes + best]));
      }
    }
    return withPredictions(reference, top, confidences);
  } finally {
    await session.release();
  }
}
