import ort from 'onnxruntime-node';
import { DriftlineError } from '../../common/errors.js';
import { withHeadInputAsOutput, type ClassifierHead } from '../../common/onnx/classifier-head.js';

/**
 * The frozen body's output for every row: what the head is trained on. A head that starts at
 * the graph input has no body, and its embeddings are the rows themselves.
 */
export async function headEmbeddings(
  model: Uint8Array,
  head: ClassifierHead,
  input: { name: string; rowShape: readonly number[] },
  x: Float32Array,
  rows: number,
  batchRows: number,
): Promise<Float32Array> {
  const features = head.layers[0]!.inputs;
  const rowElements = input.rowShape.reduce((a, b) => a * b, 1);
  if (head.inputIsGraphInput) {
    if (rowElements !== features) {
      throw new DriftlineError('DATASET_INVALID', `the dataset's rows hold ${rowElements} values; the model's first dense layer takes ${features}`);
    }
    return x;
  }
  const session = await ort.InferenceSession.create(withHeadInputAsOutput(model, head), { logSeverityLevel: 3 });
  try {
    const out = new Float32Array(rows * features);
    for (let start = 0; start < rows; start += batchRows) {
      const count = Math.min(batchRows, rows - start);
      const feed = new ort.Tensor('float32', x.subarray(start * rowElements, (start + count) * rowElements), [count, ...input.rowShape]);
      const result = await session.run({ [input.name]: feed }, [head.input]);
      const embedding = result[head.input]!;
      if (embedding.data.length !== count * features) {
        throw new DriftlineError(
          'MODEL_HEAD_UNSUPPORTED',
          `the head's input ${head.input} holds ${embedding.data.length / count} values a row, not the ${features} its first layer takes`,
        );
      }
      out.set(embedding.data as Float32Array, start * features);
    }
    return out;
  } finally {
    await session.release();
  }
}
