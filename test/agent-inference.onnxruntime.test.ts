import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readOnnxMetadata } from '../agent/inference/onnx-metadata.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { DriftlineError } from '../common/errors.js';
import { capturingLogger } from './fixtures/logs.js';
import { demoModelBytes, echoModelBytes, modelFolder, type ModelFile, type ModelFolder } from './fixtures/models.js';

let folder: ModelFolder;
let demo: ModelFile;

beforeAll(async () => {
  folder = await modelFolder();
  demo = await folder.write('demo.onnx', demoModelBytes(1));
});
afterAll(() => folder.remove());

describe('onnxruntime runtime', () => {
  it('onnxruntime - falls back along the provider chain to CPU, warning with the reason for each provider that failed', async () => {
    const { logger, lines } = capturingLogger();
    const session = await createOnnxRuntime({ logger }).load(demo.path, { providers: ['tensorrt', 'cuda', 'cpu'], intraOpThreads: 1 });
    expect(session.provider).toBe('cpu');
    const warnings = lines.filter((l) => l.level === 40);
    expect(warnings.map((w) => w.provider)).toEqual(['tensorrt', 'cuda']);
    for (const w of warnings) expect(w.reason).toEqual(expect.any(String));
    await session.release();
  });

  it('onnxruntime - answers PROVIDER_UNAVAILABLE with every failure when no provider in the chain loads', async () => {
    const { logger } = capturingLogger();
    const err = await createOnnxRuntime({ logger })
      .load(demo.path, { providers: ['cuda', 'no-such-provider'] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DriftlineError);
    expect((err as DriftlineError).code).toBe('PROVIDER_UNAVAILABLE');
    expect((err as DriftlineError).details?.failures).toEqual([
      { provider: 'cuda', reason: expect.any(String) },
      { provider: 'no-such-provider', reason: expect.any(String) },
    ]);
  });

  it('onnxruntime - blames the model, with MODEL_INVALID, when even CPU cannot load it', async () => {
    const { logger } = capturingLogger();
    const truncated = await folder.write('truncated.onnx', demoModelBytes(1).subarray(0, 200));
    const err = await createOnnxRuntime({ logger })
      .load(truncated.path, { providers: ['cpu'] })
      .catch((e: unknown) => e);
    expect((err as DriftlineError).code).toBe('MODEL_INVALID');
  });

  it('onnxruntime - reports the signature with dynamic dimensions as -1 and the model metadata', async () => {
    const { logger } = capturingLogger();
    const session = await createOnnxRuntime({ logger }).load(demo.path, { providers: ['cpu'] });
    expect(session.inputs).toEqual([{ name: 'features', type: 'float32', shape: [-1, 8] }]);
    expect(session.outputs.map((o) => o.name)).toEqual(['probabilities', 'label']);
    expect(session.metadata['driftline.probabilities_output']).toBe('probabilities');
    await session.release();
  });

  it('onnx metadata - reads metadata_props without parsing the graph, and an empty map when there are none', async () => {
    expect(await readOnnxMetadata(demo.path)).toMatchObject({ 'driftline.probabilities_output': 'probabilities', 'driftline.task': 'classification' });
    const echo = await folder.write('echo.onnx', echoModelBytes());
    expect(await readOnnxMetadata(echo.path)).toEqual({});
  });
});
