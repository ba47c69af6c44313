import ort from 'onnxruntime-node';
import type { ModelLoadCheck } from '../trainer-output.js';

/** The candidate loads in onnxruntime-node on the CPU (what every device can fall back to); the session is released at once. */
export const onnxRuntimeLoadCheck: ModelLoadCheck = async (bytes) => {
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], logSeverityLevel: 4 });
  try {
    return { inputNames: [...session.inputNames], outputNames: [...session.outputNames] };
  } finally {
    await session.release();
  }
};
