import type { TensorLike } from '../trust/golden.js';

/** A float32 feed: the only element type the pure runners below feed a model. */
export interface Float32Feed {
  type: 'float32';
  dims: number[];
  data: Float32Array;
}

/**
 * One loaded model, as the pure code that runs it sees it (reference predictions, golden
 * vectors): each onnxruntime adapter (cli/, control-plane/training/onnxruntime/) wraps its own
 * InferenceSession in this, so common/ and the control plane's core import no runtime.
 */
export interface TensorSession {
  readonly inputNames: readonly string[];
  /** The model's outputs by name; only tensors (no maps or sequences). */
  run(feeds: Readonly<Record<string, Float32Feed>>): Promise<Record<string, TensorLike>>;
  release(): Promise<void>;
}
