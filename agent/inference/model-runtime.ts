import type { ExecutionProvider } from '../../common/firmware-profile.js';
import type { TensorSpec } from '../../common/proto/driftline/v1/models.js';

export type { TensorSpec };

/** Element types as onnxruntime names them (TensorSpec.type carries one of these). */
export type TensorType =
  'bool' | 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'int8' | 'int16' | 'int32' | 'int64' | 'float16' | 'float32' | 'float64' | 'string';

/** Flat row-major element storage; bool travels as Uint8Array and float16 as raw bits, as onnxruntime does. */
export type TensorData =
  Uint8Array | Uint16Array | Uint32Array | BigUint64Array | Int8Array | Int16Array | Int32Array | BigInt64Array | Float32Array | Float64Array | string[];

export interface RuntimeTensor {
  type: TensorType;
  dims: readonly number[];
  data: TensorData;
}

/** A provider by name, or with its options from the firmware profile. */
export type ProviderChoice = string | ExecutionProvider;

export interface RuntimeLoadOptions {
  /** Execution providers in order of preference ('tensorrt', 'cuda', 'cpu', ...). */
  providers: readonly ProviderChoice[];
  intraOpThreads?: number;
  interOpThreads?: number;
}

export interface ProviderFailure {
  provider: string;
  reason: string;
}

/**
 * Why a model's shapes do (or do not) allow micro-batching. The reason is a stable code:
 * - scalar_tensor: a tensor has no dimensions (rank 0, or its rank is not declared);
 * - fixed_leading_dimension: a tensor's dimension 0 is a fixed size (often an exported batch of 1);
 * - not_a_tensor: an input or output is a sequence or map.
 */
export type BatchingOffReason = 'scalar_tensor' | 'fixed_leading_dimension' | 'not_a_tensor';

export type Batchability = { batchable: true } | { batchable: false; reason: BatchingOffReason; tensor: string; detail: string };

/** One loaded model; the engine owns its lifetime. */
export interface RuntimeSession {
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
  /** The provider that actually loaded, which may be a fallback from the preferred one. */
  readonly provider: string;
  /** The model's metadata_props. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Preferred providers that could not load the model, and why; empty when the first one did. */
  readonly fallbacks?: readonly ProviderFailure[];
  /**
   * Whether requests can be concatenated along dimension 0 and the outputs split back: every
   * input and output has a dynamic first dimension. Absent: not batchable.
   */
  readonly batchability?: Batchability;
  /** Per input, the symbolic name of each dimension ('' for a fixed or unnamed one): inputs that share a name must agree on its size. */
  readonly inputDimNames?: Readonly<Record<string, readonly string[]>>;
  run(feeds: Readonly<Record<string, RuntimeTensor>>): Promise<Record<string, RuntimeTensor>>;
  release(): Promise<void>;
}

/** What the engine needs from an inference library; onnxruntime-runtime.ts is the real one. */
export interface ModelRuntime {
  load(path: string, options: RuntimeLoadOptions): Promise<RuntimeSession>;
}
