import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine } from '../agent/inference/engine.js';
import { readOnnxMetadata } from '../agent/inference/onnx-metadata.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { DriftlineError } from '../common/errors.js';
import { capturingLogger } from './fixtures/logs.js';
import { REPO_ROOT } from './helpers/processes.js';
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

  it('onnxruntime - reports on the active model each provider it fell back from, not silently', async () => {
    const { logger } = capturingLogger();
    const runtime = createOnnxRuntime({ logger });
    const engine = InferenceEngine.create({ runtime, providers: ['tensorrt', 'cuda', 'cpu'], logger });
    const info = await engine.load({ name: 'vibration', version: 1, ...demo });
    const accelerated = ['tensorrt', 'cuda'].filter((p) => !runtime.availableProviders().includes(p));
    expect(info.provider).toBe(accelerated.length === 2 ? 'cpu' : info.provider);
    expect(info.fallbacks.map((f) => f.provider)).toEqual(expect.arrayContaining(accelerated));
    for (const f of info.fallbacks) expect(f.reason).toEqual(expect.any(String));
    await engine.shutdown();
  });

  it('onnxruntime - counts a provider as available only when its library is installed', () => {
    const { logger } = capturingLogger();
    const available = createOnnxRuntime({ logger }).availableProviders();
    const bindingDir = dirname(
      createRequire(import.meta.url).resolve(`onnxruntime-node/bin/napi-v6/${process.platform}/${process.arch}/onnxruntime_binding.node`),
    );
    expect(available).toContain('cpu');
    expect(available.includes('cuda')).toBe(existsSync(join(bindingDir, 'libonnxruntime_providers_cuda.so')));
  });
});

describe('onnxruntime library path', () => {
  const probe = (libraryDir: string, model: string) =>
    JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'test/fixtures/onnxruntime-library-probe.ts'), libraryDir, model], {
        cwd: REPO_ROOT,
        encoding: 'utf8',
      }).trim(),
    ) as Record<string, unknown>;

  it.runIf(process.platform === 'linux')('library path - runs models on the onnxruntime library from the configured folder instead of the bundled one', () => {
    const bundled = join(
      dirname(createRequire(import.meta.url).resolve(`onnxruntime-node/bin/napi-v6/linux/${process.arch}/onnxruntime_binding.node`)),
      'libonnxruntime.so.1',
    );
    const libraryDir = join(folder.dir, 'device-onnxruntime');
    mkdirSync(libraryDir);
    // A copy stands in for a JetPack build: what matters is which file the process loads.
    copyFileSync(bundled, join(libraryDir, 'libonnxruntime.so.1'));
    const result = probe(libraryDir, demo.path);
    expect(result).toEqual({ preloaded: join(libraryDir, 'libonnxruntime.so.1'), loaded: [join(libraryDir, 'libonnxruntime.so.1')], labelDims: [2] });
  });

  it.runIf(process.platform === 'linux')('library path - refuses a folder without an onnxruntime library with PROVIDER_UNAVAILABLE', () => {
    expect(probe(join(folder.dir, 'nowhere'), demo.path)).toMatchObject({ code: 'PROVIDER_UNAVAILABLE' });
  });
});
