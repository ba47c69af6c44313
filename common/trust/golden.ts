import { DriftlineError } from '../errors.js';
import type { GoldenTensor } from './manifest.js';

/** The tensor shape both onnxruntime adapters use: element type, dims, flat data. */
export interface TensorLike {
  type: string;
  dims: readonly number[];
  data: ArrayLike<number | bigint | string | boolean> | Iterable<number | bigint | string | boolean>;
}

export function toGoldenTensor(tensor: TensorLike): GoldenTensor {
  const data = Array.from(tensor.data as Iterable<number | bigint | string | boolean>, (v) => (typeof v === 'bigint' ? Number(v) : v));
  return { type: tensor.type, dims: [...tensor.dims], data };
}

/**
 * Compares a model's outputs with the golden ones: same names, dims and types; numbers
 * within abs + rel * |expected|; everything else exactly. Throws RELEASE_SELF_TEST_FAILED.
 */
export function compareGolden(
  expected: Readonly<Record<string, GoldenTensor>>,
  actual: Readonly<Record<string, TensorLike>>,
  tolerance: { abs: number; rel: number },
  vector: number,
): void {
  for (const [name, want] of Object.entries(expected)) {
    const got = Object.hasOwn(actual, name) ? actual[name] : undefined;
    const fail = (why: string): never => {
      throw new DriftlineError('RELEASE_SELF_TEST_FAILED', `golden vector ${vector}, output ${name}: ${why}`, { details: { vector, output: name } });
    };
    if (!got) return fail('missing');
    const gotData = toGoldenTensor(got).data;
    if (got.dims.join(',') !== want.dims.join(',')) fail(`dims [${got.dims.join(',')}] differ from [${want.dims.join(',')}]`);
    if (gotData.length !== want.data.length) fail(`${gotData.length} values instead of ${want.data.length}`);
    for (let i = 0; i < want.data.length; i++) {
      const w = want.data[i];
      const g = gotData[i];
      if (typeof w === 'number' && typeof g === 'number') {
        if (!(Math.abs(g - w) <= tolerance.abs + tolerance.rel * Math.abs(w))) fail(`value ${i} is ${g}, expected ${w}`);
      } else if (g !== w) {
        fail(`value ${i} is ${String(g)}, expected ${String(w)}`);
      }
    }
  }
}
