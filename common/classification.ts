/**
 * Which output of a model holds the class probabilities, and the argmax over it: decided here
 * once, for the inference engine (the top class in telemetry and the answer), the drift
 * monitor (the class and confidence sketches) and the CLI's prediction reference (what those
 * sketches are judged against), so all three read the same output.
 *
 * The rule, in order:
 *   1. the output the model or release names (metadata `driftline.probabilities_output`, the
 *      release's override, or the drift reference's `probabilities`), when the model has it;
 *   2. else the first float output of rank 2 (rows x classes) whose name says "prob";
 *   3. else the first float output of rank 2.
 * An output whose class dimension is known to be 1 (a score, a regression) is no candidate
 * for 2 and 3: its argmax says nothing.
 */

/** The metadata key naming the output that holds class probabilities. */
export const PROBABILITIES_OUTPUT_KEY = 'driftline.probabilities_output';

/** An output as far as choosing goes: its element type is float32 or float64, its shape (a negative or symbolic dim: any size). */
export interface OutputCandidate {
  name: string;
  float: boolean;
  shape: readonly (number | string)[];
}

export function probabilitiesOutput(outputs: readonly OutputCandidate[], declared?: string): string | undefined {
  if (declared !== undefined && outputs.some((o) => o.name === declared)) return declared;
  const candidates = outputs.filter((o) => o.float && o.shape.length === 2 && o.shape[1] !== 1 && o.shape[1] !== 0);
  return (candidates.find((o) => /prob/i.test(o.name)) ?? candidates[0])?.name;
}

/** Element types (ONNX names or Open Inference Protocol datatypes) that hold probabilities. */
export function isFloatType(type: string): boolean {
  return type === 'float32' || type === 'float64' || type === 'float' || type === 'double' || type === 'FP32' || type === 'FP64';
}

/** The index of the largest of `classes` values from `offset`; the first one on ties. */
export function argmax(values: ArrayLike<number>, offset: number, classes: number): number {
  let best = 0;
  for (let c = 1; c < classes; c++) if (values[offset + c]! > values[offset + best]!) best = c;
  return best;
}

/** The top class and its value for each row of a row-major [rows, classes] tensor. */
export function topClasses(values: ArrayLike<number>, rows: number, classes: number): Array<{ topClass: number; confidence: number }> {
  const out: Array<{ topClass: number; confidence: number }> = [];
  if (classes < 1) return out;
  for (let r = 0; r < rows; r++) {
    const topClass = argmax(values, r * classes, classes);
    out.push({ topClass, confidence: Number(values[r * classes + topClass]) });
  }
  return out;
}
