import { z } from 'zod';
import { DriftlineError } from '../errors.js';

/**
 * Example inputs: what a model is known to accept, for its warm-up, its golden vectors and
 * `selftest --model`. Each example names every input with its element type (ONNX names:
 * float32, int64), dims, and optionally its row-major values (zeros when absent), so a
 * sequence model that cannot run on a length of 1 says which lengths it can.
 */
export const MAX_EXAMPLE_ELEMENTS = 1 << 24;
const MAX_EXAMPLE_VALUES = 1 << 20;

export const exampleTensorSchema = z
  .object({
    type: z.string().max(32),
    dims: z.array(z.number().int().nonnegative()).max(16),
    data: z
      .array(z.union([z.number(), z.string(), z.boolean()]))
      .max(MAX_EXAMPLE_VALUES)
      .optional(),
  })
  .refine((t) => elementCount(t.dims) <= MAX_EXAMPLE_ELEMENTS, { message: `an example tensor has at most ${MAX_EXAMPLE_ELEMENTS} elements` })
  .refine((t) => t.data === undefined || t.data.length === elementCount(t.dims), { message: 'data needs exactly as many values as the dims hold' });
export type ExampleTensor = z.infer<typeof exampleTensorSchema>;

/** One example: a tensor per input name. */
export const exampleInputSchema = z.record(z.string().max(256), exampleTensorSchema);
export type ExampleInput = z.infer<typeof exampleInputSchema>;

export const exampleInputsSchema = z.array(exampleInputSchema).min(1).max(16);
export type ExampleInputs = z.infer<typeof exampleInputsSchema>;

/** The file `models push --examples` and `selftest --examples` read: a list of examples, or { "examples": [...] }. */
export function parseExampleInputsFile(text: string, source: string): ExampleInputs {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new DriftlineError('REQUEST_INVALID', `${source} is not JSON: ${(err as Error).message}`, { cause: err });
  }
  const list = json !== null && typeof json === 'object' && !Array.isArray(json) && 'examples' in json ? (json as { examples: unknown }).examples : json;
  const parsed = exampleInputsSchema.safeParse(list);
  if (!parsed.success)
    throw new DriftlineError('REQUEST_INVALID', `${source} does not hold example inputs: ${z.prettifyError(parsed.error)}`, {
      details: { issues: parsed.error.issues },
    });
  return parsed.data;
}

export function elementCount(dims: readonly number[]): number {
  return dims.reduce((n, d) => n * d, 1);
}

/** A model input as a signature declares it: -1 marks a dynamic dimension. */
export interface DeclaredInput {
  name: string;
  type: string;
  shape: readonly number[];
}

/**
 * Sizes tried for dynamic dimensions when a model has no example inputs: 1 first, then
 * sizes typical of sequence lengths and image sides. A leading dynamic dimension of a
 * tensor of rank 2 or more is its batch and stays 1.
 */
export const DYNAMIC_DIM_CANDIDATES: readonly number[] = [1, 16, 64, 128];

export function candidateExamples(inputs: readonly DeclaredInput[]): ExampleInput[] {
  const hasDynamic = inputs.some((i) => i.shape.some((d) => d < 0));
  const sizes = hasDynamic ? DYNAMIC_DIM_CANDIDATES : DYNAMIC_DIM_CANDIDATES.slice(0, 1);
  return sizes.map((size) =>
    Object.fromEntries(
      inputs.map((input) => [input.name, { type: input.type, dims: input.shape.map((d, i) => (d >= 0 ? d : i === 0 && input.shape.length >= 2 ? 1 : size)) }]),
    ),
  );
}

/** "tokens float32 [1, 16], step int64 []" */
export function describeExample(example: ExampleInput): string {
  return Object.entries(example)
    .map(([name, t]) => `${name} ${t.type} [${t.dims.join(', ')}]`)
    .join(', ');
}
