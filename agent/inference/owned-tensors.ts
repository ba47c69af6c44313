import type { TensorData } from './model-runtime.js';

/**
 * Buffers that belong to one run alone: nobody reads them once the run has them (the batcher's
 * concatenation of a batch's rows, a request body the local API decoded into its own buffer).
 * A runtime that moves inputs to another thread may hand such a buffer over (transfer it)
 * instead of copying it; any other buffer is copied, since its owner may still read it.
 */
const owned = new WeakSet<ArrayBufferLike>();

/** Marks data's buffer as this run's alone; returns data. */
export function markOwnedTensorData<T extends TensorData>(data: T): T {
  if (!Array.isArray(data)) owned.add((data as Exclude<TensorData, string[]>).buffer);
  return data;
}

export function isOwnedTensorData(data: TensorData): boolean {
  return !Array.isArray(data) && owned.has((data as Exclude<TensorData, string[]>).buffer);
}
