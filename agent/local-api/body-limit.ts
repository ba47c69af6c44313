import type { TensorSpec } from '../inference/model-runtime.js';

/** The configuration setting that overrides the limits below; the 413 names it. */
export const BODY_LIMIT_SETTING = 'localApi.maxBodyBytes';

/** The largest request body the local API reads, by encoding. */
export interface BodyLimits {
  /** Tensor data as JSON numbers. */
  json: number;
  /** The binary tensor extension: a JSON header, then raw bytes. */
  binary: number;
}

/** The longest JSON number (shortest round-trip form of a double: `-1.2345678901234567e-308`) and its comma. */
export const JSON_BYTES_PER_ELEMENT = 25;
/** Room for everything in a request besides the tensor data: id, names, shapes, parameters, a BYTES length prefix. */
export const ENVELOPE_BYTES = 64 * 1024;
/** No default is smaller: a small model's bodies and feedback batches fit as they always did. */
export const MIN_BODY_BYTES = 1024 * 1024;
/** One request's body may hold at most this share of the memory the profile gives inference. */
export const MEMORY_BUDGET_SHARE = 0.25;

const ELEMENT_BYTES: Readonly<Record<string, number>> = {
  bool: 1,
  uint8: 1,
  int8: 1,
  uint16: 2,
  int16: 2,
  float16: 2,
  uint32: 4,
  int32: 4,
  float32: 4,
  uint64: 8,
  int64: 8,
  float64: 8,
};

/**
 * Body limits for a model, from its inputs: with every dimension fixed, exactly what its
 * largest request takes (each input's elements at their size in bytes, or as JSON numbers,
 * plus the envelope); with a dynamic dimension (or strings) no shape bounds the size, so the
 * profile's memory budget does (MEMORY_BUDGET_SHARE of it). Never below MIN_BODY_BYTES,
 * never above the budget's share. Without a budget (a caller that knows none), a dynamic
 * input is allowed MIN_BODY_BYTES.
 */
export function defaultBodyLimits(inputs: readonly TensorSpec[], memoryBudgetBytes: number | undefined): BodyLimits {
  const cap = memoryBudgetBytes === undefined ? Infinity : Math.max(MIN_BODY_BYTES, Math.floor(memoryBudgetBytes * MEMORY_BUDGET_SHARE));
  let elements = 0;
  let bytes = 0;
  let bounded = true;
  for (const input of inputs) {
    const size = ELEMENT_BYTES[input.type];
    if (size === undefined || input.shape.some((d) => d < 0)) {
      bounded = false;
      continue;
    }
    const n = input.shape.reduce((a, d) => a * d, 1);
    elements += n;
    bytes += n * size;
  }
  if (!bounded) {
    const limit = cap === Infinity ? MIN_BODY_BYTES : cap;
    return { json: limit, binary: limit };
  }
  const clamp = (n: number): number => Math.min(cap, Math.max(MIN_BODY_BYTES, n + ENVELOPE_BYTES));
  return { json: clamp(elements * JSON_BYTES_PER_ELEMENT), binary: clamp(bytes) };
}
