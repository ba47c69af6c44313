import { DriftlineError } from '../../common/errors.js';
import { compareGolden } from '../../common/trust/golden.js';
import type { GoldenTensor, ReleaseManifest } from '../../common/trust/manifest.js';
import type { ModelRuntime, RuntimeTensor, TensorData, TensorType } from '../inference/model-runtime.js';

/**
 * Runs a release's golden vectors on a session of its own (beside the running model, which
 * it never touches) and compares the outputs within the manifest's tolerance.
 */
export async function runGoldenSelfTest(runtime: ModelRuntime, providers: readonly string[], path: string, golden: ReleaseManifest['golden']): Promise<void> {
  if (golden.vectors.length === 0) return;
  const session = await runtime.load(path, { providers, intraOpThreads: 1 });
  try {
    for (const [i, vector] of golden.vectors.entries()) {
      const feeds = Object.fromEntries(Object.entries(vector.inputs).map(([name, t]) => [name, toRuntimeTensor(t)]));
      let outputs: Record<string, RuntimeTensor>;
      try {
        outputs = await session.run(feeds);
      } catch (err) {
        throw new DriftlineError('RELEASE_SELF_TEST_FAILED', `golden vector ${i} did not run: ${err instanceof Error ? err.message : String(err)}`, {
          cause: err,
        });
      }
      compareGolden(vector.outputs, outputs, golden.tolerance, i);
    }
  } finally {
    await session.release();
  }
}

export function toRuntimeTensor(t: GoldenTensor): RuntimeTensor {
  const nums = (): number[] => t.data.map((v) => Number(v));
  const data: TensorData = (() => {
    switch (t.type) {
      case 'float32':
        return Float32Array.from(nums());
      case 'float64':
        return Float64Array.from(nums());
      case 'int32':
        return Int32Array.from(nums());
      case 'int64':
        return BigInt64Array.from(nums().map((v) => BigInt(Math.trunc(v))));
      case 'uint8':
      case 'bool':
        return Uint8Array.from(nums());
      case 'int8':
        return Int8Array.from(nums());
      case 'string':
        return t.data.map(String);
      default:
        throw new DriftlineError('RELEASE_INVALID', `golden vectors of type ${t.type} are not supported`);
    }
  })();
  return { type: t.type as TensorType, dims: t.dims, data };
}
