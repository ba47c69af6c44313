import ort from 'onnxruntime-node';
import { DriftlineError } from '../../../common/errors.js';
import type { TensorSession } from '../../../common/onnx/tensor-session.js';
import type { ModelSessions } from '../release-data.js';

/** Retrained versions run on this host's CPU (onnxruntime-node) for their drift reference and golden vectors. */
export class OnnxRuntimeSessions implements ModelSessions {
  async open(bytes: Uint8Array, what: string): Promise<TensorSession> {
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], logSeverityLevel: 4, intraOpNumThreads: 1 });
    } catch (err) {
      throw new DriftlineError('MODEL_INVALID', `onnxruntime cannot load the ${what}: ${(err as Error).message}`, { cause: err });
    }
    return {
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
  }
}
