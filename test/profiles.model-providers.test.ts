import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InferenceEngine } from '../agent/inference/engine.js';
import { createOnnxRuntime } from '../agent/inference/onnxruntime-runtime.js';
import { inferenceSettings, providersForModel } from '../agent/profiles/inference-settings.js';
import { loadFirmwareProfiles, parseFirmwareProfile, type FirmwareProfile } from '../common/firmware-profile.js';
import { capturingLogger } from './fixtures/logs.js';
import { demoModelBytes } from './fixtures/models.js';

let gpuBox: FirmwareProfile;
let dir: string;
beforeAll(() => {
  gpuBox = loadFirmwareProfiles().get('x86_64-nvidia-cuda12')!;
  dir = mkdtempSync(join(tmpdir(), 'driftline-model-providers-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('firmware profile - providers per model of the set (inference.modelProviders)', () => {
  it("the shipped GPU profile puts the detector on TensorRT, CUDA, CPU with the chain's options, the classifiers on the CPU, and any other model on the chain", () => {
    const settings = inferenceSettings(gpuBox);
    const names = (model: string) => providersForModel(settings, model).map((p) => p.name);
    expect(names('detector')).toEqual(['tensorrt', 'cuda', 'cpu']);
    expect(names('detector-v8n')).toEqual(['tensorrt', 'cuda', 'cpu']);
    expect(providersForModel(settings, 'detector')[0]).toMatchObject({ name: 'tensorrt', deviceId: 0, fp16: true });
    expect(names('classifier-plates')).toEqual(['cpu']);
    // 'classifier-*' does not match 'classifier' itself: the chain.
    expect(names('classifier')).toEqual(['tensorrt', 'cuda', 'cpu']);
    expect(names('recognizer')).toEqual(['tensorrt', 'cuda', 'cpu']);
  });

  it('a profile without rules runs every model on its chain', () => {
    const cpu = inferenceSettings(loadFirmwareProfiles().get('generic-x86_64-cpu')!);
    expect(cpu.modelProviders).toEqual([]);
    expect(providersForModel(cpu, 'detector').map((p) => p.name)).toEqual(['cpu']);
  });

  it('a rule with an invalid model glob, no provider or a repeated one refuses the profile with PROFILE_INVALID naming the field', () => {
    const withRules = (modelProviders: unknown) => () => parseFirmwareProfile({ ...gpuBox, inference: { ...gpuBox.inference, modelProviders } }, 'test.yaml');
    for (const [rules, field] of [
      [[{ model: 'Detector/..', providers: ['cpu'] }], 'inference.modelProviders.0.model'],
      [[{ model: 'detector', providers: [] }], 'inference.modelProviders.0.providers'],
      [[{ model: 'detector', providers: ['cpu', 'cpu'] }], 'inference.modelProviders.0.providers'],
      [[{ model: 'detector', providers: ['tpu'] }], 'inference.modelProviders.0.providers.0'],
    ] as const) {
      let thrown: unknown;
      try {
        withRules(rules)();
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toMatchObject({ code: 'PROFILE_INVALID' });
      expect((thrown as { details: { problems: string[] } }).details.problems.join('\n')).toContain(field);
    }
  });

  it('on this CPU-only host the detector falls back along its rule and says why, while the classifier runs on the CPU it was given, with no fallback', async () => {
    const { logger } = capturingLogger();
    const settings = inferenceSettings(gpuBox);
    const engine = InferenceEngine.create({ runtime: createOnnxRuntime({ logger }), providers: settings.providers, logger, intraOpThreads: 1 });
    const file = join(dir, 'model.onnx');
    writeFileSync(file, demoModelBytes(1));
    try {
      const detector = await engine.load({
        name: 'detector',
        version: 1,
        path: file,
        sha256: 'a'.repeat(64),
        providers: providersForModel(settings, 'detector'),
      });
      const classifier = await engine.load({
        name: 'classifier-plates',
        version: 1,
        path: file,
        sha256: 'a'.repeat(64),
        providers: providersForModel(settings, 'classifier-plates'),
      });
      expect(detector.provider).toBe('cpu');
      expect(detector.fallbacks.map((f) => f.provider)).toEqual(['tensorrt', 'cuda']);
      for (const f of detector.fallbacks) expect(f.reason).not.toBe('');
      expect(classifier).toMatchObject({ provider: 'cpu', fallbacks: [] });
    } finally {
      await engine.shutdown({ graceMs: 0 });
    }
  }, 60_000);
});
