import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine, type InferInput } from '../agent/inference/engine.js';
import type { ModelRuntime, RuntimeSession } from '../agent/inference/model-runtime.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { silentLogger } from '../common/logger.js';
import { demoModelBytes, modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

const logger = silentLogger();
let folder: ModelFolder;
let v1: ModelFile;
let v2: ModelFile;
let v3: ModelFile;

beforeAll(async () => {
  folder = await modelFolder();
  v1 = await folder.write('v1.onnx', demoModelBytes(1));
  v2 = await folder.write('v2.onnx', demoModelBytes(2));
  v3 = await folder.write('v3.onnx', demoModelBytes(3));
});
afterAll(() => folder.remove());

interface Release {
  path: string;
  runsUnsettled: number;
}

/** The real runtime, noting for each released session how many of its runs had not finished. */
function watchedRuntime(): { runtime: ModelRuntime; releases: Release[] } {
  const real = createOnnxRuntime({ logger });
  const releases: Release[] = [];
  const runtime: ModelRuntime = {
    async load(path, options) {
      const session = await real.load(path, options);
      let unsettled = 0;
      const watched: RuntimeSession = {
        inputs: session.inputs,
        outputs: session.outputs,
        provider: session.provider,
        metadata: session.metadata,
        run(feeds) {
          unsettled++;
          return session.run(feeds).finally(() => unsettled--);
        },
        release() {
          releases.push({ path, runsUnsettled: unsettled });
          return session.release();
        },
      };
      return watched;
    },
  };
  return { runtime, releases };
}

const request = (seed: number): InferInput[] => [
  { name: 'features', datatype: 'FP32', shape: [2, 8], data: Array.from({ length: 16 }, (_, i) => Math.cos(seed * 16 + i)) },
];

describe('inference engine hot swap', () => {
  it('hot swap - replaces v1 with v2 under concurrent load without failing a request, and later requests run on v2', async () => {
    const { runtime, releases } = watchedRuntime();
    const engine = InferenceEngine.create({ runtime, providers: ['cpu'], logger });
    await engine.load({ name: 'vibration', version: 1, ...v1 });

    const LOOPS = 4;
    const AFTER_SWAP = 25;
    let swapped = false;
    const served: Array<{ version: number; sentAfterSwap: boolean }> = [];
    const failures: unknown[] = [];
    let warmedUp!: () => void;
    const enoughV1Traffic = new Promise<void>((resolve) => (warmedUp = resolve));

    const loop = async (id: number) => {
      for (let n = 0, afterSwap = 0; afterSwap < AFTER_SWAP; n++) {
        const sentAfterSwap = swapped;
        try {
          const result = await engine.infer('vibration', request(id * 1000 + n));
          served.push({ version: result.version, sentAfterSwap });
        } catch (err) {
          failures.push(err);
        }
        if (sentAfterSwap) afterSwap++;
        if (served.length >= 40) warmedUp();
      }
    };
    const loops = Array.from({ length: LOOPS }, (_, id) => loop(id));

    await enoughV1Traffic;
    const info = await engine.load({ name: 'vibration', version: 2, ...v2 });
    swapped = true;
    await Promise.all(loops);

    expect(info.version).toBe(2);
    expect(failures).toEqual([]);
    expect(served.filter((s) => !s.sentAfterSwap).some((s) => s.version === 1)).toBe(true);
    expect(served.filter((s) => s.sentAfterSwap).map((s) => s.version)).toEqual(new Array(LOOPS * AFTER_SWAP).fill(2));
    expect(releases).toEqual([{ path: v1.path, runsUnsettled: 0 }]);
    await engine.shutdown();
    expect(releases).toEqual([
      { path: v1.path, runsUnsettled: 0 },
      { path: v2.path, runsUnsettled: 0 },
    ]);
  });

  it('hot swap - answers every request sent before the swap from v1, then releases v1', async () => {
    const { runtime, releases } = watchedRuntime();
    const engine = InferenceEngine.create({ runtime, providers: ['cpu'], logger });
    await engine.load({ name: 'vibration', version: 1, ...v1 });

    const burst = Array.from({ length: 50 }, (_, i) => engine.infer('vibration', request(i)));
    const swap = engine.load({ name: 'vibration', version: 2, ...v2 });
    const results = await Promise.all(burst);
    await swap;

    expect(results.map((r) => r.version)).toEqual(new Array(50).fill(1));
    expect((await engine.infer('vibration', request(99))).version).toBe(2);
    expect(releases).toEqual([{ path: v1.path, runsUnsettled: 0 }]);
    await engine.shutdown();
  });

  it('hot swap - applies loads in the order they were asked for', async () => {
    const engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: ['cpu'], logger });
    await engine.load({ name: 'vibration', version: 1, ...v1 });
    const [second, third] = await Promise.all([engine.load({ name: 'vibration', version: 2, ...v2 }), engine.load({ name: 'vibration', version: 3, ...v3 })]);
    expect([second.version, third.version]).toEqual([2, 3]);
    expect(engine.active()).toMatchObject({ version: 3, sha256: v3.sha256 });
    await engine.shutdown();
  });
});
